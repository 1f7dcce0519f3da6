"""MCP tools: the systems of record a workflow reads before the model and writes after it, reached
through the Model Context Protocol (the official ``mcp`` SDK), over streamable HTTP or stdio.

A workflow declares its **servers** (:class:`ToolServer`: a URL with headers, or a command; the
address and credentials are ``${ENV}`` references, read when the stage starts) and an
**allow-list** (:class:`ToolGrant`, by the name the workflow calls the tool): which server holds
it, the permission scope it needs, its timeout, its retries per failure type and where it takes
an idempotency key. :meth:`Tools.call` keeps the protocol, in order:

1. **Allowed?** A tool not on the allow-list is refused (:class:`ToolRefused`) before any
   connection is made.
2. **Arguments.** The server's listing (``tools/list``, read once per connection) gives the
   tool's own ``inputSchema``; arguments that break it are refused before the tool is called.
   The idempotency key goes in as the argument the grant names, or in the request's ``_meta``.
3. **Call**, bounded by the grant's ``timeout_s``. A failure is classified
   (:class:`ToolFailure`): the server cannot be reached or answered HTTP 5xx (``unavailable``), no
   answer in time (``timeout``), the tool answered with an error (``tool_error``), or the server
   refused the request (``rejected``, never retried). Each kind is retried up to its own count, with
   jittered exponential backoff; then :class:`ToolCallFailed` says which kind ran out. Every attempt of
   one call sends the same arguments and idempotency key, so a tool that honours the key
   applies it once however many attempts reach it.

Each call, whatever its end, comes back as a :class:`ToolCall` (tool, arguments, result or
error, attempts, latency): what the calling stage traces, redacted.

One connection per server, opened on first use and kept: a task owns it (the SDK's client must
be entered and left in one task), calls from any task share it, and a connection that fails is
dropped, so the next attempt connects afresh — a server that restarted is reached again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from enum import StrEnum
from string import Template
from typing import Any

import httpx2
import jsonschema_rs
import orjson
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never, wait_exponential_jitter

from processors.clock import now_ms

log = logging.getLogger("handoff.tools")
logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per MCP request otherwise

IDEMPOTENCY_META = "handoff/idempotency_key"
"""The ``_meta`` entry that carries the idempotency key to a tool that takes it there."""
RESULT_LIMIT = 4000  # characters of a tool's result kept in a record: enough to read, bounded for Kafka


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MissingSetting(ValueError):
    """A declared ``${ENV}`` reference is not set: the stage stops at start, naming it."""


def expand(text: str, what: str) -> str:
    """``text`` with its ``${ENV}`` references read from the environment."""
    try:
        return Template(text).substitute(os.environ)
    except KeyError as exc:
        raise MissingSetting(f"{what} {text!r} needs environment variable {exc.args[0]}; set it") from None


class ToolServer(Strict):
    """Where a workflow's tools live: ``url`` (streamable HTTP, with ``headers``) or ``command`` (stdio)."""

    url: str | None = Field(None, description="Streamable HTTP endpoint, e.g. ${RECORDS_MCP_URL}/mcp.")
    headers: dict[str, str] = Field(default_factory=dict, description=(
        "Sent with every request; credentials as ${ENV} references (Authorization: Bearer ${TOKEN})."))
    command: str | None = Field(None, description="stdio: the executable that serves MCP on its stdin/stdout.")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description="stdio: extra environment, ${ENV} expanded.")

    @model_validator(mode="after")
    def _one_transport(self) -> ToolServer:
        if (self.url is None) == (self.command is None):
            raise ValueError("a tool server has either url (streamable HTTP) or command (stdio)")
        return self


class IdempotencyPlacement(StrEnum):
    """Where a tool takes the idempotency key of the call."""

    argument = "argument"
    """As the argument :attr:`ToolGrant.idempotency_argument` (the tool's inputSchema must allow it)."""
    meta = "meta"
    """In the request's ``_meta``, as :data:`IDEMPOTENCY_META`."""


class ToolFailure(StrEnum):
    """How one attempt of a call failed."""

    unavailable = "unavailable"
    """The server could not be reached, or the connection broke."""
    timeout = "timeout"
    """No answer within the grant's ``timeout_s``: ambiguous, the tool may have acted."""
    tool_error = "tool_error"
    """The tool answered with ``isError``."""
    rejected = "rejected"
    """The server refused the request (unknown tool, invalid parameters): never retried."""


class ToolRetries(Strict):
    """Retries after the first attempt, per failure type: a server restarting deserves some, a tool
    that answered with an error usually none."""

    unavailable: int = Field(3, ge=0)
    timeout: int = Field(1, ge=0)
    tool_error: int = Field(0, ge=0)
    backoff_initial_s: float = Field(0.2, gt=0)
    backoff_max_s: float = Field(2.0, gt=0)

    def allows(self, kind: ToolFailure, failed: int) -> bool:
        """May a call that failed ``failed`` times with ``kind`` be tried again?"""
        return kind != ToolFailure.rejected and failed <= getattr(self, kind)


