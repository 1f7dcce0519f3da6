"""A partition-local state store: one RocksDB per input partition, backed by a compacted changelog.

This is the model of Kafka Streams and Quix Streams. A stateful stage keeps, per partition of its
source topic, the entries its records need (an event id seen, an action done, a join's state), on
local disk, and every change also as a record on a changelog topic, in the partition of the same
number. The changelog is the truth; the local files are a cache of it that survives restarts. The
protocol, in the order things happen:

**Write.** :meth:`Store.put` and :meth:`Store.delete` change the partition's *pending* layer in memory
(the stage's later reads see the change at once) and return the changelog record that makes it
durable: an :class:`Emit` to the changelog's partition of the same number, keyed by the entry's key, a
tombstone for a delete. The stage returns it with its other outputs, so it is released and committed
with them: in the same transaction under ``exactly_once``, acknowledged before the input offset is
committed under ``at_least_once``. When the broker acknowledges it, the runtime calls
:meth:`Store.delivered` with its offset and bytes.

**Checkpoint.** After each commit that succeeded the runtime calls :meth:`Store.checkpoint` with the
offset each partition's input is now committed to: every pending change acknowledged by then, and
written for an input record before that offset (or by a tick), goes into the partition's RocksDB in
one write batch, with the highest changelog offset written (the checkpoint). The local store is
therefore never ahead of the log, nor of the input: under exactly_once a change is acknowledged
inside the open transaction, and the checkpoint follows the commit that published it with its input
offsets; under at_least_once acknowledged is durable, but a record's other outputs may not be yet
(the effects ledger's entry acknowledged, the notification it guards not), so its change waits until
its offset is committed. A crash between two checkpoints leaves the files behind, never ahead.

**Restore.** On assignment the runtime calls :meth:`Store.assign`: each partition's RocksDB is opened
(created empty when this instance never had the partition) and the changelog partition read from the
checkpoint + 1 to its end, once no transaction is open on it (:mod:`.changelog`), all of it or an
error (:class:`~processors.kafka.read.IncompleteRead`), each record applied — under at_least_once
all but those written for input records at or past where the input resumes (the runtime says where,
from each record's ``handoff.source.offset`` header): those records run again and write their entries
anew, so an action whose notification was lost in a crash is not answered ``already_done``. A restart
reads only the tail written since its last checkpoint; a partition new to this instance reads its
changelog partition whole, and no instance reads a partition it does not own. Local files that cannot
be trusted are wiped and restored from the start: a checkpoint before the changelog's first offset (the
topic was truncated), at or past its end (the files belong to another cluster or to the topic before it
was recreated), or one older than ``delete.retention.ms`` (a tombstone written since may have been
compacted away, so a deleted entry would come back).

**Release.** On revoke (after the revoke's commit and checkpoint) and on loss (or a lost transaction)
the runtime calls :meth:`Store.release`: the pending layer is dropped unwritten and the files closed;
the next assignment restores what the log has beyond the checkpoint.

**Expiry.** A table may give each entry a due time (:meth:`Store.due_ms`, from the entry itself). An
index of (due time, key) in the same RocksDB lets :meth:`Store.due` return the entries whose time has
come, oldest first, without a scan; the stage's tick decides what happens to them (delete, which
tombstones the changelog, or update).

Threads: the runtime's calls come on the consumer thread; a stage that awaits reads and writes from the
event loop; a lock keeps the pending layer whole between them. Before :meth:`Store.open` (an offline
run, a test without Kafka) a store keeps everything in its pending layer, in memory.

Files: ``<directory>/<partition>/``, raw RocksDB keys: ``v<key>`` → 8-byte due time + the changelog
value's bytes (as produced, so a restore stores what it reads without re-encoding); ``d<due><key>`` →
empty (the expiry index); ``m`` → the checkpoint offset and when it was written.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from confluent_kafka.admin import ConfigResource, ResourceType
from pydantic import BaseModel
from rocksdict import Options, Rdict, WriteBatch

from processors.avro.serde import AvroSerde
from processors.clock import now_ms
from processors.kafka.read import records
from processors.runtime.dead_letter import Header
from processors.runtime.stage import Emit, Table, TableContext
from processors.state.changelog import settled

log = logging.getLogger("handoff.state")

Entry = TypeVar("Entry", bound=BaseModel)

NEVER = (1 << 63) - 1  # the due time of an entry that never expires
_DUE = struct.Struct(">q")
_CHECKPOINT = struct.Struct(">qq")  # changelog offset, written at (ms)
_META = b"m"
DELETE_RETENTION_MS = 24 * 3600 * 1000  # Kafka's default delete.retention.ms, when the topic's cannot be read
RESTORE_BATCH = 10_000  # distinct keys per write batch while restoring
REFRESH_MS = 3600 * 1000  # an unchanged checkpoint is rewritten this often, so idle state never looks stale


class StoreUnusable(RuntimeError):
    """The store's changelog cannot hold its state (too few partitions, missing): the stage does not start."""


