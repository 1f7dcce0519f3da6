"""Reading handoff topics outside any consumer group: ``handoff tail``, the demo summary, tests,
and the runtime restoring a stage's tables (``Stage.tables``).

``snapshot`` reads every partition from the beginning up to the high watermark seen when it
starts, with no consumer group (assign, never commit), so it never disturbs a stage's
offsets. Under ``read_committed`` the high watermark may sit past aborted transaction
markers; the read stops at the last stable offset instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from processors.avro.serde import AvroSerde, DecodeError
from processors.kafka.settings import ClientKind, KafkaSettings


READER_GROUP = "handoff-tail"
"""The group id of every reader: required by librdkafka, never joined or committed; on a secured cluster
its principal needs Describe on it (the consumer looks its coordinator up)."""


def reader(settings: KafkaSettings) -> Consumer:
    """A read-committed consumer that assigns and never commits: it never disturbs a stage's offsets."""
    return Consumer(settings.config(
        ClientKind.consumer,
        **{"group.id": READER_GROUP,
           "enable.auto.commit": False,
           "isolation.level": "read_committed",
           "enable.partition.eof": True}))


def snapshot(settings: KafkaSettings, topic: str, timeout: float = 30.0) -> list[Message]:
    """Every record of ``topic`` up to now, partition by partition in offset order."""
    consumer = reader(settings)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:
            raise KeyError(f"topic {topic}: {meta.error}")
        pending = set()
        assignment = []
        for p in meta.partitions:
            low, high = watermarks(consumer, TopicPartition(topic, p))
            if high > low:
                pending.add(p)
                assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        if not assignment:
            return []
        consumer.assign(assignment)
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise RuntimeError(f"reading {topic}: {msg.error()}")
            out.append(msg)
        return out
    finally:
        consumer.close()


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
        total = 0
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                low, high = watermarks(consumer, TopicPartition(topic, p))
                total += high - low
        return total
    finally:
        consumer.close()


def follow(settings: KafkaSettings, topic: str, from_beginning: bool = True) -> Iterator[Message]:
    """Every record of ``topic``, then new ones as they arrive, until interrupted."""
    consumer = reader(settings)
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    start = OFFSET_BEGINNING if from_beginning else -1  # -1: OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in meta.partitions])
    try:
        while True:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                yield msg
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
