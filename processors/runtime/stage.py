"""What a stage is: the contract between a stage and the runtime that runs it.

A stage turns one input record into output records. It never touches a consumer, a producer,
an offset or a topic; :mod:`processors.runtime.runtime` owns all of that, and a stage built
without Kafka (the offline runner, :mod:`processors.offline.runner`) behaves the same. The
runtime calls a stage's methods in this order, on two threads:

1. :meth:`Stage.start` — once, on the runtime's event loop, before anything is consumed.
2. :meth:`Table.assign` of each of :meth:`Stage.tables` — on the consumer thread, each time
   partitions are assigned, before any record of theirs (the stage's state, restored by the table
   from its changelog: :mod:`processors.state.store`).
3. :meth:`Stage.process` — per record: on the event loop, or on the consumer thread for an
   ``inline`` stage. It returns :class:`Emit` outputs or raises :class:`DeadLetter`; any other
   exception is treated the same way (a poison record), so one bad record never stops a partition.
4. :meth:`Stage.tick` — about once a second, on the consumer thread.
5. :meth:`Stage.close` — once, on the event loop, after the last record.

Every call of an ``inline`` stage (2–4) runs on the consumer thread, one after another, so its
state needs no lock; a stage that awaits shares state between the event loop and the consumer
thread's calls (2, 4) and must keep it safe for that.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient
from pydantic import BaseModel

from processors.clock import now_ms
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import TopicSpec
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
    value: BaseModel | dict | None
    """None: a tombstone (a state store's changelog deletes the key)."""
    key: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    partition: int | None = None
    """The partition to write to; None: the producer's partitioner picks it by key. A changelog record
    goes to the partition of its store (the input partition's number)."""


class DeadLetter(Exception):
    """Send the input record to the dead letters. ``reason`` is a short stable label.

    Raised by ``process`` it dead-letters the record being processed; returned by ``tick`` it
    dead-letters ``original``, a record the stage consumed earlier and kept.
    """

    def __init__(self, reason: str, message: str, attempts: int = 1, first_failure_ms: int | None = None,
                 original: Original | None = None, keep: list[Emit] | None = None):
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts
        self.first_failure_ms = first_failure_ms or now_ms()
        self.original = original
        self.keep = keep or []
        """Outputs that stand although the record is dead-lettered (a state change the record made), produced
        with its dead letter."""


@dataclass(frozen=True)
class TableContext:
    """What the runtime hands a table when it starts: the topics, the client settings, and the folder
    for its files (one per process and table: two instances never share one)."""

    changelog: TopicSpec
    source: TopicSpec
    settings: KafkaSettings
    admin: AdminClient
    """The runtime's admin client, alive as long as the runtime runs."""
    directory: Path


class Table(ABC):
    """State a stage keeps per input partition, declared by the stage (:meth:`Stage.tables`) and driven
    by the runtime, which calls, on the consumer thread: :meth:`open` once before the consumer
    subscribes; :meth:`assign` for each assignment, before any record of those partitions;
    :meth:`delivered` as the broker acknowledges each changelog record; :meth:`checkpoint` after each
    commit that succeeded; :meth:`release` when partitions are revoked or lost (after the revoke's
    checkpoint); :meth:`close` last. The stage reads and writes it from ``process`` and ``tick``.
    ``topic`` is the declared changelog, ``source`` the declared input whose partitions it follows."""

    topic: str
    source: str

    @abstractmethod
    def open(self, context: TableContext) -> None:
        """Where the table's files and changelog are. Before it, the table lives in memory only (offline runs)."""

    @abstractmethod
    def assign(self, partitions: list[int], resumes: dict[int, int] | None = None) -> int:
        """Open and restore ``partitions`` from the changelog (what the local files lack, up to the end);
        return how many changelog records were read. ``resumes`` (under at_least_once) is where each
        partition's input resumes: an entry written for an input record at or past it is skipped, since
        that record runs again (its other outputs may never have been written). What it raises stops
        the stage (a stage must not run on state it could not read)."""

    @abstractmethod
    def delivered(self, partition: int, key: bytes, offset: int, value: bytes | None, source: int | None) -> None:
        """The broker acknowledged the changelog record ``key`` of ``partition`` at ``offset``, written
        for the input record at offset ``source`` of the same partition (None: by a tick)."""

    @abstractmethod
    def checkpoint(self, committed: dict[int, int | None]) -> None:
        """A commit succeeded, leaving each partition's input committed up to the offset given (None:
        never): what was acknowledged for the records before it (and by ticks) is part of the log for
        good; what belongs to later records waits, as those may still run again."""

    @abstractmethod
    def release(self, partitions: list[int]) -> None:
        """Forget ``partitions`` (revoked or lost): drop what was not checkpointed, close their files."""

    def close(self) -> None:
        """The runtime stops: release every partition still open."""


class Stage(ABC):
    """Subclasses set ``name`` and ``inputs`` (declared topic names) and implement ``process``."""

    name: str
    inputs: list[str]
    inline: bool = False
    """True when ``process`` never awaits (pure CPU work of microseconds): the runtime then runs
    it on the consumer thread in offset order, which is much cheaper than the event loop hop."""

    decodes: bool = False
    """True when the stage decodes its records itself: the runtime then hands each over undecoded
    (``Record.value`` empty, ``Record.raw`` its bytes), topics without a value schema included, and a
    record that does not decode is the stage's to handle (the views stage names it and goes on)."""

    def positions(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Where newly assigned ``partitions`` resume, when the stage keeps its offsets with its own
        rows (a sink): called on the consumer thread on every assignment, after the tables; the
        runtime seeks each partition named to the offset given, the others resume from the group's
        committed offsets."""
        return {}

    async def start(self) -> None:
        """Open clients (HTTP pools, model handles). Called once on the runtime's event loop, before
        the consumer subscribes; bounded to 120 s. What it raises stops the runtime before any record."""

    async def close(self) -> None:
        """Release what ``start`` opened. Called once on the event loop after the last record was
        committed, also after a failure; bounded to 30 s."""

    def outputs(self) -> list[str]:
        """The declared topics ``process`` and ``tick`` may write, besides the tables' changelogs and the
        dead letters (what its principal must be allowed: ``handoff acls``). None by default."""
        return []

    def tables(self) -> list[Table]:
        """The state the runtime opens, restores and checkpoints (see :class:`Table`). The same objects
        every time."""
        return []

    @abstractmethod
    async def process(self, record: Record) -> list[Emit]:
        """The outputs of one input record. Runs on the runtime's event loop, many records at once but
        never two of one key at once; it must not block the loop for long (CPU-bound work of a few ms
        is fine). An ``inline`` stage's runs on the consumer thread in offset order. Raises
        :class:`DeadLetter` to dead-letter the record; any other exception dead-letters it as
        ``stage_error`` (logged with its traceback)."""

    def tick(self, now_ms: int, partitions: list[tuple[str, int]]) -> list[Emit | DeadLetter]:
        """Called about once a second on the consumer thread (like an inline ``process``), with the
        partitions this instance owns now: for what must happen when no record arrives (expiry). Its
        outputs are produced and committed like a record's; it must be quick and must act only on
        state of ``partitions``. A returned :class:`DeadLetter` must carry ``original``; what it
        raises stops the runtime (a bug in the stage, not a bad record)."""
        return []
