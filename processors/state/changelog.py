"""Reading changelog partitions from an offset to their end, once no transaction is open on them.

A store restores what its local files lack: each partition from the offset after its checkpoint to
its end (:func:`processors.kafka.read.records`: all of it, or :class:`IncompleteRead`, never a part
taken for the whole). Read committed, that end is the last stable offset: records of a transaction
still open are not there yet. A transaction open on a changelog partition at assignment can only be
a previous owner's that crashed mid-way (an owner that lost the partition in a rebalance committed
first); if it was committing, its changes belong to the state, and its input offsets will say so.
So the restore first waits until every partition's last stable offset reaches its high watermark:
the broker aborts a crashed producer's transaction at its timeout (or when a producer with the same
transactional id fences it, the same instance restarted), and completes one that was committing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import Consumer, Message, TopicPartition

from processors.kafka.read import IncompleteRead, PartitionProgress, reader, records, watermarks
from processors.kafka.settings import KafkaSettings

SETTLE_POLL_S = 0.2


def ends(settings: KafkaSettings, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
    """(low watermark, last stable offset) of each partition."""
    consumer = reader(settings)
    try:
        return {p: watermarks(consumer, TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close()


def read_to_end(settings: KafkaSettings, topic: str, starts: dict[int, int], timeout_s: float) -> Iterator[Message]:
    """Every record of ``topic``'s partitions from ``starts[p]`` to the end, once no transaction is open
    on them; :class:`IncompleteRead` when either does not happen within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    _settle(settings, topic, list(starts), deadline, timeout_s)
    yield from records(settings, topic, max(0.0, deadline - time.monotonic()), starts=starts)


def _settle(settings: KafkaSettings, topic: str, partitions: list[int], deadline: float, timeout_s: float) -> None:
    """Wait until each partition's last stable offset is its high watermark (see the module docstring)."""
    committed, everything = reader(settings), Consumer({
        "bootstrap.servers": settings.bootstrap_servers, "group.id": "handoff-tail",
        "isolation.level": "read_uncommitted", "enable.auto.commit": False})
    try:
        open_ = list(partitions)
        while open_:
            stable = {p: watermarks(committed, TopicPartition(topic, p))[1] for p in open_}
            high = {p: watermarks(everything, TopicPartition(topic, p))[1] for p in open_}
            open_ = [p for p in open_ if stable[p] < high[p]]
            if open_ and time.monotonic() >= deadline:
                raise IncompleteRead(topic, [PartitionProgress(partition=p, reached=stable[p], target=high[p])
                                             for p in open_], 0, timeout_s)
            if open_:
                time.sleep(SETTLE_POLL_S)
    finally:
        committed.close()
        everything.close()
