"""A test double that behaves like a real, misbehaving LLM: slow, malformed, down, or refusing.

Answers are scripted per ``event_id`` as a queue, consumed in order; once an event's queue is
empty (or it has none) the default step answers. A step is one of:

- a dict — sent as JSON text;
- a str — sent verbatim (malformed JSON, prose, a Markdown fence…);
- a callable ``(ModelRequest) -> dict | str`` — for answers that depend on the request;
- ``Timeout()`` — the model never answers;
- ``Fail(message, retryable=...)`` — the call fails: ``ProviderError``, or ``ProviderRejected``
  when ``retryable=False``;
- ``Step(any of the above, latency=...)`` — the same, with its own latency.

Time is ``asyncio.sleep``, so hundreds of calls can be in flight at once. ``timeout`` works as
an HTTP client's does: a call that would take longer raises ``ProviderTimeout`` when it
expires, and so does a ``Timeout()`` step; without one, ``Timeout()`` raises once its latency
has passed.

Without a default, the answer is built from the request's ``output_schema`` — the first value
of each enum property, 0.9 for ``confidence``, a short text for other strings — so an
unscripted event gets a valid, confidently routed answer.

Every request is recorded in ``requests``, so a test can assert exactly what reached the model.
A script can also come from a YAML or JSONL file (``from_file``), so a stage started in another
process can run against a scripted model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from processors.providers.base import (
    ModelAnswer,
    ModelRequest,
    Provider,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
)


@dataclass(frozen=True)
class Timeout:
    """The model never answers."""


@dataclass(frozen=True)
class Fail:
    """The call fails; ``retryable=False`` is a refusal (a 4xx), which retrying cannot fix."""

    message: str = "scripted failure"
    retryable: bool = True


Answer = dict | str | Callable[[ModelRequest], dict | str] | Timeout | Fail


@dataclass(frozen=True)
class Step:
    """One scripted call; ``latency`` (seconds) overrides the provider's."""

    answer: Answer
    latency: float | None = None


class StepSpec(BaseModel):
    """One step in a script file: exactly one of ``answer``, ``raw``, ``timeout``, ``fail``."""

    model_config = ConfigDict(extra="forbid")

    answer: dict | None = None
    raw: str | None = None
    timeout: bool = False
    fail: str | None = None
    retryable: bool = True
    latency: float | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StepSpec:
        given = [k for k in ("answer", "raw", "fail") if getattr(self, k) is not None]
        given += ["timeout"] if self.timeout else []
        if len(given) != 1:
            raise ValueError(f"a step needs exactly one of answer, raw, timeout, fail (got {given or 'none'})")
        return self

    def step(self) -> Step:
        if self.timeout:
            answer: Answer = Timeout()
        elif self.fail is not None:
            answer = Fail(self.fail, retryable=self.retryable)
        else:
            answer = self.answer if self.answer is not None else self.raw
        return Step(answer, latency=self.latency)


class ScriptEntry(BaseModel):
    """``{"event_id": ..., "steps": [...]}`` queues steps for one event; ``{"default": step}``
    answers everything unscripted."""

    model_config = ConfigDict(extra="forbid")

    event_id: str | None = None
    steps: list[StepSpec] = []
    default: StepSpec | None = None

    @model_validator(mode="after")
    def _event_or_default(self) -> ScriptEntry:
        if (self.event_id is None) == (self.default is None):
            raise ValueError("an entry has either event_id (with steps) or default")
        if self.default is not None and self.steps:
            raise ValueError("a default entry is a single step, without steps")
        return self


def schema_answer(schema: dict) -> dict[str, Any]:
    """A valid answer for a flat object schema: the default when nothing is scripted."""
    return {name: _placeholder(name, prop) for name, prop in schema.get("properties", {}).items()}


def _answer_from_schema(request: ModelRequest) -> dict[str, Any]:
    return schema_answer(request.output_schema)


def _placeholder(name: str, prop: dict) -> Any:
    if "enum" in prop:
        return prop["enum"][0]
    if name == "confidence":
        return 0.9
    return {"string": "scripted default answer", "number": 0.0, "integer": 0, "boolean": False,
            "array": [], "object": {}}.get(prop.get("type"))


class ScriptedProvider(Provider):
    """Scripted answers per event, then the default; see the module docstring for the rules."""

    name = "scripted"

    def __init__(self, script: Mapping[str, Sequence[Answer | Step]] | None = None, *,
                 default: Answer | Step | None = None, latency: float = 0.0, timeout: float | None = None,
                 model: str = "scripted:inline"):
        self.default = _answer_from_schema if default is None else default
        self.latency = latency
        self.timeout = timeout
        self.model = model
        self.requests: list[ModelRequest] = []
        self._queues = {event_id: deque(steps) for event_id, steps in (script or {}).items()}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path, *, latency: float = 0.0, timeout: float | None = None) -> ScriptedProvider:
        """Load a script: YAML (a list of entries) or JSONL (one entry per line), e.g.::

            - event_id: evt_1
              steps:
                - raw: '{"category": "billing", '
                - answer: {category: billing, urgency: high, confidence: 0.8, reason: double charge}
                  latency: 0.2
            - event_id: evt_2
              steps: [{timeout: true}, {fail: "HTTP 400: bad request", retryable: false}]
            - default: {answer: {category: other, urgency: low, confidence: 0.5, reason: unscripted}}
        """
        path = Path(path)
        if path.suffix == ".jsonl":
            raw = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        elif path.suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(path.read_text()) or []
        else:
            raise ValueError(f"{path}: a script must be .yaml, .yml or .jsonl")
        entries = [ScriptEntry.model_validate(entry) for entry in raw]
        defaults = [entry.default.step() for entry in entries if entry.default]
        if len(defaults) > 1:
            raise ValueError(f"{path}: more than one default entry")
        script: dict[str, list[Step]] = {}
        for entry in entries:
            if entry.event_id is not None:
                script.setdefault(entry.event_id, []).extend(step.step() for step in entry.steps)
        return cls(script, default=defaults[0] if defaults else None, latency=latency, timeout=timeout,
                   model=f"scripted:{path.name}")

    def _next(self, request: ModelRequest) -> Step:
        """Record the request and take its event's next step — under a lock, as callers may be threads."""
        with self._lock:
            self.requests.append(request)
            queue = self._queues.get(request.event_id)
            step = queue.popleft() if queue else self.default
        return step if isinstance(step, Step) else Step(step)

    async def complete(self, request: ModelRequest) -> ModelAnswer:
        started = time.perf_counter()
        step = self._next(request)
        latency = self.latency if step.latency is None else step.latency
        never_answers = isinstance(step.answer, Timeout)
        if self.timeout is not None and (never_answers or latency > self.timeout):
            await asyncio.sleep(self.timeout)
            raise ProviderTimeout(f"scripted: no answer within {self.timeout}s")
        await asyncio.sleep(latency)
        answer = step.answer
        if never_answers:
            raise ProviderTimeout(f"scripted: no answer after {latency}s")
        if isinstance(answer, Fail):
            raise (ProviderError if answer.retryable else ProviderRejected)(answer.message)
        if callable(answer):
            answer = answer(request)
        text = answer if isinstance(answer, str) else orjson.dumps(answer).decode()
        return ModelAnswer(text=text, model=self.model, tokens_in=len(f"{request.system} {request.user}".split()),
                           tokens_out=len(text.split()), latency_ms=(time.perf_counter() - started) * 1000)
