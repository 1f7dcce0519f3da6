"""The sample system of record: a CRM and a payment ledger behind a real MCP server, over SQLite.

The demo and the tests start it on loopback where a company's CRM and payment service would be
(``SystemOfRecordThread``, or ``python -m processors.dev.system_of_record --port 0``): the lead and
refund workflows ground and act through it with the official SDK, never a mock. It is a sample —
seeded from :mod:`processors.dev.sample_records`, one SQLite file (a temporary one by default) — not
a product. Its tools (names and arguments are the workflows' contract):

Lookups (read-only; an unknown id answers ``found: false``, not an error):

* ``lookup_contact(contact_id=None, email=None)`` → ``{found, contact_id, name, email, company, territory,
  phone, created_at}``;
* ``find_leads(contact_id=None, email=None, limit=10)`` → ``{contact_id, leads: [{lead_id, created_at, source,
  status, service, territory, owner_id, …}]}``, newest first (a duplicate lead is a recent one here);
* ``lookup_owner(owner_id)`` → ``{found, owner_id, name, email, active, territories, services}``;
* ``find_owners(territory, service=None)`` → ``{owners: [...]}``: the active owners covering the territory
  (and the service, when given: lead intake grounds a territory's owners before the service is known);
* ``lookup_order(order_id)`` → ``{found, order_id, contact_id, total, currency, kind, placed_at, description,
  refunded, left}`` (``refunded``: the sum of its refunds, ``left``: total minus that);
* ``lookup_payment(order_id)`` → ``{found, payment_id, order_id, method, amount, currency, status, captured_at}``;
* ``lookup_policy()`` → ``{version, clauses: [{id, title, reasons, kinds, max_age_days, limit_share,
  limit_amount, text}]}`` (:class:`processors.refunds.Policy`);
* ``refunds_for(order_id)`` → ``{order_id, refunds: [{refund_id, amount, currency, reason, idempotency_key,
  created_at}]}``: the payment ledger, what tests read.

Effects, each once per idempotency key — the ``idempotency_key`` argument, or handoff's ``_meta`` entry
(``handoff/idempotency_key``); a call without one is refused. The key and the first result are stored
in the same SQLite transaction as the effect, so a second call with the key answers the first result
and changes nothing, across restarts of the server:

* ``update_lead(lead_id, contact_id=None, status=None, intent=None, service=None, territory=None,
  urgency=None, summary=None, next_action=None)`` → the lead (created when new: then ``contact_id`` is needed);
* ``assign_owner(lead_id, owner_id)`` → ``{lead_id, owner_id}``; refused for an unknown or inactive owner;
* ``create_task(owner_id, title, lead_id=None, due_at=None)`` → ``{task_id, …}``;
* ``issue_refund(order_id, amount, currency, reason=None)`` → ``{refund_id, order_id, amount, currency,
  refunded, left}``; refused when the order is unknown, the currency is not the order's, or the amount
  is not positive or more than is left;
* ``add_crm_note(contact_id, text, about=None, details=None)`` → ``{note_id, …}`` (``details``: an object).

A refusal is a tool error (``isError``: handoff's ``tool_error``). **Fail mode**, for tests
(:class:`Failure`, ``--fail TOOL=KIND[:N]``, ``*`` for every tool, N calls or every call): ``timeout``
(the tool acts, then holds its answer ``hang_s``: the ambiguous case, the effect happened but the
caller gave up), ``http_500`` (the HTTP request is answered 500 before MCP sees it) or ``refuse`` (a
tool error, nothing done). ``calls`` counts calls per tool.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import threading
from collections import Counter
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from processors.actions.mcp import IDEMPOTENCY_META
from processors.clock import now_ms
from processors.dev.loopback import McpServerThread
from processors.dev.sample_records import Sample, iso, sample
from processors.refunds import cents

SCHEMA = """
CREATE TABLE contacts (contact_id TEXT PRIMARY KEY, name TEXT, email TEXT UNIQUE, company TEXT, territory TEXT,
                       phone TEXT, created_at TEXT);
