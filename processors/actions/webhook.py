"""The HTTP webhook action: deliver one decided action to a downstream system.

Delivery is at-least-once — timeouts, connection errors and 5xx are retried — so every attempt of
one call carries the same Idempotency-Key and byte-identical body: a receiver that honours the key
applies the action once however many attempts reach it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from typing import Any

import httpx
import orjson
from pydantic import BaseModel
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

log = logging.getLogger(__name__)

RESPONSE_LIMIT = 1000  # characters of a response body kept: enough to debug, bounded for Kafka records


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The X-Handoff-Signature value; the timestamp is signed too, so it cannot be swapped."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: int | str, body: bytes, signature: str) -> bool:
    """Constant-time, so response timing leaks nothing about the expected signature."""
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode())


class MissingSecret(ValueError):
    """An action declares a signing secret that is not set: it must not send unsigned."""


def secret_from_env(action: str, env: str | None) -> str | None:
    """The signing secret ``env`` names (None when the action declares none). A declared secret that
    is unset or empty raises :class:`MissingSecret`: a receiver that checks signatures would refuse
    every call, one that does not would accept forgeries, so the stage stops at start instead."""
    if env is None:
        return None
    secret = os.environ.get(env)
    if not secret:
        raise MissingSecret(f"action {action}: its secret_env {env} is not set; set it to the webhook's signing "
                            f"secret (or remove secret_env from the workflow to send unsigned)")
    return secret


class ActionResult(BaseModel):
    """What a delivered action returned; latency_ms spans all attempts, backoff included."""

    http_status: int | None
    response: str | None
    attempts: int
    latency_ms: float


class ActionFailed(Exception):
    """The action did not (knowingly) take effect; `retryable` says whether trying later may help.

    An exhausted timeout is ambiguous — the receiver may have applied it — which is why a later
    retry must reuse the same idempotency key.
    """

    def __init__(self, reason: str, *, retryable: bool, attempts: int, http_status: int | None = None,
                 response: str | None = None) -> None:
        status = f", HTTP {http_status}" if http_status is not None else ""
        super().__init__(f"{reason} after {attempts} attempt(s){status}")
        self.reason = reason
        self.retryable = retryable
        self.attempts = attempts
        self.http_status = http_status
        self.response = response


class _Transient(Exception):
    """One attempt failed in a way another attempt may fix; `kind` names it in the exhausted reason."""

    def __init__(self, kind: str, http_status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(kind if http_status is None else f"{kind} (HTTP {http_status})")
        self.kind = kind
        self.http_status = http_status
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    """Only the delay-seconds form; an HTTP-date falls back to our own backoff."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class WebhookAction:
    """POSTs an action's arguments as JSON to one URL, retrying what a retry can fix."""

    def __init__(self, name: str, url: str, secret: str | None = None, *, timeout: float = 5.0,
                 max_attempts: int = 4, backoff_initial: float = 0.2, backoff_max: float = 5.0,
                 client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_max = backoff_max
        self._backoff = wait_exponential_jitter(multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial)
        self._client = client

    async def run(self, idempotency_key: str, arguments: dict[str, Any]) -> ActionResult:
        """Deliver once in effect: raises ActionFailed at once on a 4xx, or when attempts run out."""
        if self._client is not None:
            return await self._deliver(self._client, idempotency_key, orjson.dumps(arguments))
        async with httpx.AsyncClient() as client:
            return await self._deliver(client, idempotency_key, orjson.dumps(arguments))

    async def _deliver(self, client: httpx.AsyncClient, key: str, body: bytes) -> ActionResult:
        started = time.perf_counter()
        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_attempts), wait=self._wait,
                                 retry=retry_if_exception_type(_Transient),
                                 before_sleep=lambda state: self._log_retry(state, key),
                                 reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    response = await self._attempt(client, key, body, number)
        except _Transient as exc:
            raise ActionFailed(f"{exc.kind}_exhausted", retryable=True, attempts=self.max_attempts,
                               http_status=exc.http_status) from exc
        return ActionResult(http_status=response.status_code, response=response.text[:RESPONSE_LIMIT],
                            attempts=number, latency_ms=(time.perf_counter() - started) * 1000)

    async def _attempt(self, client: httpx.AsyncClient, key: str, body: bytes, number: int) -> httpx.Response:
        """One POST, classified: success is returned, a transient failure raises _Transient."""
        timestamp = str(int(time.time()))  # fresh per attempt, so a receiver's freshness check passes retries
        headers = {"Idempotency-Key": key, "Content-Type": "application/json",
                   "X-Handoff-Action": self.name, "X-Handoff-Timestamp": timestamp}
        if self.secret is not None:
            headers["X-Handoff-Signature"] = sign(self.secret, timestamp, body)
        try:
            response = await client.post(self.url, content=body, headers=headers, timeout=self.timeout)
        except httpx.TimeoutException as exc:
            raise _Transient("timeout") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Transient("connect") from exc
        status = response.status_code
        if status == 429:
            raise _Transient("http_429", status, _retry_after(response))
        if status >= 500:
            raise _Transient("http_5xx", status, _retry_after(response))
        if not response.is_success:  # 4xx, or a 3xx we do not follow: the same request will not succeed
            raise ActionFailed(f"http_{status // 100}xx", retryable=False, attempts=number, http_status=status,
                               response=response.text[:RESPONSE_LIMIT])
        return response

    def _wait(self, state: RetryCallState) -> float:
        """Jittered exponential backoff, stretched to a server's Retry-After but never past backoff_max,
        so one slow server cannot park a worker."""
        failure = state.outcome.exception() if state.outcome else None
        retry_after = failure.retry_after if isinstance(failure, _Transient) else None
        return min(max(self._backoff(state), retry_after or 0.0), self.backoff_max)

    def _log_retry(self, state: RetryCallState, key: str) -> None:
        failure = state.outcome.exception() if state.outcome else None
        log.warning("action %s attempt %d failed (%s); retrying in %.2fs", self.name, state.attempt_number,
                    failure, state.upcoming_sleep, extra={"idempotency_key": key})  # <event id>:<action>, in JSON logs
