"""Reading handoff topics outside any consumer group: ``handoff tail``, the demo summary, the report,
the review commands, replay's lookups, the control history, tests.

``snapshot`` reads every partition from the beginning up to the end offsets it finds when it
starts, with no consumer group (assign, never commit), so it never disturbs a stage's offsets.
Under ``read_committed`` the end is the last stable offset, not the high watermark: an open
transaction's records are not read, and the markers and aborted records before the end are
passed over. **A read is whole or it fails**: when its deadline passes before every partition's
position reaches its end, it raises :class:`IncompleteRead`, naming the topic and how far each
partition got, and never returns the part it has as if it were all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import BaseModel

from processors.avro.serde import AvroSerde, DecodeError
from processors.kafka.settings import ClientKind, KafkaSettings

READER_GROUP = "handoff-tail"
"""The group id of every reader: required by librdkafka, never joined or committed; on a secured cluster
its principal needs Describe on it (the consumer looks its coordinator up)."""

POLL_S = 0.5
BATCH = 10_000  # records a consume call may return at once


def reader(settings: KafkaSettings, committed: bool = True) -> Consumer:
    """A consumer that assigns and never commits: it never disturbs a stage's offsets. Read committed
    unless ``committed`` is False (what is in the log, open transactions included: their high watermarks)."""
    return Consumer(settings.config(
        ClientKind.consumer,
        **{"group.id": READER_GROUP,
           "enable.auto.commit": False,
           "isolation.level": "read_committed" if committed else "read_uncommitted",
           "enable.partition.eof": True,
           "auto.offset.reset": "earliest"}))  # a position retention deleted resumes at the oldest record left


class PartitionProgress(BaseModel):
    """How far a read got in one partition: ``reached`` is the reader's position (the next offset it
    would read), ``target`` the end offset it set out for."""

    partition: int
    reached: int
    target: int

    @property
    def complete(self) -> bool:
        return self.reached >= self.target


class ReadError(RuntimeError):
    """The broker answered a read with an error: the topic is missing, or a partition cannot be read."""


class IncompleteRead(TimeoutError):
    """A read that did not reach the end offsets it set out for before its deadline. What it read is
    part of the topic, never to be taken for the whole: a ledger read short lets duplicates pass, a
    report read short undercounts. The message names the topic and how far each partition got."""

    def __init__(self, topic: str, progress: list[PartitionProgress], records: int, timeout: float) -> None:
        self.topic, self.progress, self.records = topic, progress, records
        short = [p for p in progress if not p.complete]
        super().__init__(
            f"reading {topic} did not reach its end within {timeout:g}s: "
            + ", ".join(f"partition {p.partition} at offset {p.reached} of {p.target}" for p in short)
            + f" ({len(progress) - len(short)} of {len(progress)} partitions complete, {records} records read); "
              f"is the broker slow or unreachable? Try again, or with a longer timeout")


def snapshot(settings: KafkaSettings, topic: str, timeout: float = 30.0) -> list[Message]:
    """Every record of ``topic`` up to the end offsets found when the read starts, partition by
    partition in offset order; :class:`IncompleteRead` if they are not reached within ``timeout``."""
    return list(records(settings, topic, timeout))


def records(settings: KafkaSettings, topic: str, timeout: float = 30.0,
            starts: dict[int, int] | None = None) -> Iterator[Message]:
    """:func:`snapshot` one record at a time, for a caller that shows records as they come (``handoff
    tail``): it raises :class:`IncompleteRead` after the records it got, if the deadline passed first.
    ``starts`` reads only those partitions, each from its offset (a state store's restore).

    The end of each partition is judged by the reader's position, not by counting records: under
    ``read_committed`` a partition's last offsets may be transaction markers or aborted records the
    reader never returns. The position moves past those (librdkafka hands control records to the
    client and skips aborted batches), and ``enable.partition.eof`` reports the offset where the
    fetcher found the end. Records written after the read started are not part of it.
    """
    consumer = reader(settings)
    try:
        targets = _ends(consumer, topic)
        if starts is not None:
            targets = {p: (max(low, starts[p]), end) for p, (low, end) in targets.items()
                       if p in starts and end > starts[p]}
        if not targets:
            return
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING if starts is None else first)
                         for p, (first, _) in targets.items()])
        reached = {p: low for p, (low, _) in targets.items()}
        pending = set(targets)
        read = 0
        deadline = time.monotonic() + timeout
        while pending:
            batch = consumer.consume(BATCH, timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
            if not batch:  # control records at the end move the position without a record to show
                for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                    reached[tp.partition] = max(reached[tp.partition], tp.offset)
            for msg in batch:
                if time.monotonic() >= deadline:
                    break
                p = msg.partition()
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        raise ReadError(f"reading {topic}: {msg.error().str()}")
                    reached[p] = max(reached[p], msg.offset())
                elif p in pending:
                    reached[p] = msg.offset() + 1
                    if msg.offset() < targets[p][1]:
                        read += 1
                        yield msg
            pending = {p for p in pending if reached[p] < targets[p][1]}
            if pending and time.monotonic() >= deadline:
                progress = [PartitionProgress(partition=p, reached=reached[p], target=end)
                            for p, (_, end) in sorted(targets.items())]
                raise IncompleteRead(topic, progress, read, timeout)
    finally:
        consumer.close()


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    """The topic's partitions; :class:`ReadError` when the broker does not have it."""
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    if meta.error is not None:
        raise ReadError(f"topic {topic}: {meta.error.str()}")
    return sorted(meta.partitions)


def _ends(consumer: Consumer, topic: str) -> dict[int, tuple[int, int]]:
    """Per partition holding records, its (low watermark, end offset) now: the end is the high
    watermark, or the last stable offset under ``read_committed`` (librdkafka asks the broker with
    the consumer's isolation level)."""
    marks = {p: watermarks(consumer, TopicPartition(topic, p)) for p in _partitions(consumer, topic)}
    return {p: (low, high) for p, (low, high) in marks.items() if high > low}


def watermarks(consumer: Consumer, tp: TopicPartition, attempts: int = 20) -> tuple[int, int]:
    """Watermarks, retried while a just-created partition's leader is still being elected."""
    for attempt in range(attempts):
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)
        except KafkaException as exc:
            if not exc.args[0].retriable() and exc.args[0].code() != KafkaError.NOT_LEADER_FOR_PARTITION:
                raise
            time.sleep(0.1 * (attempt + 1))
    return consumer.get_watermark_offsets(tp, timeout=10)