CREATE TABLE owners (owner_id TEXT PRIMARY KEY, name TEXT, email TEXT, active INTEGER);
CREATE TABLE owner_territories (owner_id TEXT, territory TEXT, PRIMARY KEY (owner_id, territory));
CREATE TABLE owner_services (owner_id TEXT, service TEXT, PRIMARY KEY (owner_id, service));
CREATE TABLE leads (lead_id TEXT PRIMARY KEY, contact_id TEXT, created_at TEXT, source TEXT, status TEXT,
                    service TEXT, territory TEXT, owner_id TEXT, intent TEXT, urgency TEXT, summary TEXT,
                    next_action TEXT, updated_at TEXT);
CREATE INDEX leads_by_contact ON leads (contact_id, created_at);
CREATE TABLE tasks (task_id TEXT PRIMARY KEY, owner_id TEXT, lead_id TEXT, title TEXT, due_at TEXT, status TEXT,
                    created_at TEXT);
CREATE TABLE notes (note_id TEXT PRIMARY KEY, contact_id TEXT, about TEXT, text TEXT, details TEXT, created_at TEXT);
CREATE TABLE orders (order_id TEXT PRIMARY KEY, contact_id TEXT, total REAL, currency TEXT, kind TEXT,
                     placed_at TEXT, description TEXT);
CREATE TABLE payments (payment_id TEXT PRIMARY KEY, order_id TEXT UNIQUE, method TEXT, amount REAL, currency TEXT,
                       status TEXT, captured_at TEXT);
CREATE TABLE refunds (refund_id TEXT PRIMARY KEY, order_id TEXT, amount REAL, currency TEXT, reason TEXT,
                      idempotency_key TEXT, created_at TEXT);
CREATE INDEX refunds_by_order ON refunds (order_id);
CREATE TABLE policy (version TEXT, document TEXT);
CREATE TABLE idempotency (tool TEXT, key TEXT, result TEXT, PRIMARY KEY (tool, key));
"""


class FailKind(StrEnum):
    timeout = "timeout"
    """The tool acts, then holds its answer ``hang_s``: the caller times out though the effect happened."""
    http_500 = "http_500"
    """The HTTP request is answered 500 before the MCP server reads it."""
    refuse = "refuse"
    """The tool answers with an error and does nothing."""


class Failure(BaseModel):
    """Make calls of ``tool`` (``*``: any) fail as ``kind``, the next ``times`` of them (None: every one)."""

    tool: str
    kind: FailKind
    times: int | None = Field(None, ge=1)

    @classmethod
    def parse(cls, text: str) -> Failure:
        """``issue_refund=timeout:2``, ``*=http_500``, ``lookup_order=refuse:1``."""
        tool, _, rest = text.partition("=")
        kind, _, times = rest.partition(":")
        try:
            return cls(tool=tool, kind=FailKind(kind), times=int(times) if times else None)
        except ValueError:
            raise ValueError(f"--fail {text!r}: write TOOL=KIND[:N], KIND one of "
                             f"{', '.join(FailKind)}, e.g. issue_refund=timeout:2") from None


class Records:
    """The SQLite database behind the tools: one connection, one lock, one transaction per effect."""

    def __init__(self, path: Path, data: Sample | None = None):
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'contacts'").fetchone():
            self._seed(data or sample())

    def _seed(self, data: Sample) -> None:
        with self._lock:
            self._db.executescript(SCHEMA)
            self._db.execute("BEGIN")
            rows = {"contacts": [c.model_dump() for c in data.contacts],
                    "leads": [lead.model_dump() for lead in data.leads],
                    "orders": [o.model_dump() for o in data.orders],
                    "payments": [p.model_dump() for p in data.payments],
                    "refunds": [r.model_dump() for r in data.refunds],
                    "owners": [o.model_dump(include={"owner_id", "name", "email", "active"}) for o in data.owners],
                    "owner_territories": [{"owner_id": o.owner_id, "territory": t} for o in data.owners
                                          for t in o.territories],
                    "owner_services": [{"owner_id": o.owner_id, "service": s} for o in data.owners for s in o.services],
                    "policy": [{"version": data.policy.version, "document": data.policy.model_dump_json()}]}
            for table, values in rows.items():
                columns = list(values[0])
                self._db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                     f"({', '.join(':' + c for c in columns)})", values)
            self._db.execute("COMMIT")

    def read(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, args).fetchall()]

    def once(self, tool: str, key: str, effect) -> dict[str, Any]:
        """Run ``effect(db)`` and store its result under (tool, key) in one transaction; a known key answers
        its stored result and runs nothing. ``effect`` raises ToolError to refuse (the transaction is undone)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                known = self._db.execute("SELECT result FROM idempotency WHERE tool = ? AND key = ?",
                                         (tool, key)).fetchone()
                if known is not None:
                    self._db.execute("ROLLBACK")
                    return orjson.loads(known["result"])
                result = effect(self._db)
                self._db.execute("INSERT INTO idempotency (tool, key, result) VALUES (?, ?, ?)",
                                 (tool, key, orjson.dumps(result).decode()))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _now() -> str:
    return iso(datetime.fromtimestamp(now_ms() / 1000, UTC))


