"""Rate limits: requests and tokens per minute per model, enforced before a request leaves.

A provider that is sent more than its limits answers 429 and the work is retried later anyway;
waiting here instead costs nothing and keeps the retries for real failures. When the budget is
spent the caller simply waits: classify's in-flight slots stay busy, the runtime stops taking
records once ``max_in_flight`` are in progress, and the partitions pause — intake slows to the
budget instead of piling up work. The wait is not counted against a call's deadline.

Each budget is a token bucket holding a minute's worth and refilling continuously, the way the
vendors meter. A caller reserves its share at once — the level may go negative — and sleeps
until that share has refilled: waiters are served in arrival order without a lock held across
an ``await``, so one limiter serves any number of event loops. Tokens are not known before the
answer, so a request reserves an estimate (prompt characters / 4 plus ``max_tokens``) and the
difference to the reported usage is settled afterwards.

Limits are per process: with N replicas of the classify stage, give each 1/N of the account's limit.
"""

from __future__ import annotations

import asyncio
import threading
import time

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

THROTTLED = Counter("handoff_model_throttled_seconds_total",
                    "Time calls waited for a model's rate budget (configured rate_limits).", ["model"])


class RateLimits(BaseModel):
    """Set them a little under the account's limits; none means the provider's 429s are the only brake."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(None, gt=0, description="Input and output tokens together.")


class _Bucket:
    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.at = time.monotonic()

    def take(self, amount: float) -> float:
        """Debit ``amount`` (at most a full bucket, so one large request cannot wait forever; a
        negative amount is a refund); the seconds until the debit is covered."""
        now = time.monotonic()
        refilled = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.level = min(self.capacity, refilled - min(amount, self.capacity))
        self.at = now
        return max(0.0, -self.level / self.rate)


class RateLimiter:
    """Both budgets of one model; ``acquire`` before each request, ``settle`` after it."""

    def __init__(self, limits: RateLimits, model: str):
        self._requests = _Bucket(limits.requests_per_minute) if limits.requests_per_minute else None
        self._tokens = _Bucket(limits.tokens_per_minute) if limits.tokens_per_minute else None
        self._lock = threading.Lock()
        self._throttled = THROTTLED.labels(model)

    async def acquire(self, tokens: int) -> None:
        """Wait until one more request of about ``tokens`` tokens fits both budgets."""
        with self._lock:
            wait = max(self._requests.take(1) if self._requests else 0.0,
                       self._tokens.take(tokens) if self._tokens else 0.0)
        if wait:
            self._throttled.inc(wait)
            await asyncio.sleep(wait)

    def settle(self, reserved: int, used: int) -> None:
        """Give back what the estimate over-reserved, or take what it missed."""
        if self._tokens:
            with self._lock:
                self._tokens.take(used - reserved)