class ToolGrant(Strict):
    """One tool on a workflow's allow-list."""

    server: str = Field(description="The tool server (``tool_servers``) that holds it.")
    tool: str | None = Field(None, description="Its name on the server (default: the allow-list name).")
    scope: str = Field(description="The permission it needs; the workflow must grant it.")
    timeout_s: float = Field(10.0, gt=0)
    retries: ToolRetries = ToolRetries()
    idempotency: IdempotencyPlacement = IdempotencyPlacement.meta
    idempotency_argument: str = "idempotency_key"


class ToolCall(BaseModel):
    """What one call did, for its trace and its record: the result (JSON), or the error that ended it."""

    tool: str
    arguments: dict[str, Any]
    result: Any = None
    error: str | None = None
    attempts: int = 0
    latency_ms: float = 0.0

    def result_text(self) -> str | None:
        """The result as JSON text, cut to :data:`RESULT_LIMIT` characters."""
        return None if self.result is None else orjson.dumps(self.result).decode()[:RESULT_LIMIT]


class ToolRefused(Exception):
    """The call was not made: ``reason`` is ``tool_not_allowed`` (not on the allow-list), ``tool_not_offered`` (the
    server does not list it) or ``tool_invalid_arguments`` (they break its inputSchema)."""

    def __init__(self, reason: str, message: str, call: ToolCall):
        super().__init__(message)
        self.reason = reason
        self.call = call


class ToolCallFailed(Exception):
    """Every attempt the grant allows failed; ``reason`` is ``tool_<kind>`` (``_exhausted`` when retried)."""

    def __init__(self, kind: ToolFailure, message: str, call: ToolCall, first_failure_ms: int):
        retried = call.attempts > 1
        super().__init__(f"{call.tool}: {message} after {call.attempts} attempt(s)")
        self.kind = kind
        self.reason = f"tool_{kind}" + ("_exhausted" if retried else "")
        self.call = call
        self.first_failure_ms = first_failure_ms


class _Attempt(Exception):
    def __init__(self, kind: ToolFailure, message: str):
        super().__init__(message)
        self.kind = kind


class _Connection:
    """One server's MCP session, owned by a task from open to close, and the tools it lists."""

    def __init__(self, client: Client, http: httpx2.AsyncClient | None):
        self._client = client
        self._http = http
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.schemas: dict[str, jsonschema_rs.Validator] = {}

    async def open(self) -> _Connection:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def own() -> None:
            try:
                async with self._client:
                    listing = await self._client.list_tools()
                    self.schemas = {t.name: jsonschema_rs.validator_for(t.input_schema) for t in listing.tools}
                    ready.set_result(None)
                    await self._stop.wait()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller of open, or ends a dead session
                if not ready.done():
                    ready.set_exception(exc)
            finally:
                if self._http is not None:
                    await self._http.aclose()

        self._task = asyncio.create_task(own())
        await ready
        return self

    async def call(self, name: str, arguments: dict, meta: dict | None, timeout_s: float):
        return await self._client.call_tool(name, arguments, read_timeout_seconds=timeout_s, meta=meta)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=10)