def _one(db: sqlite3.Connection, sql: str, *args: Any) -> dict[str, Any] | None:
    row = db.execute(sql, args).fetchone()
    return None if row is None else dict(row)


def _next_id(db: sqlite3.Connection, table: str, prefix: str) -> str:
    count = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return f"{prefix}{count + 1:05d}"


class SystemOfRecord:
    """The tools over :class:`Records`, with the fail mode and call counts tests read."""

    def __init__(self, path: Path | None = None, failures: list[Failure] | None = None, hang_s: float = 30.0):
        if path is None:
            self._folder = tempfile.TemporaryDirectory(prefix="handoff-sor-")
            path = Path(self._folder.name) / "records.sqlite"
        self.records = Records(path)
        self.calls: Counter[str] = Counter()
        self.hang_s = hang_s
        self.delay_s = 0.0
        """How long each effect takes before it is applied: long enough for a test to kill a stage mid-stream."""
        self._failures = list(failures or [])
        self._lock = threading.Lock()

    def fail(self, tool: str, kind: FailKind, times: int | None = 1) -> None:
        with self._lock:
            self._failures.append(Failure(tool=tool, kind=kind, times=times))

    def take_failure(self, tool: str, kinds: set[FailKind]) -> FailKind | None:
        """The failure scripted for this call of ``tool``, if any (one of its remaining calls used up)."""
        with self._lock:
            for failure in self._failures:
                if failure.kind in kinds and failure.tool in (tool, "*"):
                    if failure.times is not None:
                        failure.times -= 1
                        if failure.times == 0:
                            self._failures.remove(failure)
                    return failure.kind
        return None

    def refunds_for(self, order_id: str) -> list[dict[str, Any]]:
        return self.records.read("SELECT refund_id, amount, currency, reason, idempotency_key, created_at "
                                 "FROM refunds WHERE order_id = ? ORDER BY created_at, refund_id", order_id)

    def notes_for(self, contact_id: str) -> list[dict[str, Any]]:
        return self.records.read("SELECT * FROM notes WHERE contact_id = ? ORDER BY note_id", contact_id)

    def refunds_by_key(self) -> dict[str, dict[str, Any]]:
        """Every refund issued through the tool (not the sample's own), by idempotency key."""
        return {r["idempotency_key"]: r for r in self.records.read(
            "SELECT * FROM refunds WHERE idempotency_key NOT LIKE 'seed:%'")}

    # -- calls ----------------------------------------------------------------------------------------

    async def _enter(self, tool: str) -> FailKind | None:
        """Count the call; refuse it when so scripted; say whether to hang after acting."""
        self.calls[tool] += 1
        failure = self.take_failure(tool, {FailKind.timeout, FailKind.refuse})
        if failure == FailKind.refuse:
            raise ToolError(f"{tool}: refused (fail mode)")
        return failure

    async def _leave(self, failure: FailKind | None, result: dict[str, Any]) -> dict[str, Any]:
        if failure == FailKind.timeout:
            await asyncio.sleep(self.hang_s)
        return result

    async def _effect(self, tool: str, key: str | None, ctx: Context, effect) -> dict[str, Any]:
        failure = await self._enter(tool)
        key = key or _meta_key(ctx)
        if not key:
            raise ToolError(f"{tool} changes records: it needs an idempotency key (argument idempotency_key, "
                            f"or {IDEMPOTENCY_META} in _meta)")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return await self._leave(failure, self.records.once(tool, key, effect))

    async def _lookup(self, tool: str, read) -> dict[str, Any]:
        failure = await self._enter(tool)
        return await self._leave(failure, read())

    def build(self) -> MCPServer:
        server = MCPServer("handoff-system-of-record",
                           instructions="A sample CRM and payment ledger (development and tests).")
        records = self.records

        @server.tool()
        async def lookup_contact(contact_id: str | None = None, email: str | None = None) -> dict[str, Any]:
            """A CRM contact by id or email address."""
            def read():
                rows = records.read("SELECT * FROM contacts WHERE contact_id = ? OR lower(email) = lower(?)",
                                    contact_id, email)
                return {"found": True, **rows[0]} if rows else {"found": False, "contact_id": contact_id,
                                                                "email": email}
            return await self._lookup("lookup_contact", read)

        @server.tool()
        async def find_leads(contact_id: str | None = None, email: str | None = None,
                             limit: int = 10) -> dict[str, Any]:
            """A contact's leads, newest first (by contact id, or the contact's email address)."""
            def read():
                who = contact_id or next((r["contact_id"] for r in records.read(
                    "SELECT contact_id FROM contacts WHERE lower(email) = lower(?)", email)), None)
                leads = records.read("SELECT * FROM leads WHERE contact_id = ? ORDER BY created_at DESC LIMIT ?",
                                     who, limit)
                return {"contact_id": who, "leads": leads}
            return await self._lookup("find_leads", read)

        def owner(owner_id: str) -> dict[str, Any] | None:
            rows = records.read("SELECT * FROM owners WHERE owner_id = ?", owner_id)
            if not rows:
                return None
            territories = records.read("SELECT territory FROM owner_territories WHERE owner_id = ? ORDER BY territory",
                                       owner_id)
            services = records.read("SELECT service FROM owner_services WHERE owner_id = ? ORDER BY service", owner_id)
            return {**rows[0], "active": bool(rows[0]["active"]), "territories": [t["territory"] for t in territories],
                    "services": [s["service"] for s in services]}

        @server.tool()
        async def lookup_owner(owner_id: str) -> dict[str, Any]:
            """An owner (a salesperson) with the territories and services they cover."""
            def read():
                found = owner(owner_id)
                return {"found": True, **found} if found else {"found": False, "owner_id": owner_id}
            return await self._lookup("lookup_owner", read)

        @server.tool()
        async def find_owners(territory: str, service: str | None = None) -> dict[str, Any]:
            """The active owners who cover the territory (and the service, when one is given)."""
            def read():
                ids = records.read("SELECT DISTINCT o.owner_id FROM owners o JOIN owner_territories t USING (owner_id) "
                                   "JOIN owner_services s USING (owner_id) WHERE o.active = 1 AND t.territory = ? "
                                   "AND (? IS NULL OR s.service = ?) ORDER BY o.owner_id", territory, service, service)
                return {"territory": territory, "service": service, "owners": [owner(r["owner_id"]) for r in ids]}
            return await self._lookup("find_owners", read)

        @server.tool()
        async def lookup_order(order_id: str) -> dict[str, Any]:
            """An order, with what has been refunded of it and what is left."""
            def read():
                rows = records.read("SELECT o.*, COALESCE((SELECT SUM(amount) FROM refunds r WHERE r.order_id = "
                                    "o.order_id), 0) AS refunded FROM orders o WHERE o.order_id = ?", order_id)
                if not rows:
                    return {"found": False, "order_id": order_id}
                row = rows[0]
                return {"found": True, **row, "refunded": cents(row["refunded"]),
                        "left": cents(row["total"] - row["refunded"])}
            return await self._lookup("lookup_order", read)

        @server.tool()
        async def lookup_payment(order_id: str) -> dict[str, Any]:
            """The payment record of an order."""
            def read():
                rows = records.read("SELECT * FROM payments WHERE order_id = ?", order_id)
                return {"found": True, **rows[0]} if rows else {"found": False, "order_id": order_id}
            return await self._lookup("lookup_payment", read)

        @server.tool()
        async def lookup_policy() -> dict[str, Any]:
            """The refund policy in force: its version and numbered clauses."""
            def read():
                return orjson.loads(records.read("SELECT document FROM policy")[0]["document"])
            return await self._lookup("lookup_policy", read)

        @server.tool()
        async def refunds_for(order_id: str) -> dict[str, Any]:
            """Every refund of an order: the payment ledger."""
            return await self._lookup("refunds_for", lambda: {"order_id": order_id,
                                                              "refunds": self.refunds_for(order_id)})

        @server.tool()
        async def update_lead(ctx: Context, lead_id: str, contact_id: str | None = None, status: str | None = None,
                              intent: str | None = None, service: str | None = None, territory: str | None = None,
                              urgency: str | None = None, summary: str | None = None, next_action: str | None = None,
                              idempotency_key: str | None = None) -> dict[str, Any]:
            """Update a lead's fields (those given); a new lead id creates the lead for contact_id."""
            given = {k: v for k, v in {"status": status, "intent": intent, "service": service, "territory": territory,
                                       "urgency": urgency, "summary": summary, "next_action": next_action}.items()
                     if v is not None}

            def effect(db: sqlite3.Connection) -> dict[str, Any]:
                now = _now()
                if _one(db, "SELECT lead_id FROM leads WHERE lead_id = ?", lead_id) is None:
                    if not contact_id or _one(db, "SELECT 1 FROM contacts WHERE contact_id = ?", contact_id) is None:
                        raise ToolError(f"lead {lead_id} does not exist; creating it needs a known contact_id")
                    db.execute("INSERT INTO leads (lead_id, contact_id, created_at, source, status) "
                               "VALUES (?, ?, ?, 'handoff', 'new')", (lead_id, contact_id, now))
                for column, value in given.items():
                    db.execute(f"UPDATE leads SET {column} = ? WHERE lead_id = ?", (value, lead_id))
                db.execute("UPDATE leads SET updated_at = ? WHERE lead_id = ?", (now, lead_id))
                return _one(db, "SELECT * FROM leads WHERE lead_id = ?", lead_id)
            return await self._effect("update_lead", idempotency_key, ctx, effect)

        @server.tool()
        async def assign_owner(ctx: Context, lead_id: str, owner_id: str,
                               idempotency_key: str | None = None) -> dict[str, Any]:
            """Make an active owner responsible for a lead."""
            def effect(db: sqlite3.Connection) -> dict[str, Any]:
                found = _one(db, "SELECT active FROM owners WHERE owner_id = ?", owner_id)
                if found is None or not found["active"]:
                    raise ToolError(f"owner {owner_id} {'is inactive' if found else 'does not exist'}")
                if db.execute("UPDATE leads SET owner_id = ?, updated_at = ? WHERE lead_id = ?",
                              (owner_id, _now(), lead_id)).rowcount == 0:
                    raise ToolError(f"lead {lead_id} does not exist")
                return {"lead_id": lead_id, "owner_id": owner_id}
            return await self._effect("assign_owner", idempotency_key, ctx, effect)

        @server.tool()
        async def create_task(ctx: Context, owner_id: str, title: str, lead_id: str | None = None,
                              due_at: str | None = None, idempotency_key: str | None = None) -> dict[str, Any]:
            """A task for an owner (a call to make, information to ask for)."""
            def effect(db: sqlite3.Connection) -> dict[str, Any]:
                if _one(db, "SELECT 1 FROM owners WHERE owner_id = ?", owner_id) is None:
                    raise ToolError(f"owner {owner_id} does not exist")
                task = {"task_id": _next_id(db, "tasks", "T-"), "owner_id": owner_id, "lead_id": lead_id,
                        "title": title, "due_at": due_at, "status": "open", "created_at": _now()}
                db.execute("INSERT INTO tasks VALUES (:task_id, :owner_id, :lead_id, :title, :due_at, :status, "
                           ":created_at)", task)
                return task
            return await self._effect("create_task", idempotency_key, ctx, effect)

        @server.tool()
        async def issue_refund(ctx: Context, order_id: str, amount: float, currency: str, reason: str | None = None,
                               idempotency_key: str | None = None) -> dict[str, Any]:
            """Refund part or all of an order through the payment service, once per idempotency key."""
            def effect(db: sqlite3.Connection) -> dict[str, Any]:
                order = _one(db, "SELECT total, currency FROM orders WHERE order_id = ?", order_id)
                if order is None:
                    raise ToolError(f"order {order_id} does not exist")
                if currency != order["currency"]:
                    raise ToolError(f"order {order_id} was paid in {order['currency']}, not {currency}")
                refunded = db.execute("SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE order_id = ?",
                                      (order_id,)).fetchone()[0]
                left = cents(order["total"] - refunded)
                if not 0 < amount <= left:
                    raise ToolError(f"refund of {amount} refused: {left} of order {order_id} is left to refund")
                refund = {"refund_id": _next_id(db, "refunds", "R-"), "order_id": order_id,
                          "amount": cents(amount), "currency": currency, "reason": reason,
                          "idempotency_key": key_of(idempotency_key, ctx), "created_at": _now()}
                db.execute("INSERT INTO refunds VALUES (:refund_id, :order_id, :amount, :currency, :reason, "
                           ":idempotency_key, :created_at)", refund)
                return refund | {"refunded": cents(refunded + amount), "left": cents(left - amount)}
            return await self._effect("issue_refund", idempotency_key, ctx, effect)

        @server.tool()
        async def add_crm_note(ctx: Context, contact_id: str, text: str, about: str | None = None,
                               details: dict[str, Any] | None = None,
                               idempotency_key: str | None = None) -> dict[str, Any]:
            """A note on a contact's CRM record (about: what it concerns, e.g. an order or a lead id; details:
            structured facts, e.g. the refund issued)."""
            def effect(db: sqlite3.Connection) -> dict[str, Any]:
                if _one(db, "SELECT 1 FROM contacts WHERE contact_id = ?", contact_id) is None:
                    raise ToolError(f"contact {contact_id} does not exist")
                note = {"note_id": _next_id(db, "notes", "N-"), "contact_id": contact_id, "about": about,
                        "text": text, "details": details, "created_at": _now()}
                db.execute("INSERT INTO notes VALUES (:note_id, :contact_id, :about, :text, :details, :created_at)",
                           note | {"details": None if details is None else orjson.dumps(details).decode()})
                return note
            return await self._effect("add_crm_note", idempotency_key, ctx, effect)

        return server


