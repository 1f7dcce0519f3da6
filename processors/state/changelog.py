"""Before a store reads its changelog partitions: waiting until no transaction is open on them.

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

from confluent_kafka import TopicPartition

from processors.kafka.read import IncompleteRead, PartitionProgress, reader, watermarks
from processors.kafka.settings import KafkaSettings

SETTLE_POLL_S = 0.2


def settled(settings: KafkaSettings, topic: str, partitions: list[int], timeout_s: float) -> dict[int, tuple[int, int]]:
    """Wait until no transaction is open on ``partitions`` (see the module docstring); their watermarks
    (where the changelog starts and ends now). :class:`IncompleteRead` if one is still open after ``timeout_s``."""
    committed, everything = reader(settings), reader(settings, committed=False)
    deadline = time.monotonic() + timeout_s
    try:
        lows, open_ = {}, list(partitions)
        while open_:
            marks = {p: watermarks(committed, TopicPartition(topic, p)) for p in open_}
            high = {p: watermarks(everything, TopicPartition(topic, p))[1] for p in open_}
            lows |= marks
            open_ = [p for p in open_ if marks[p][1] < high[p]]
            if open_ and time.monotonic() >= deadline:
                raise IncompleteRead(topic, [PartitionProgress(partition=p, reached=marks[p][1], target=high[p])
                                             for p in open_], 0, timeout_s)
            if open_:
                time.sleep(SETTLE_POLL_S)
        return lows
    finally:
        committed.close()
        everything.close()
