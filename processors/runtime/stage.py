"""What a stage is: a small class that turns one input record into output records.

A stage never touches a consumer, a producer or an offset; :mod:`processors.runtime.runtime` owns
all of that. A stage receives a decoded :class:`Record`, returns the :class:`Emit` list its
input produced, and raises :class:`DeadLetter` when the input must leave the pipeline. Any
other exception is treated the same way (a poison record), so one bad record never stops a
partition. A stage that keeps time-bound state (the outcome joiner's wait limit) also gets a
clock: :meth:`Stage.tick`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pydantic import BaseModel

from processors.records import Original


@dataclass(frozen=True)
class Record:
    """One decoded input record and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: dict
    timestamp_ms: int
    headers: dict[str, bytes] = field(default_factory=dict)
    raw: bytes = b""
    """The value's bytes as consumed: a stage that may dead-letter the record later keeps them."""

    def original(self) -> Original:
        return Original(topic=self.topic, partition=self.partition, offset=self.offset, timestamp_ms=self.timestamp_ms,
                        key=self.key, value=self.raw, headers=self.headers)


@dataclass(frozen=True)
class Emit:
    """One output record. ``topic`` is the declared name (``support_ticket.review``); the
    runtime adds the namespace and encodes ``value`` with that topic's contract."""

    topic: str
    value: BaseModel | dict
    key: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class DeadLetter(Exception):
    """Send the input record to the dead letters. ``reason`` is a short stable label.

    Raised by ``process`` it dead-letters the record being processed; returned by ``tick`` it
    dead-letters ``original``, a record the stage consumed earlier and kept.
    """

    def __init__(self, reason: str, message: str, attempts: int = 1, first_failure_ms: int | None = None,
                 original: Original | None = None):
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts
        self.first_failure_ms = first_failure_ms or now_ms()
        self.original = original


def now_ms() -> int:
    return int(time.time() * 1000)


class Stage(ABC):
    """Subclasses set ``name`` and ``inputs`` (declared topic names) and implement ``process``.

    ``process`` runs on the runtime's event loop, many records at once but never two of one
    key at once; it must not block the loop for long (CPU-bound work of a few ms is fine).
    """

    name: str
    inputs: list[str]
    inline: bool = False
    """True when ``process`` never awaits (pure CPU work of microseconds): the runtime then runs
    it on the consumer thread in offset order, which is much cheaper than the event loop hop."""

    async def start(self) -> None:
        """Open clients (HTTP pools, model handles) once, on the runtime's event loop."""

    async def close(self) -> None:
        """Release what ``start`` opened."""

    def on_assign(self, partitions: list[tuple[str, int]]) -> None:
        """Called on the consumer thread when partitions arrive, before any of their records."""

    @abstractmethod
    async def process(self, record: Record) -> list[Emit]: ...

    def tick(self, now_ms: int, partitions: list[tuple[str, int]]) -> list[Emit | DeadLetter]:
        """Called about once a second on the consumer thread (like an inline ``process``), with the
        partitions this instance owns now: for what must happen when no record arrives (expiry). Its
        outputs are produced and committed like a record's; it must be quick and must act only on
        state of ``partitions``."""
        return []
