"""A real MCP server: the systems of record the example workflows reach through tools.

Tests and the demo run it where a CRM, a ticketing system and a payment service would be — over
streamable HTTP on loopback (:class:`ToolServerThread`) or over stdio (``python -m
processors.dev.tool_server``) — so grounding and tool actions are exercised end to end through
the official SDK, never a mock. Its tools:

* ``customer_plan``, ``recent_tickets``: read-only lookups (grounding);
* ``issue_refund``: money moves; the idempotency key comes as an argument, and a repeated key gets
  the first refund back instead of a second one;
* ``notify_channel``: the idempotency key comes in the request's ``_meta`` (as handoff sends it).

Every applied effect is recorded by key (``applied``), every call counted (``calls``), and calls
can be made to fail (``fail_next``), so retry paths run against the real protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections import Counter
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

from processors.actions.mcp import IDEMPOTENCY_META
from processors.dev.loopback import McpServerThread

PLANS = {"C-1001": "enterprise", "C-1002": "pro"}
"""Customer plans the lookups know; any other customer is on ``free``."""


class RecordsService:
    """The state behind the tools, shared by every connection (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.applied: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.duplicates = 0
        self.delay_s = 0.0
        """How long each effect takes (``issue_refund``): long enough for a test to kill a stage mid-stream."""
        self._failures: list[str] = []

    def fail_next(self, *tools: str) -> None:
        """The next call of each named tool answers with a tool error instead."""
        with self._lock:
            self._failures.extend(tools)

    def _called(self, tool: str) -> None:
        with self._lock:
            self.calls[tool] += 1
            if tool in self._failures:
                self._failures.remove(tool)
                raise RuntimeError(f"{tool}: scripted failure")

    def apply(self, tool: str, key: str, effect: dict[str, Any]) -> dict[str, Any]:
        """Apply ``effect`` once per idempotency key; a repeat answers the first effect."""
        self._called(tool)
        with self._lock:
            if key in self.applied:
                self.duplicates += 1
                return self.applied[key]
            self.applied[key] = effect | {"sequence": len(self.applied) + 1}
            return self.applied[key]

    def build(self) -> MCPServer:
        server = MCPServer("handoff-records", instructions="Customer records, tickets and payments (development).")

        @server.tool()
        def customer_plan(customer_id: str) -> dict[str, Any]:
            """The customer's plan and since when."""
            self._called("customer_plan")
            return {"customer_id": customer_id, "plan": PLANS.get(customer_id, "free"), "since": "2024-03-01"}

        @server.tool()
        def recent_tickets(customer_id: str, limit: int = 3) -> dict[str, Any]:
            """The customer's latest tickets, newest first."""
            self._called("recent_tickets")
            tickets = [{"id": f"{customer_id}-T{n}", "subject": f"earlier issue {n}", "status": "closed"}
                       for n in range(1, 6)]
            return {"customer_id": customer_id, "tickets": tickets[:limit]}

        @server.tool()
        async def issue_refund(order_id: str, amount: float, currency: str, idempotency_key: str) -> dict[str, Any]:
            """Refund ``amount`` of an order, once per idempotency key."""
            await asyncio.sleep(self.delay_s)
            return self.apply("issue_refund", idempotency_key, {"refund_id": f"rf-{idempotency_key}",
                                                                "order_id": order_id, "amount": amount,
                                                                "currency": currency})

        @server.tool()
        def notify_channel(channel: str, text: str, ctx: Context) -> dict[str, Any]:
            """Post to a team channel, once per idempotency key (sent in the request's _meta)."""
            meta = ctx.request_context.meta or {}
            key = meta.get(IDEMPOTENCY_META) if isinstance(meta, dict) else getattr(meta, IDEMPOTENCY_META, None)
            if not key:
                raise ValueError(f"notify_channel needs {IDEMPOTENCY_META} in _meta")
            return self.apply("notify_channel", key, {"channel": channel, "text": text})

        return server


class ToolServerThread(McpServerThread):
    """The records server over streamable HTTP on 127.0.0.1, in a background thread; ``url`` ends in /mcp."""

    def __init__(self, port: int = 0) -> None:
        self.service = RecordsService()
        super().__init__(self.service.build().streamable_http_app(), "mcp-tool-server", port)


def main(argv: list[str] | None = None) -> None:
    """Serve the records tools over stdio (what a ``command:`` tool server starts) or HTTP."""
    parser = argparse.ArgumentParser(prog="python -m processors.dev.tool_server", description=main.__doc__)
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT instead")
    args = parser.parse_args(argv)
    if args.http is None:
        RecordsService().build().run("stdio")
        return
    server = ToolServerThread(args.http)
    print(f"MCP tool server listening on {server.start()}", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
