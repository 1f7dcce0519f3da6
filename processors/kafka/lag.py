"""Consumer-group lag: how far a stage's group is behind its input, for drain checks.

:func:`processors.pipeline.wait_until_drained` asks every second until every stage's group has
committed all its input; the answer is the committed offsets against the high watermarks, both
read by consumers that never join a group.

The committed offsets come from a consumer of the group's id that never subscribes (an OffsetFetch,
the request every consumer sends on assignment), not from the admin client: the admin client's
coordinator requests (``list_consumer_group_offsets``, ``describe_consumer_groups``) crash the whole
process when a broker restarts under them — a segfault, or an assertion in librdkafka's
``rd_kafka_enq_once`` — reproduced in most restarts. While the coordinator does not answer (a broker
restarting, a group still loading) the lag is unknown (``None``), never a guess.
"""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException, TopicPartition

from processors.kafka.read import reader, watermarks
from processors.kafka.settings import ClientKind, KafkaSettings

TIMEOUT_S = 10


class LagProbe:
    """How many records of some topics a consumer group has not committed yet, asked again and
    again (a drain check asks every second) over one reader and one offset reader per group, not
    a new consumer per question."""

    def __init__(self, settings: KafkaSettings):
        self.settings = settings
        self.reader = reader(settings)
        self._offsets: dict[str, Consumer] = {}
        self._partitions: dict[str, list[int]] = {}

    def lag(self, group: str, topics: list[str]) -> int | None:
        """Uncommitted records of ``topics`` for consumer ``group`` (its full name); None while its
        coordinator does not answer (a broker restarting)."""
        try:
            partitions = [TopicPartition(topic, p) for topic in topics for p in self._partitions_of(topic)]
            committed = self._offsets_of(group).committed(partitions, timeout=TIMEOUT_S)
            total = 0
            for tp in committed:
                low, high = watermarks(self.reader, TopicPartition(tp.topic, tp.partition))
                total += high - (tp.offset if tp.offset >= 0 else low)
            return total
        except KafkaException:
            return None

    def close(self) -> None:
        for consumer in [self.reader, *self._offsets.values()]:
            consumer.close()

    def _offsets_of(self, group: str) -> Consumer:
        """A consumer of ``group``'s id that only reads its committed offsets: it never subscribes,
        so it never joins the group or disturbs its members."""
        if group not in self._offsets:
            self._offsets[group] = Consumer(self.settings.config(ClientKind.consumer, **{
                "group.id": group, "enable.auto.commit": False}))
        return self._offsets[group]

    def _partitions_of(self, topic: str) -> list[int]:
        if topic not in self._partitions:
            self._partitions[topic] = list(self.reader.list_topics(topic, timeout=TIMEOUT_S).topics[topic].partitions)
        return self._partitions[topic]
