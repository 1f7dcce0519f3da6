"""A cascade: a cheap model answers first, and only what it is unsure of goes to the LLM.

Most traffic is easy: the embedded classifier answers it offline, free and in milliseconds, with
a calibrated ``confidence``. Below ``threshold`` the request goes to the LLM, whose answer is the
one kept (both are in the trace). A higher threshold sends more to the LLM: more cost and latency,
fewer of the embedded model's mistakes. A repair goes straight to the LLM, since the embedded
model is deterministic and would repeat itself.

The saving is counted: ``handoff_cascade_answers_total{answered_by="first"}`` is the number of LLM
calls avoided; times the LLM's mean cost per call (``llm``'s cost over its count) it is the money
saved, which :meth:`CascadeProvider.report` also works out in-process.
"""

from __future__ import annotations

import orjson
from prometheus_client import Counter
from pydantic import BaseModel, Field

from processors.providers.base import Attempt, ModelAnswer, ModelRequest, Provider

ANSWERS = Counter("handoff_cascade_answers_total",
                  "Cascade answers by who gave them: 'first' (an LLM call avoided) or 'llm'.",
                  ["workflow", "answered_by"])
CONFIDENCE = "confidence"
"""The answer field the threshold applies to: the one the embedded model calibrates and review reads."""


class CascadeReport(BaseModel):
    answered_first: int = Field(description="Answers the first model gave alone: LLM calls avoided.")
    escalated: int = Field(description="Requests that went on to the LLM.")
    llm_cost_usd: float

    @property
    def saved_usd(self) -> float:
        """What the avoided calls would have cost at the LLM's mean cost per call so far."""
        return self.answered_first * self.llm_cost_usd / self.escalated if self.escalated else 0.0


class CascadeProvider(Provider):
    name = "cascade"

    def __init__(self, first: Provider, then: Provider, threshold: float, workflow: str = ""):
        self.first = first
        self.then = then
        self.threshold = threshold
        self.self_timed = then.self_timed
        self._first_count = ANSWERS.labels(workflow, "first")
        self._llm_count = ANSWERS.labels(workflow, "llm")
        self._report = CascadeReport(answered_first=0, escalated=0, llm_cost_usd=0.0)

    def report(self) -> CascadeReport:
        return self._report.model_copy()

    async def complete(self, request: ModelRequest) -> ModelAnswer:
        before: list[Attempt] = []
        first_ms = 0.0
        if not request.repair_errors:
            answer = await self.first.complete(request)
            confidence = _confidence(answer.text)
            if confidence is not None and confidence >= self.threshold:
                self._report.answered_first += 1
                self._first_count.inc()
                return answer
            first_ms = answer.latency_ms
            shown = "no confidence" if confidence is None else f"confidence {confidence:.2f}"
            before = [attempt.model_copy(update={"outcome": f"{shown} < {self.threshold}: asking the LLM"})
                      for attempt in answer.tries()]
        answer = await self.then.complete(request)
        self._report.escalated += 1
        self._report.llm_cost_usd += answer.cost_usd
        self._llm_count.inc()
        tries = before + answer.tries()
        return answer.model_copy(update={"attempts": tries, "cost_usd": sum(a.cost_usd for a in tries),
                                         "latency_ms": first_ms + answer.latency_ms})

    async def close(self) -> None:
        await self.first.close()
        await self.then.close()


def _confidence(text: str) -> float | None:
    try:
        value = orjson.loads(text).get(CONFIDENCE)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
