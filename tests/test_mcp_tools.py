"""MCP tools against real servers: the records server over streamable HTTP on loopback and over stdio,
through the official SDK — allow-list, inputSchema, idempotency key placement, retries per failure type."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from processors.actions.mcp import (
    IdempotencyPlacement,
    ToolCallFailed,
    ToolFailure,
    ToolGrant,
    ToolRefused,
    ToolRetries,
    Tools,
    ToolServer,
)
from processors.dev.tool_server import ToolServerThread

FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}


@pytest.fixture(scope="module")
def records():
    with ToolServerThread() as server:
        yield server


def grants(server: str = "records", **overrides) -> dict[str, ToolGrant]:
    retries = ToolRetries(**{"unavailable": 2, "tool_error": 1, **FAST})
    return {"customer_plan": ToolGrant(server=server, scope="records:read", retries=retries),
            "refund": ToolGrant(server=server, tool="issue_refund", scope="payments:refund", retries=retries,
                                idempotency=IdempotencyPlacement.argument),
            "notify_channel": ToolGrant(server=server, scope="teams:notify", retries=retries), **overrides}


def call(tools: Tools, *args, **kwargs):
    async def once():
        try:
            return await tools.call(*args, **kwargs)
        finally:
            await tools.close()
    return asyncio.run(once())


def http_tools(records, monkeypatch) -> Tools:
    monkeypatch.setenv("RECORDS_MCP_URL", records.url)
    return Tools({"records": ToolServer(url="${RECORDS_MCP_URL}", headers={"X-Token": "t"})}, grants())


def test_lookup_over_streamable_http(records, monkeypatch) -> None:
    result = call(http_tools(records, monkeypatch), "customer_plan", {"customer_id": "C-1001"})
    assert result.result == {"customer_id": "C-1001", "plan": "enterprise", "since": "2024-03-01"}
    assert (result.attempts, result.error) == (1, None) and result.latency_ms > 0


def test_lookup_over_stdio() -> None:
    tools = Tools({"records": ToolServer(command=sys.executable, args=["-m", "processors.dev.tool_server"])}, grants())
    assert call(tools, "customer_plan", {"customer_id": "C-1002"}).result["plan"] == "pro"


def test_a_tool_off_the_allow_list_is_refused_before_any_connection() -> None:
    tools = Tools({"records": ToolServer(url="http://127.0.0.1:9/mcp")}, grants())  # nothing listens there
    with pytest.raises(ToolRefused) as refused:
        call(tools, "delete_customer", {"customer_id": "C-1"})
    assert refused.value.reason == "tool_not_allowed"
    assert tools._connections == {}


def test_arguments_breaking_the_tools_input_schema_are_refused_without_a_call(records, monkeypatch) -> None:
    before = records.service.calls["issue_refund"]
    with pytest.raises(ToolRefused) as refused:
        call(http_tools(records, monkeypatch), "refund", {"order_id": "O-1", "amount": "forty", "currency": "EUR"},
             idempotency_key="k-schema")
    assert refused.value.reason == "tool_invalid_arguments" and "amount" in str(refused.value)
    assert records.service.calls["issue_refund"] == before


def test_idempotency_key_as_argument_applies_once(records, monkeypatch) -> None:
    tools = http_tools(records, monkeypatch)
    arguments = {"order_id": "O-7", "amount": 40.0, "currency": "EUR"}
    first = call(tools, "refund", arguments, idempotency_key="evt-7:refund")
    again = call(tools, "refund", arguments, idempotency_key="evt-7:refund")
    assert first.result == again.result and first.result["refund_id"] == "rf-evt-7:refund"
    assert records.service.applied["evt-7:refund"]["amount"] == 40.0


def test_idempotency_key_in_meta(records, monkeypatch) -> None:
    result = call(http_tools(records, monkeypatch), "notify_channel", {"channel": "billing", "text": "hi"},
                  idempotency_key="evt-8:notify")
    assert result.result["channel"] == "billing"
    assert records.service.applied["evt-8:notify"]["text"] == "hi"


def test_a_tool_error_is_retried_as_its_type_allows(records, monkeypatch) -> None:
    records.service.fail_next("customer_plan")
    result = call(http_tools(records, monkeypatch), "customer_plan", {"customer_id": "C-9"})
    assert (result.attempts, result.result["plan"]) == (2, "free")
    records.service.fail_next("customer_plan", "customer_plan")
    with pytest.raises(ToolCallFailed) as failed:
        call(http_tools(records, monkeypatch), "customer_plan", {"customer_id": "C-9"})
    assert (failed.value.kind, failed.value.reason, failed.value.call.attempts) == (
        ToolFailure.tool_error, "tool_tool_error_exhausted", 2)


def test_a_server_that_is_down_is_retried_then_fails_unavailable() -> None:
    with socket.socket() as bound:  # bound but not listening: refused, and the port stays ours
        bound.bind(("127.0.0.1", 0))
        tools = Tools({"records": ToolServer(url=f"http://127.0.0.1:{bound.getsockname()[1]}/mcp")}, grants())
        with pytest.raises(ToolCallFailed) as failed:
            call(tools, "customer_plan", {"customer_id": "C-1"})
    assert (failed.value.reason, failed.value.call.attempts) == ("tool_unavailable_exhausted", 3)
    assert "not reachable" in failed.value.call.error


def test_an_allowed_tool_the_server_does_not_offer_is_refused_without_a_call(records, monkeypatch):
    monkeypatch.setenv("RECORDS_MCP_URL", records.url)
    tools = Tools({"records": ToolServer(url="${RECORDS_MCP_URL}")},
                  grants(close_account=ToolGrant(server="records", scope="accounts:close")))
    with pytest.raises(ToolRefused) as refused:
        call(tools, "close_account", {"customer_id": "C-1"})
    assert refused.value.reason == "tool_not_offered" and "customer_plan" in str(refused.value)