@dataclass
class _Change(Generic[Entry]):
    """One pending change: the entry (None: deleted), and once acknowledged, where and what the log has,
    and which input record wrote it (None: a tick)."""

    entry: Entry | None
    offset: int | None = None
    value: bytes | None = None
    source: int | None = None


@dataclass
class _Partition(Generic[Entry]):
    db: Rdict | None
    pending: dict[str, list[_Change[Entry]]] = field(default_factory=dict)
    checkpoint: int = -1
    written_ms: int = 0


class Store(Table, Generic[Entry]):
    """Entries of type ``model`` by string key, per partition of ``source``, changelogged to ``topic``
    (both declared names). Subclasses override :meth:`due_ms` to make entries expire."""

    restore_timeout_s = 300.0

    def __init__(self, topic: str, source: str, model: type[Entry]):
        self.topic = topic
        self.source = source
        self.model = model
        self._context: TableContext | None = None
        self._serde: AvroSerde | None = None
        self._partitions: dict[int, _Partition[Entry]] = {}
        self._lock = threading.Lock()
        self.restored = 0
        """Changelog records read by restores since the store was opened (tests and the bench count them)."""

    # ---- the stage's side --------------------------------------------------------------------

    def due_ms(self, entry: Entry) -> int:
        """When ``entry`` is due for the stage's attention (``NEVER`` by default)."""
        return NEVER

    def get(self, partition: int, key: str) -> Entry | None:
        with self._lock:
            part = self._partition(partition)
            changes = part.pending.get(key)
            if changes:
                return changes[-1].entry
            raw = part.db.get(b"v" + key.encode()) if part.db is not None else None
        return None if raw is None else self._decode(raw[_DUE.size:])

    def put(self, partition: int, key: str, entry: Entry) -> Emit:
        """Remember ``entry`` now; return the changelog record that makes it durable (see Write)."""
        self._change(partition, key, entry)
        return Emit(self.topic, entry, key=key, partition=partition)

    def delete(self, partition: int, key: str) -> Emit:
        """Forget ``key`` now; return the changelog tombstone that makes it durable."""
        self._change(partition, key, None)
        return Emit(self.topic, None, key=key, partition=partition)

    def due(self, partition: int, now: int, limit: int = 1000) -> list[tuple[str, Entry]]:
        """Up to ``limit`` entries of ``partition`` due by ``now``, oldest first (see Expiry)."""
        with self._lock:
            part = self._partitions.get(partition)
            if part is None:
                return []
            found = [(at, key, entry) for key, changes in part.pending.items()
                     if (entry := changes[-1].entry) is not None and (at := self.due_ms(entry)) <= now]
            if part.db is not None:
                for raw_key in part.db.keys(from_key=b"d"):
                    if raw_key[:1] != b"d" or len(found) >= 2 * limit:
                        break
                    (at,) = _DUE.unpack_from(raw_key, 1)
                    if at > now:
                        break
                    key = raw_key[1 + _DUE.size:]
                    raw = None if key.decode() in part.pending else part.db.get(b"v" + key)
                    if raw is not None and raw[:_DUE.size] == raw_key[1:1 + _DUE.size]:
                        found.append((at, key.decode(), self._decode(raw[_DUE.size:])))
        found.sort(key=lambda due: due[0])
        return [(key, entry) for _, key, entry in found[:limit]]

    def expire(self, partitions: list[int], now: int) -> list[Emit]:
        """Delete every entry of ``partitions`` due by ``now``: the tombstones to return from a tick."""
        return [self.delete(p, key) for p in partitions for key, _ in self.due(p, now)]

    def _change(self, partition: int, key: str, entry: Entry | None) -> None:
        with self._lock:
            self._partition(partition).pending.setdefault(key, []).append(_Change(entry))

    def _partition(self, partition: int) -> _Partition[Entry]:
        part = self._partitions.get(partition)
        if part is None:
            if self._context is not None:  # run by a runtime: only assigned partitions exist
                raise KeyError(f"{self.topic}: partition {partition} is not assigned to this instance")
            part = self._partitions[partition] = _Partition(db=None)
        return part

    def _decode(self, value: bytes) -> Entry:
        return self.model.model_validate(self._serde.decode(value))

    # ---- the runtime's side (see the module docstring) ----------------------------------------

    def open(self, context: TableContext) -> None:
        """Check the changelog can hold every partition of the source (:class:`StoreUnusable`), and read
        how long its tombstones live."""
        self._context = context
        self._serde = context.changelog.serde(context.settings)
        topics = context.admin.list_topics(timeout=10).topics
        counts = {spec.name: len(topics[spec.name].partitions) if spec.name in topics else 0
                  for spec in (context.changelog, context.source)}
        if counts[context.changelog.name] < counts[context.source.name]:
            raise StoreUnusable(f"changelog {context.changelog.name} has {counts[context.changelog.name]} partitions, "
                             f"fewer than its source {context.source.name} ({counts[context.source.name]}): declare "
                             f"at least as many for it in topics/ and run `handoff topics apply`")
        self._delete_retention_ms = _delete_retention_ms(context)
        context.directory.mkdir(parents=True, exist_ok=True)

    def assign(self, partitions: list[int], resumes: dict[int, int] | None = None) -> int:
        """Open each partition's files and read the changelog from its checkpoint to the end (Restore)."""
        context = self._context
        name = context.changelog.name
        deadline = time.monotonic() + self.restore_timeout_s
        marks = settled(context.settings, name, partitions, self.restore_timeout_s)
        starts = {}
        with self._lock:
            for p in partitions:
                part = self._open(p, *marks[p])
                self._partitions[p] = part
                starts[p] = part.checkpoint + 1
        read = 0
        latest: dict[int, dict[bytes, bytes | None]] = {}  # per partition: the last value read of each key
        last: dict[int, int] = {}
        for msg in records(context.settings, name, max(0.0, deadline - time.monotonic()), starts=starts):
            p = msg.partition()
            values = latest.setdefault(p, {})
            last[p] = msg.offset()
            read += 1
            if resumes is None or _source(msg) < resumes.get(p, 0):
                values[msg.key()] = msg.value()
            if len(values) >= RESTORE_BATCH:
                self._restored(p, latest.pop(p), last[p])
        for p, values in latest.items():
            self._restored(p, values, last[p])
        self.restored += read
        return read

    def _restored(self, partition: int, values: dict[bytes, bytes | None], offset: int) -> None:
        part = self._partitions[partition]
        batch = WriteBatch(raw_mode=True)
        for key, value in values.items():
            self._apply(part.db, batch, key, value)
        self._write(partition, batch, offset)

    def delivered(self, partition: int, key: bytes, offset: int, value: bytes | None, source: int | None) -> None:
        with self._lock:
            part = self._partitions.get(partition)
            changes = part.pending.get(key.decode()) if part is not None else None
            if changes:  # changes of one key are produced, and acknowledged, in the order they were made
                change = next((c for c in changes if c.offset is None), None)
                if change is not None:
                    change.offset, change.value, change.source = offset, value, source

    def checkpoint(self, committed: dict[int, int | None]) -> None:
        """Write the pending changes of each partition that are acknowledged and whose input record is
        before its committed offset (or that a tick wrote), in one batch per partition (Checkpoint)."""
        with self._lock:
            for p, upto in committed.items():
                part = self._partitions.get(p)
                if part is None or part.db is None:
                    continue
                batch, last, held = WriteBatch(raw_mode=True), part.checkpoint, None
                for key in list(part.pending):
                    changes = part.pending[key]
                    done = list(itertools.takewhile(lambda c: c.offset is not None and (
                        c.source is None or (upto is not None and c.source < upto)), changes))
                    rest = changes[len(done):]
                    if rest and rest[0].offset is not None:  # in the log, not yet ours for good
                        held = rest[0].offset if held is None else min(held, rest[0].offset)
                    if not done:
                        continue
                    self._apply(part.db, batch, key.encode(), done[-1].value)
                    last = max(last, done[-1].offset)
                    if rest:
                        part.pending[key] = rest
                    else:
                        del part.pending[key]
                if held is not None:  # a restore must read a held change again: the checkpoint stays before it
                    last = max(part.checkpoint, min(last, held - 1))
                if last != part.checkpoint or now_ms() - part.written_ms > REFRESH_MS:
                    self._write(p, batch, last)

    def release(self, partitions: list[int]) -> None:
        with self._lock:
            for p in partitions:
                part = self._partitions.pop(p, None)
                if part is not None and part.db is not None:
                    part.db.close()

    def close(self) -> None:
        self.release(list(self._partitions))

    # ---- files ---------------------------------------------------------------------------------

    def _open(self, partition: int, log_start: int, log_end: int) -> _Partition[Entry]:
        """The partition's files, or fresh ones when they cannot be trusted (see Restore)."""
        path = self._context.directory / str(partition)
        db = Rdict(str(path), Options(raw_mode=True))
        meta = db.get(_META)
        if meta is None:
            return _Partition(db=db)
        checkpoint, written_ms = _CHECKPOINT.unpack(meta)
        stale = now_ms() - written_ms > self._delete_retention_ms
        elsewhere = checkpoint >= log_end  # the log never reached it: another cluster, or the topic recreated
        if checkpoint + 1 < log_start or stale or elsewhere:
            log.warning("%s[%d]: local state %s; restoring it from the start of the changelog", self.topic, partition,
                        "older than delete.retention.ms" if stale else
                        "past the changelog's end (another incarnation of the topic)" if elsewhere else
                        "behind the changelog's start")
            db.close()
            shutil.rmtree(path)
            return _Partition(db=Rdict(str(path), Options(raw_mode=True)))
        return _Partition(db=db, checkpoint=checkpoint, written_ms=written_ms)

    def _apply(self, db: Rdict, batch: WriteBatch, key: bytes, value: bytes | None) -> None:
        """Set ``key`` to the changelog value ``value`` (None: delete) in ``batch``, keeping the due index."""
        old = db.get(b"v" + key)
        if old is not None:
            batch.delete(b"d" + old[:_DUE.size] + key)
        if value is None:
            batch.delete(b"v" + key)
            return
        due = self.due_ms(self._decode(value))
        packed = _DUE.pack(due)
        batch.put(b"v" + key, packed + value)
        if due != NEVER:
            batch.put(b"d" + packed + key, b"")

    def _write(self, partition: int, batch: WriteBatch, offset: int) -> None:
        part = self._partitions[partition]
        part.written_ms = now_ms()
        batch.put(_META, _CHECKPOINT.pack(offset, part.written_ms))
        part.db.write(batch)
        part.checkpoint = offset


def _source(msg) -> int:
    """The offset of the input record that wrote changelog record ``msg`` (-1: a tick's, or older)."""
    for name, value in msg.headers() or ():
        if name == Header.source_offset:
            return int(value)
    return -1


def _delete_retention_ms(context: TableContext) -> int:
    """The changelog's ``delete.retention.ms``: how long a tombstone outlives compaction."""
    resource = ConfigResource(ResourceType.TOPIC, context.changelog.name)
    try:
        configs = context.admin.describe_configs([resource])[resource].result(timeout=10)
        return int(configs["delete.retention.ms"].value)
    except Exception as exc:  # noqa: BLE001  an unreadable config must not stop a stage: Kafka's default
        log.warning("%s: delete.retention.ms unreadable (%s); assuming Kafka's default", context.changelog.name, exc)
        return DELETE_RETENTION_MS