class Tools:
    """A workflow's allow-listed tools on its servers; one per stage, used from its event loop."""

    def __init__(self, servers: dict[str, ToolServer], allowed: dict[str, ToolGrant]):
        self.servers = servers
        self.allowed = allowed
        self._connections: dict[str, _Connection] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    def check_settings(self) -> None:
        """Read every server's ``${ENV}`` references now, so a missing one stops the stage at start."""
        for name in self.servers:
            self._target(name)

    def _target(self, name: str) -> tuple[str | StdioServerParameters, dict[str, str]]:
        """The server's address (a URL, or the command to start) and HTTP headers, from the environment."""
        server = self.servers[name]
        what = f"tool server {name}:"
        if server.url is not None:
            headers = {k: expand(v, f"{what} header {k}") for k, v in server.headers.items()}
            return expand(server.url, f"{what} url"), headers
        env = {k: expand(v, f"{what} env {k}") for k, v in server.env.items()}
        return StdioServerParameters(command=expand(server.command, f"{what} command"),
                                     args=[expand(a, f"{what} args") for a in server.args], env=env or None), {}

    def _connect(self, name: str) -> _Connection:
        target, headers = self._target(name)
        if isinstance(target, StdioServerParameters):
            return _Connection(Client(target), None)
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0))
        return _Connection(Client(streamable_http_client(target, http_client=http)), http)

    async def call(self, name: str, arguments: dict[str, Any], idempotency_key: str | None = None) -> ToolCall:
        """Call the allow-listed tool ``name`` (see the module docstring); raises :class:`ToolRefused`
        or :class:`ToolCallFailed`, each carrying the :class:`ToolCall` to trace."""
        call = ToolCall(tool=name, arguments=arguments)
        grant = self.allowed.get(name)
        if grant is None:
            raise ToolRefused("tool_not_allowed", f"tool {name!r} is not on the workflow's allow-list "
                                                  f"(allowed: {sorted(self.allowed)})", call)
        sent, meta = dict(arguments), None
        if idempotency_key is not None and grant.idempotency == IdempotencyPlacement.argument:
            sent[grant.idempotency_argument] = idempotency_key
        elif idempotency_key is not None:
            meta = {IDEMPOTENCY_META: idempotency_key}
        started, failures = time.perf_counter(), []
        retrying = AsyncRetrying(stop=stop_never, reraise=True,
                                 wait=wait_exponential_jitter(multiplier=grant.retries.backoff_initial_s,
                                                              max=grant.retries.backoff_max_s,
                                                              jitter=grant.retries.backoff_initial_s),
                                 retry=retry_if_exception(lambda exc: isinstance(exc, _Attempt) and grant.retries.allows(
                                     exc.kind, sum(f == exc.kind for f, _ in failures))),
                                 before_sleep=lambda state: self._log_retry(name, state))
        try:
            async for attempt in retrying:
                with attempt:
                    call.attempts = attempt.retry_state.attempt_number
                    try:
                        call.result = await self._attempt(grant, name, sent, meta, call)
                    except _Attempt as exc:
                        failures.append((exc.kind, now_ms()))
                        raise
        except _Attempt as exc:
            call.error, call.latency_ms = f"{exc.kind}: {exc}", (time.perf_counter() - started) * 1000
            raise ToolCallFailed(exc.kind, str(exc), call, failures[0][1]) from None
        call.latency_ms = (time.perf_counter() - started) * 1000
        return call

    async def _attempt(self, grant: ToolGrant, name: str, arguments: dict, meta: dict | None, call: ToolCall) -> Any:
        try:
            connection = await self._connection(grant.server)
        except MissingSetting:
            raise
        except BaseException as exc:  # noqa: BLE001 - whatever the transport raised: the server is not there
            raise _Attempt(ToolFailure.unavailable, f"server {grant.server} not reachable: {_describe(exc)}") from None
        tool = grant.tool or name
        validator = connection.schemas.get(tool)
        if validator is None:
            raise ToolRefused("tool_not_offered", f"tool {tool!r} is not offered by server {grant.server} "
                                                  f"(it lists {sorted(connection.schemas)})", call)
        errors = [f"{'/'.join(map(str, e.instance_path)) or '(arguments)'}: {e.message}"
                  for e in validator.iter_errors(arguments)]
        if errors:
            raise ToolRefused("tool_invalid_arguments", f"{name}: arguments break the tool's inputSchema: "
                                                        + "; ".join(errors), call)
        try:
            async with asyncio.timeout(grant.timeout_s):
                result = await connection.call(tool, arguments, meta, grant.timeout_s)
        except TimeoutError:
            raise _Attempt(ToolFailure.timeout, f"no answer within {grant.timeout_s}s") from None
        except MCPError as exc:
            if exc.error.code == INTERNAL_ERROR:  # an HTTP 5xx, or the server failing: another attempt may do
                raise _Attempt(ToolFailure.unavailable, f"server error: {exc.error.message}") from None
            raise _Attempt(ToolFailure.rejected, f"server refused the call: {exc.error.message}") from None
        except Exception as exc:  # noqa: BLE001 - the connection broke: drop it, the next attempt reconnects
            await self._drop(grant.server, connection)
            raise _Attempt(ToolFailure.unavailable, f"connection to {grant.server} failed: {_describe(exc)}") from None
        text = "\n".join(getattr(c, "text", "") for c in result.content)
        if result.is_error:
            raise _Attempt(ToolFailure.tool_error, text[:RESULT_LIMIT] or "the tool reported an error")
        if result.structured_content is not None:
            return result.structured_content
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text

    async def _connection(self, server: str) -> _Connection:
        connection = self._connections.get(server)
        if connection is not None:
            return connection
        async with self._opening.setdefault(server, asyncio.Lock()):
            if server not in self._connections:
                self._connections[server] = await self._connect(server).open()
            return self._connections[server]

    async def _drop(self, server: str, connection: _Connection) -> None:
        if self._connections.get(server) is connection:
            del self._connections[server]
        await connection.close()

    async def close(self) -> None:
        for server, connection in list(self._connections.items()):
            await self._drop(server, connection)

    @staticmethod
    def _log_retry(name: str, state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        log.warning("tool %s attempt %d failed (%s); retrying in %.2fs", name, state.attempt_number, failure,
                    state.upcoming_sleep)


def _describe(exc: BaseException) -> str:
    """One line for what a transport raised; an exception group names its first leaf."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