def _meta_key(ctx: Context) -> str | None:
    meta = ctx.request_context.meta or {}
    return meta.get(IDEMPOTENCY_META) if isinstance(meta, dict) else getattr(meta, IDEMPOTENCY_META, None)


def key_of(argument: str | None, ctx: Context) -> str | None:
    return argument or _meta_key(ctx)


def _called_tool(body: bytes) -> str | None:
    """The tool a JSON-RPC request body calls, if it is a ``tools/call``."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(message, dict) and message.get("method") == "tools/call":
        return (message.get("params") or {}).get("name")
    return None


class _Http500:
    """ASGI middleware: answers a ``tools/call`` 500 when the fail mode says so, before MCP reads it."""

    def __init__(self, app, service: SystemOfRecord):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        messages, more = [], True
        while more:
            message = await receive()
            messages.append(message)
            more = message.get("more_body", False)
        tool = _called_tool(b"".join(m.get("body", b"") for m in messages))
        if tool is not None and self.service.take_failure(tool, {FailKind.http_500}):
            self.service.calls[tool] += 1
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"system of record: scripted failure (fail mode)"})
            return
        pending = iter(messages)

        async def replay():
            return next(pending, None) or await receive()
        await self.app(scope, replay, send)


class SystemOfRecordThread(McpServerThread):
    """The system of record over streamable HTTP on 127.0.0.1, in a background thread; ``url`` ends in /mcp."""

    def __init__(self, path: Path | None = None, port: int = 0, failures: list[Failure] | None = None,
                 hang_s: float = 30.0):
        self.service = SystemOfRecord(path, failures, hang_s)
        super().__init__(_Http500(self.service.build().streamable_http_app(), self.service), "system-of-record", port)


def main(argv: list[str] | None = None) -> None:
    """Serve the sample system of record over streamable HTTP on loopback."""
    parser = argparse.ArgumentParser(prog="python -m processors.dev.system_of_record", description=main.__doc__)
    parser.add_argument("--port", type=int, default=0, help="127.0.0.1 port (default 0: any free one, printed)")
    parser.add_argument("--db", type=Path, help="SQLite file, seeded when new (default: a temporary one)")
    parser.add_argument("--fail", action="append", default=[], metavar="TOOL=KIND[:N]",
                        help="fail calls of TOOL (* for any) as timeout, http_500 or refuse, the next N or every one")
    parser.add_argument("--hang", type=float, default=30.0, metavar="SECONDS",
                        help="how long a timeout holds an answer")
    args = parser.parse_args(argv)
    try:
        failures = [Failure.parse(text) for text in args.fail]
    except ValueError as exc:
        parser.error(str(exc))
    server = SystemOfRecordThread(args.db, args.port, failures, args.hang)
    server.serve(f"system of record listening on {{url}} (SQLite {server.service.records.path})")


if __name__ == "__main__":
    main()
