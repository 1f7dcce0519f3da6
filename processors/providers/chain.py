"""A fallback chain: an ordered list of models, tried in turn until one answers.

Each model retries on its own (``retries``, ``deadline_s``); when it gives up, the chain moves
on to the next, all within the chain's ``deadline_s``. A refused request (a 4xx other than 429)
also moves on — another model may accept what this one refused — but says nothing about the
model's health. A model that fails ``cooldown.failures`` calls in a row is skipped for
``cooldown.seconds``, so while a primary is down the records go straight to the fallback
instead of each paying the primary's retries first. When every model is cooling down, all are
tried anyway, in order: the chain never turns work away on its own, and the records wait in
Kafka (the stage slows down) rather than pile up in the dead letters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from processors.providers.anthropic import AnthropicModel
from processors.providers.base import (
    Attempt,
    ModelAnswer,
    ModelRequest,
    Provider,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
)
from processors.providers.deadline import Deadline
from processors.providers.http import HttpProvider
from processors.providers.openai import OpenAIModel
from processors.redaction import Redaction

log = logging.getLogger("handoff.providers")

FALLBACKS = Counter("handoff_model_fallbacks_total", "Calls a chain moved on from, by the model that failed them.",
                    ["model"])
COOLDOWNS = Counter("handoff_model_cooldowns_total", "Times a model was benched after failing repeatedly.", ["model"])

HttpModels = Annotated[OpenAIModel | AnthropicModel, Field(discriminator="kind")]


class Cooldown(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failures: int = Field(3, ge=1, description=(
        "Failed calls in a row (retries exhausted) before a model is skipped. Fewer moves traffic off a sick "
        "model sooner; more keeps one unlucky blip from benching a healthy one."))
    seconds: float = Field(30.0, ge=0, description=(
        "How long it is skipped before it is tried again. Longer spares a down model and the records its "
        "retries would delay; shorter notices its recovery sooner."))


class ChainModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["chain"]
    models: list[HttpModels] = Field(min_length=1, description="In order of preference.")
    deadline_s: float = Field(60.0, gt=0, description=(
        "All models of one call, waiting for rate budget excluded. Give each model a deadline_s well under "
        "this, or the first one can use it all."))
    cooldown: Cooldown = Cooldown()

    def provider(self, redact: Callable[[str], str] = Redaction().text) -> ChainProvider:
        return ChainProvider([model.provider(redact) for model in self.models], self.deadline_s, self.cooldown)


@dataclass
class _Member:
    provider: HttpProvider
    failures: int = 0
    cooling_until: float = 0.0


class ChainProvider(Provider):
    name = "chain"
    self_timed = True

    def __init__(self, providers: list[HttpProvider], deadline_s: float, cooldown: Cooldown = Cooldown()):
        self.members = [_Member(p) for p in providers]
        self.deadline_s = deadline_s
        self.cooldown = cooldown

    async def complete(self, request: ModelRequest) -> ModelAnswer:
        started = time.perf_counter()
        deadline = Deadline(self.deadline_s)
        order = self._order()
        attempts: list[Attempt] = []
        errors: list[ProviderError] = []
        for position, member in enumerate(order):
            if deadline.remaining() <= 0:
                errors.append(ProviderTimeout(f"chain deadline of {self.deadline_s}s passed before "
                                              f"{', '.join(m.provider.model for m in order[position:])}"))
                break
            try:
                answer = await member.provider.complete(request, deadline)
            except ProviderError as exc:
                attempts += exc.attempts
                errors.append(exc)
                if exc.retryable:
                    self._failed(member)
                if position + 1 < len(order):
                    FALLBACKS.labels(member.provider.model).inc()
                continue
            member.failures = 0
            answer.attempts = attempts + answer.attempts
            answer.cost_usd = sum(a.cost_usd for a in answer.attempts)
            answer.latency_ms = (time.perf_counter() - started) * 1000
            return answer
        kind = ProviderError if any(e.retryable for e in errors) else ProviderRejected
        raise kind("every model failed: " + "; ".join(map(str, errors)), attempts=attempts)

    async def close(self) -> None:
        for member in self.members:
            await member.provider.close()

    def _order(self) -> list[_Member]:
        now = time.monotonic()
        return [m for m in self.members if m.cooling_until <= now] or self.members

    def _failed(self, member: _Member) -> None:
        member.failures += 1
        if member.failures >= self.cooldown.failures:
            member.failures = 0
            member.cooling_until = time.monotonic() + self.cooldown.seconds
            COOLDOWNS.labels(member.provider.model).inc()
            log.warning("model %s failed %d calls in a row: skipping it for %.0fs", member.provider.model,
                        self.cooldown.failures, self.cooldown.seconds)
