"""The provider interface: one request in, one answer's text out, with its usage.

A provider answers with *text* — JSON when all goes well — exactly as an LLM would, so the
embedded classifier, a scripted test double and a remote LLM are interchangeable and every
answer goes through the same parsing and validation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from pydantic import BaseModel, Field

from processors.records import Usage


class ModelRequest(BaseModel):
    """What a provider may see: the rendered, redacted prompt and the declared inputs."""

    prompt_name: str
    prompt_version: str
    system: str
    user: str
    inputs: dict[str, Any] = Field(description="Declared inputs by dotted path, already redacted.")
    output_schema: dict
    temperature: float = 0.0
    max_tokens: int = 400
    repair_errors: list[str] = Field(default_factory=list, description="Set on the one repair attempt.")
    event_id: str = ""


class Attempt(Usage):
    """One try at one model, kept so a trace shows every retry, fallback and cascade step."""

    model: str
    outcome: str = Field(description="'ok', or what went wrong: 'HTTP 503', 'timeout', 'confidence 0.41 < 0.8'…")


class ModelAnswer(Usage):
    """The answer's text and what getting it cost: ``cost_usd`` counts every attempt, failed ones included."""

    text: str
    model: str = Field(description="provider:model that actually answered")
    attempts: list[Attempt] = Field(default_factory=list,
                                    description="In order; the last one answered. Empty for a single try.")

    def tries(self) -> list[Attempt]:
        """Every attempt, the answering one last; a provider that tries once may leave ``attempts`` empty."""
        return self.attempts or [Attempt(model=self.model, outcome="ok", latency_ms=self.latency_ms,
                                         tokens_in=self.tokens_in, tokens_out=self.tokens_out, cost_usd=self.cost_usd)]


class ProviderError(Exception):
    """A call failed. ``retryable`` says whether the same call may succeed later; ``retry_after``
    is when the provider said to come back (seconds); ``attempts`` are the tries behind it."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, attempts: list[Attempt] | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.attempts = attempts or []


class ProviderTimeout(ProviderError):
    """No answer within the provider's timeout."""


class ProviderRejected(ProviderError):
    """The provider refused the request itself (a 4xx other than 429); retrying cannot help."""

    retryable = False


class Provider(ABC):
    """Subclasses implement ``complete``; it must be safe to call concurrently."""

    name: str = "provider"
    self_timed: bool = False
    """True when the provider bounds its own calls (per-attempt timeouts, a deadline): the caller
    must then not cut it off with a timeout of its own, since time spent waiting for rate budget
    is deliberate (it is how intake pauses) and is not counted against the deadline."""

    @abstractmethod
    async def complete(self, request: ModelRequest) -> ModelAnswer: ...

    async def close(self) -> None:
        """Release connections; called when the stage that owns the provider stops."""
