"""Reading changelog partitions from an offset to their end, all at once, and never partly.

A store restores what its local files lack: each partition from the offset after its checkpoint to
the end the partition has now (the last stable offset: read committed, so an open transaction's
records wait and aborted ones are skipped). The end is the high watermark found at the start, judged
by the consumer's position (or the end-of-partition event's offset), not by the records seen:
transaction markers and aborted records take offsets no consumer receives. Behind an open
transaction the read waits until it is committed or aborted: by the producer that fences it (the same
instance restarted) or by the broker at the transaction timeout (a crashed previous owner). A read
that does not reach every end within its deadline raises :class:`RestoreIncomplete`, naming the
topic and how far each partition got: a stage never runs on part of its state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import KafkaError, Message, TopicPartition

from processors.kafka.read import reader, watermarks
from processors.kafka.settings import KafkaSettings

POLL_BATCH = 10_000
END_CHECK_S = 0.2  # how often the positions are compared with the ends while records flow


class RestoreIncomplete(RuntimeError):
    """A changelog read that did not reach the end it set out for."""


def ends(settings: KafkaSettings, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
    """(low, high) watermarks of each partition."""
    consumer = reader(settings)
    try:
        return {p: watermarks(consumer, TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close()


def read_to_end(settings: KafkaSettings, topic: str, starts: dict[int, int],
                timeout_s: float = 300.0) -> Iterator[Message]:
    """Every record of ``topic``'s partitions from ``starts[p]`` to the partition's end, in offset order
    per partition (partitions interleaved). Raises :class:`RestoreIncomplete` past ``timeout_s``."""
    consumer = reader(settings)
    try:
        targets = {}
        for p, start in starts.items():
            low, high = watermarks(consumer, TopicPartition(topic, p))
            if high > max(start, low):
                targets[p] = high
        if not targets:
            return
        consumer.assign([TopicPartition(topic, p, max(starts[p], 0)) for p in targets])
        deadline = time.monotonic() + timeout_s
        checked = 0.0
        while targets:
            for msg in consumer.consume(POLL_BATCH, timeout=0.2):
                error = msg.error()
                if error is None:
                    yield msg
                elif error.code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= targets.get(msg.partition(), 0):
                        targets.pop(msg.partition(), None)
                else:
                    raise RestoreIncomplete(f"reading {topic}[{msg.partition()}]: {error}")
            now = time.monotonic()
            if now - checked >= END_CHECK_S or now >= deadline:
                checked = now
                for tp in consumer.position([TopicPartition(topic, p) for p in targets]):
                    if tp.offset >= targets[tp.partition]:
                        del targets[tp.partition]
                if targets and now >= deadline:
                    got = {tp.partition: tp.offset for tp in consumer.position(
                        [TopicPartition(topic, p) for p in targets])}
                    raise RestoreIncomplete(
                        f"restoring from {topic}: partitions {sorted(targets)} stopped at offsets "
                        f"{[got[p] for p in sorted(targets)]} of {[targets[p] for p in sorted(targets)]} "
                        f"after {timeout_s:.0f}s; the stage did not start on part of its state")
    finally:
        consumer.close()

