"""A call's time budget, shared by the retries of one model and the models of a chain.

Only time spent trying counts: waiting for rate budget stops the clock, because that wait is
the deliberate throttle (see ``limits``), and a deadline that ran out while queueing would
turn a busy minute into dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Deadline:
    """``seconds`` from now, and never later than ``within`` (the enclosing call's deadline)."""

    def __init__(self, seconds: float, within: Deadline | None = None):
        self._end = time.monotonic() + seconds
        self._within = within

    def remaining(self) -> float:
        own = self._end - time.monotonic()
        return own if self._within is None else min(own, self._within.remaining())

    async def paused(self, waiting: Awaitable[T]) -> T:
        """Await ``waiting`` with this clock (and the enclosing ones) stopped."""
        started = time.monotonic()
        try:
            return await waiting
        finally:
            self._extend(time.monotonic() - started)

    def _extend(self, seconds: float) -> None:
        self._end += seconds
        if self._within is not None:
            self._within._extend(seconds)
