"""What a stage is: a small class that turns one input record into output records.

A stage never touches a consumer, a producer or an offset; :mod:`processors.runtime` owns
all of that. A stage receives a decoded :class:`Record`, returns the :class:`Emit` list its
input produced, and raises :class:`DeadLetter` when the input must leave the pipeline. Any
other exception is treated the same way (a poison record), so one bad record never stops a
partition.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pydantic import BaseModel


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


@dataclass(frozen=True)
class Emit:
    """One output record. ``topic`` is the declared name (``support_ticket.review``); the
    runtime adds the namespace and encodes ``value`` with that topic's contract."""

    topic: str
    value: BaseModel | dict
    key: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class DeadLetter(Exception):
    """Send the input record to the dead letters. ``reason`` is a short stable label."""

    def __init__(self, reason: str, message: str, attempts: int = 1, first_failure_ms: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts
        self.first_failure_ms = first_failure_ms or now_ms()


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