def count(settings: KafkaSettings, *topics: str) -> int:
    """Records in ``topics`` by watermarks: cheap, exact for non-transactional topics, and an
    upper bound for transactional ones (commit markers take offsets too)."""
    consumer = reader(settings)
    try:
        return sum(high - low for topic in topics for low, high in _ends(consumer, topic).values())
    finally:
        consumer.close()


def follow(settings: KafkaSettings, topic: str, from_beginning: bool = True) -> Iterator[Message]:
    """Every record of ``topic``, then new ones as they arrive, until interrupted; :class:`ReadError`
    when the broker answers with an error (the topic deleted, say) rather than waiting silently."""
    consumer = reader(settings)
    try:
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in _partitions(consumer, topic)])
        while True:
            msg = consumer.poll(POLL_S)
            if msg is None:
                continue
            if not msg.error():
                yield msg
            elif msg.error().code() != KafkaError._PARTITION_EOF:
                raise ReadError(f"reading {topic}: {msg.error().str()}")
    finally:
        consumer.close()


def describe(msg: Message, serde: AvroSerde | None) -> dict:
    """One record as plain JSON-able data: where it sits, its key, headers and decoded value.

    A value that does not decode (a dead letter's original bytes, say) is shown as the error
    and the first bytes in hex, so ``tail`` never stops on a bad record.
    """
    out: dict = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                 "key": msg.key().decode(errors="replace") if msg.key() is not None else None}
    if msg.headers():
        out["headers"] = {k: v.decode(errors="replace") if v is not None else None for k, v in msg.headers()}
    try:
        if serde is None:
            raise DecodeError("the topic declares no value schema")
        out["value"] = serde.decode(msg.value())
    except DecodeError as exc:
        out["undecoded"] = {"error": str(exc), "bytes": len(msg.value() or b""), "head": (msg.value() or b"")[:32].hex()}
    return out
