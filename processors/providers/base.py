"""The provider interface: one request in, one answer's text out, with its usage.

A provider answers with *text* — JSON when all goes well — exactly as an LLM would, so the
embedded classifier, a scripted test double and a remote LLM are interchangeable and every
answer goes through the same parsing and validation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from pydantic import BaseModel, Field


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


class ModelAnswer(BaseModel):
    text: str
    model: str = Field(description="provider:model that actually answered")
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0


class ProviderError(Exception):
    """A call failed. ``retryable`` says whether the same call may succeed later."""

    retryable = True


class ProviderTimeout(ProviderError):
    """No answer within the provider's timeout."""


class ProviderRejected(ProviderError):
    """The provider refused the request itself (a 4xx other than 429); retrying cannot help."""

    retryable = False


class Provider(ABC):
    """Subclasses implement ``complete``; it must be safe to call concurrently."""

    name: str = "provider"

    @abstractmethod
    async def complete(self, request: ModelRequest) -> ModelAnswer: ...
