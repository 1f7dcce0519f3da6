"""What the OpenAI-compatible and Anthropic providers share: one model call over HTTP, retried well.

A protocol subclass says only how a request is shaped and an answer read; everything about
failure lives here, once. Timeouts, connection failures, 408, 409, 429 and 5xx are retried
with exponential backoff and jitter, and a ``Retry-After`` (or ``retry-after-ms``) from the
server replaces the backoff; other 4xx are refused requests and are not retried. No attempt
starts or runs past the deadline, and a ``Retry-After`` longer than ``retry_after_max_s`` ends
the call at once, so a chain can move to its next model instead of waiting.

The text sent is redacted once more here, whatever the caller did: nothing leaves the process
unredacted, even from a caller that forgot. The API key comes from the configuration or the
environment, travels only in a header, and is masked in every error message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import ClassVar
from weakref import WeakKeyDictionary

import httpx
import orjson
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

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
from processors.providers.limits import RateLimiter, RateLimits
from processors.providers.pricing import Price, price_of
from processors.redaction import Redaction

log = logging.getLogger("handoff.providers")

REQUESTS = Counter("handoff_model_requests_total", "HTTP requests to model providers, by outcome.",
                   ["model", "outcome"])
RETRYABLE_STATUS = frozenset({408, 409, 429})
"""Besides 5xx: request timeout, conflict (OpenAI's transient lock) and rate limit."""
ERROR_CHARS = 300
_NOT_A_NAME = re.compile(r"[^a-zA-Z0-9_-]")


class HttpRetries(BaseModel):
    """Retries of one model within one call. More ride out longer blips, but hold the record (and
    every later record of its key) longer and delay the fallback."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(3, ge=1)
    backoff_initial_s: float = Field(0.5, ge=0, description=(
        "The first wait, doubled on each retry plus up to as much again at random, so callers that "
        "failed together do not retry together."))
    backoff_max_s: float = Field(8.0, ge=0)
    retry_after_max_s: float = Field(20.0, ge=0, description=(
        "A longer Retry-After is not waited out: the call fails at once and a chain moves on. Higher "
        "sticks with a preferred model through a throttle; lower fails over sooner."))


class HttpModel(BaseModel):
    """One model behind an HTTP API. ``kind`` picks the protocol."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    model: str = Field(description="The name the server knows: gpt-4.1-mini, llama3.1:8b, claude-haiku-4-5…")
    label: str | None = Field(None, description=(
        "Names the provider in answers, traces and metrics as <label>:<model>; default the kind. "
        "Say ollama or vllm to tell a local server from the vendor."))
    base_url: str
    api_key: SecretStr | None = Field(None, description=(
        "The key itself. Prefer api_key_env: a key written in workflow.yaml ends up in version control."))
    api_key_env: str | None = Field(description=(
        "Environment variable holding the key, read when the stage starts (an unset one fails the "
        "start); null for a server that needs no key."))
    timeout_s: float = Field(20.0, gt=0, description=(
        "Per attempt. Shorter fails over sooner from a hung server, but cuts off long answers."))
    deadline_s: float = Field(30.0, gt=0, description=(
        "All attempts of one call, waiting for rate budget excluded. Longer rides out more; shorter "
        "leaves a chain time for its fallback."))
    retries: HttpRetries = HttpRetries()
    rate_limits: RateLimits = RateLimits()
    prices: Price | None = Field(None, description="Overrides processors/providers/prices.yaml for this model.")

    provider_class: ClassVar[type[HttpProvider]]
    """Set by each protocol's module: the provider this configuration builds."""

    @property
    def name(self) -> str:
        return f"{self.label or self.kind}:{self.model}"

    def provider(self, redact: Callable[[str], str] = Redaction().text) -> HttpProvider:
        """The provider, redacting what it sends with ``redact`` (the workflow's redaction)."""
        return self.provider_class(self, redact)

    def key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env is None:
            return None
        if not os.environ.get(self.api_key_env):
            raise ValueError(f"model {self.name}: environment variable {self.api_key_env} (api_key_env) is not set; "
                             f"set api_key_env: null for a server that needs no key")
        return os.environ[self.api_key_env]


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, else ``Retry-After`` in seconds or as a date."""
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):  # malformed: our own backoff applies
        return None


def schema_name(request: ModelRequest) -> str:
    """The prompt's name as both protocols want a schema or tool named: ``[a-zA-Z0-9_-]{1,64}``."""
    return _NOT_A_NAME.sub("_", request.prompt_name)[:64] or "answer"


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable


class HttpProvider(Provider, ABC):
    """A subclass sets ``path`` and implements ``headers``, ``body`` and ``read``."""

    self_timed = True
    path: str

    def __init__(self, settings: HttpModel, redact: Callable[[str], str] = Redaction().text):
        self.settings = settings
        self.model = settings.name
        self._key = settings.key()
        self._redact = redact
        self._price = settings.prices or price_of(settings.model)
        if self._price is None:
            log.warning("no price for model %s in prices.yaml and no prices in its configuration: "
                        "its calls are recorded at zero cost", settings.model)
        self._limiter = RateLimiter(settings.rate_limits, self.model)
        # An httpx client's connections belong to the event loop that opened them: one client per loop.
        self._clients: WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = WeakKeyDictionary()

    @abstractmethod
    def headers(self, key: str | None) -> dict[str, str]:
        """Authentication and protocol headers."""

    @abstractmethod
    def body(self, request: ModelRequest) -> dict:
        """The request body, asking for an answer that matches ``request.output_schema``."""

    @abstractmethod
    def read(self, payload: dict) -> tuple[str, int, int]:
        """(answer text, input tokens, output tokens) from a 200 response's JSON."""

    async def complete(self, request: ModelRequest, within: Deadline | None = None) -> ModelAnswer:
        """One call, retried as the module docstring says; ``within`` is an enclosing chain's deadline."""
        started = time.perf_counter()
        outgoing = request.model_copy(update={"system": self._redact(request.system),
                                              "user": self._redact(request.user), "inputs": {}})
        body = orjson.dumps(self.body(outgoing))
        estimate = len(body) // 4 + request.max_tokens  # ~4 characters a token, plus the most it may answer
        deadline = Deadline(self.settings.deadline_s, within)
        attempts: list[Attempt] = []
        retries = self.settings.retries
        backoff = wait_exponential_jitter(multiplier=retries.backoff_initial_s, max=retries.backoff_max_s,
                                          jitter=retries.backoff_initial_s)

        def wait(state: RetryCallState) -> float:
            after = state.outcome.exception().retry_after
            return backoff(state) if after is None else after + random.uniform(0, retries.backoff_initial_s)

        def stop(state: RetryCallState) -> bool:
            after = state.outcome.exception().retry_after
            return (state.attempt_number >= retries.attempts or deadline.remaining() <= state.upcoming_sleep
                    or (after is not None and after > retries.retry_after_max_s))

        try:
            answer = await AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception(_retryable), reraise=True)(
                self._attempt, body, estimate, deadline, attempts)
        except ProviderError as exc:
            tries = f"{len(attempts)} attempt{'s' if len(attempts) > 1 else ''}"
            raise type(exc)(f"{self.model}: {exc} ({tries})", retry_after=exc.retry_after, attempts=attempts) from exc
        answer.attempts = attempts
        answer.latency_ms = (time.perf_counter() - started) * 1000
        return answer

    async def close(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    async def _attempt(self, body: bytes, estimate: int, deadline: Deadline, attempts: list[Attempt]) -> ModelAnswer:
        await deadline.paused(self._limiter.acquire(estimate))
        started = time.perf_counter()
        try:
            text, tokens_in, tokens_out = await self._post(body, min(self.settings.timeout_s, deadline.remaining()))
        except ProviderError as exc:
            self._limiter.settle(estimate, 0)
            latency_ms = (time.perf_counter() - started) * 1000
            attempts.append(Attempt(model=self.model, outcome=str(exc), latency_ms=latency_ms))
            raise
        self._limiter.settle(estimate, tokens_in + tokens_out)
        REQUESTS.labels(self.model, "ok").inc()
        cost = self._price.cost(tokens_in, tokens_out) if self._price else 0.0
        attempt = Attempt(model=self.model, outcome="ok", latency_ms=(time.perf_counter() - started) * 1000,
                          tokens_in=tokens_in, tokens_out=tokens_out, cost_usd=cost)
        attempts.append(attempt)
        return ModelAnswer(text=text, model=self.model, tokens_in=tokens_in, tokens_out=tokens_out, cost_usd=cost)

    async def _post(self, body: bytes, timeout: float) -> tuple[str, int, int]:
        try:
            response = await self._client().post(self.path, content=body, timeout=max(timeout, 0.001))
        except httpx.TimeoutException:
            raise self._failure(ProviderTimeout, "timeout", f"no answer within {timeout:.3g}s") from None
        except httpx.TransportError as exc:
            raise self._failure(ProviderError, "unreachable",
                                f"cannot reach {self.settings.base_url}: {type(exc).__name__} {exc}") from None
        status = response.status_code
        if status != 200:
            kind = ProviderError if status in RETRYABLE_STATUS or status >= 500 else ProviderRejected
            raise self._failure(kind, f"http_{status}", f"HTTP {status}: {response.text[:ERROR_CHARS]}",
                                retry_after(response.headers))
        try:
            return self.read(response.json())
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            problem = f"unreadable answer ({type(exc).__name__}: {exc}): {response.text[:ERROR_CHARS]}"
            raise self._failure(ProviderError, "unreadable", problem) from None

    def _failure(self, kind: type[ProviderError], outcome: str, message: str,
                 after: float | None = None) -> ProviderError:
        """The error for a failed attempt, counted, with the key masked wherever a server echoed it."""
        REQUESTS.labels(self.model, outcome).inc()
        if self._key:
            message = message.replace(self._key, "[API KEY]")
        return kind(message, retry_after=after)

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            headers = {"content-type": "application/json", **self.headers(self._key)}
            client = self._clients[loop] = httpx.AsyncClient(base_url=self.settings.base_url, headers=headers)
        return client
