"""Ground: look up what the model needs to know before it is asked (the customer's plan, their recent
tickets, the order and the policy), from the systems of record, and hand it on with the event.

Runs only in a workflow that declares ``lookups``; it reads ``<wf>.triggers`` and writes a
:class:`GroundedEvent` to ``<wf>.grounded`` (keyed and partitioned like the trigger), which classify
reads instead of the triggers. For each trigger, every declared lookup at once:

* its arguments are taken from the event by dotted path;
* an MCP tool is called through the workflow's allow-list (:mod:`processors.actions.mcp`: the
  inputSchema checked first, the tool's own timeout and retries per failure type); an HTTP GET fills
  its URL's ``{argument}`` placeholders (URL-encoded) and retries timeouts, connection errors and 5xx
  up to ``attempts``, with jittered backoff; a 4xx is not retried;
* with ``cache_for``, a result for the same arguments is reused that long (in this process);
* one trace per lookup: the lookup's name (``tool``), its redacted arguments and result, latency,
  whether it came from the cache, the error — so the trace shows what the model saw.

The results travel as ``lookups`` (name → result). They are *named inputs*: the prompt spec renders
``lookups.<name>…`` only where it declares it among its ``inputs``, so nothing else reaches the model
(the load check refuses an input naming no declared lookup).

A lookup that fails after its retries takes its declared path: ``review`` (``lookup_failed``: a
person decides from the event, without that context) or ``dead_letter`` (``lookup_<reason>``, with
the dead-letter headers; replay it once the system is back). A refused tool call (not allowed,
arguments that break its inputSchema) takes the same path without any call.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from processors.actions.mcp import RESULT_LIMIT, ToolCall, ToolCallFailed, ToolRefused, expand
from processors.clock import now_ms
from processors.control.state import Control
from processors.kafka.topics import Role
from processors.paths import dotted
from processors.records import ControlState, GroundedEvent, PromptRef, ReviewReason, StageName, Usage, dumps
from processors.runtime.stage import DeadLetter, Emit, Record
from processors.stages.base import WorkflowStage
from processors.workflow.workflow import Lookup, LookupFailure, Workflow


class LookupFailed(Exception):
    """A lookup gave no result; ``reason`` names why (``tool_unavailable_exhausted``, ``http_4xx``…)."""

    def __init__(self, reason: str, message: str, call: ToolCall, attempts: int = 1):
        super().__init__(message)
        self.reason = reason
        self.call = call
        self.attempts = attempts


class _Transient(Exception):
    """One HTTP attempt failed in a way another may fix."""


class Ground(WorkflowStage):
    name = StageName.ground
    input_roles = [Role.triggers]
    output_roles = [Role.grounded, Role.review, Role.traces]

    def __init__(self, workflow: Workflow, control: Control | ControlState | None = None):
        super().__init__(workflow, control)
        self.tools = workflow.tool_client()
        self.urls: dict[str, str] = {}
        self.cache: dict[tuple[str, str], tuple[int, Any]] = {}
        """(lookup, arguments as JSON) -> (expires at ms, result): lookups with ``cache_for``."""

    async def start(self) -> None:
        self.tools.check_settings()
        self.urls = {name: expand(lookup.url, f"lookup {name}: url")
                     for name, lookup in self.workflow.lookups.items() if lookup.url}
        self.http = httpx.AsyncClient()

    async def close(self) -> None:
        await self.http.aclose()
        await self.tools.close()

    async def process(self, record: Record) -> list[Emit]:
        event = self.workflow.trigger.event_view(record.value)
        event_id = str(dotted(event, self.workflow.trigger.event_id))
        names = list(self.workflow.lookups)
        found = await asyncio.gather(*(self._look(name, event) for name in names), return_exceptions=True)
        traces, results, failed = [], {}, []
        for name, outcome in zip(names, found):
            if isinstance(outcome, LookupFailed):
                traces.append(self._trace(event_id, name, outcome.call, cached=False, error=str(outcome)))
                failed.append((name, outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                call, cached = outcome
                traces.append(self._trace(event_id, name, call, cached=cached))
                results[name] = call.result
        if failed:
            return self._failed(record, event, event_id, failed, traces)
        grounded = GroundedEvent(event_id=event_id, workflow=self.workflow.name, event=dumps(event),
                                 lookups=dumps(results), trigger_timestamp_ms=record.timestamp_ms)
        headers = {k: v.decode() for k, v in record.headers.items() if k.startswith("handoff-") and v is not None}
        return [Emit(self.workflow.topic(Role.grounded), grounded, key=record.key, headers=headers), *traces]

    def _failed(self, record: Record, event: dict, event_id: str, failed: list[tuple[str, LookupFailed]],
                traces: list[Emit]) -> list[Emit]:
        """A failed lookup's path: the dead letters if any failed one says so, else review without the context."""
        errors = [f"lookup {name}: {exc.reason}: {exc}" for name, exc in failed]
        dead = [(name, exc) for name, exc in failed if self.workflow.lookups[name].on_failure == LookupFailure.dead_letter]
        if dead:
            exc = dead[0][1]
            raise DeadLetter(f"lookup_{exc.reason}", "; ".join(errors), attempts=exc.attempts, keep=traces)
        spec = self.workflow.prompt_spec_for(self.control.state.labels.get("production") or
                                             self.workflow.prompt_spec.version)
        return [self.review(ReviewReason.lookup_failed, event_id=event_id, event=dumps(event), model="none",
                            prompt=PromptRef(name=spec.name, version=spec.version), key=record.key,
                            validation_errors=errors), *traces]

    async def _look(self, name: str, event: dict) -> tuple[ToolCall, bool]:
        """The lookup's call (from the cache when allowed) and whether it was cached; LookupFailed when none."""
        lookup = self.workflow.lookups[name]
        arguments = lookup.build_arguments(event)
        key = (name, dumps(arguments))
        cached = self.cache.get(key) if lookup.cache_for else None
        if cached is not None and cached[0] > now_ms():
            return ToolCall(tool=name, arguments=arguments, result=cached[1]), True
        call = await (self._tool(lookup, arguments) if lookup.tool else self._get(name, lookup, arguments))
        if lookup.cache_for:
            self.cache[key] = (now_ms() + int(lookup.cache_for * 1000), call.result)
        return call, False

    async def _tool(self, lookup: Lookup, arguments: dict) -> ToolCall:
        try:
            return await self.tools.call(lookup.tool, arguments)
        except ToolRefused as exc:
            raise LookupFailed(exc.reason, str(exc), exc.call) from exc
        except ToolCallFailed as exc:
            raise LookupFailed(exc.reason, str(exc), exc.call, exc.call.attempts) from exc

    async def _get(self, name: str, lookup: Lookup, arguments: dict) -> ToolCall:
        url = self.urls[name].format_map({k: urllib.parse.quote(str(v), safe="") for k, v in arguments.items()})
        call = ToolCall(tool=name, arguments=arguments)
        started = time.perf_counter()
        retrying = AsyncRetrying(stop=stop_after_attempt(lookup.attempts), reraise=True,
                                 retry=retry_if_exception_type(_Transient),
                                 wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1))
        try:
            async for attempt in retrying:
                with attempt:
                    call.attempts = attempt.retry_state.attempt_number
                    response = await self._attempt(url, lookup.timeout_s)
        except _Transient as exc:
            call.error = str(exc)
            raise LookupFailed(f"{exc}_exhausted", f"GET {url}: {exc} after {call.attempts} attempt(s)", call,
                               call.attempts) from None
        call.latency_ms = (time.perf_counter() - started) * 1000
        if not response.is_success:
            call.error = f"HTTP {response.status_code}"
            raise LookupFailed(f"http_{response.status_code // 100}xx", f"GET {url}: HTTP {response.status_code}",
                               call, call.attempts)
        try:
            call.result = response.json()
        except ValueError:
            call.result = response.text[:RESULT_LIMIT]
        return call

    async def _attempt(self, url: str, timeout_s: float) -> httpx.Response:
        try:
            response = await self.http.get(url, timeout=timeout_s)
        except httpx.TimeoutException as exc:
            raise _Transient("timeout") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Transient("connect") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(f"http_{response.status_code // 100}xx")
        return response

    def _trace(self, event_id: str, name: str, call: ToolCall, *, cached: bool, error: str | None = None) -> Emit:
        return self.trace(event_id, usage=Usage(latency_ms=call.latency_ms), tool=name, action_request=call.arguments,
                          action_response=call.result_text(), error=error,
                          decision={"lookup": name, "cached": cached, "attempts": call.attempts})
