"""Consumer-group lag: how far a stage's group is behind its input, for drain checks.

:func:`processors.pipeline.wait_until_drained` asks every second until every stage's group has
committed all its input; the answer is the committed offsets (from the admin client) against
the high watermarks (from a reader that never joins the group).
"""

from __future__ import annotations

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from processors.kafka.read import reader, watermarks
from processors.kafka.settings import KafkaSettings


class LagProbe:
    """How many records of some topics a consumer group has not committed yet, asked again and
    again (a drain check asks every second) over one admin client and one reader, not a new
    consumer per question."""

    def __init__(self, settings: KafkaSettings):
        self.admin = settings.admin()
        self.reader = reader(settings)
        self._partitions: dict[str, list[int]] = {}

    def lag(self, group: str, topics: list[str]) -> int:
        """Uncommitted records of ``topics`` for consumer ``group`` (its full name)."""
        partitions = [TopicPartition(topic, p) for topic in topics for p in self._partitions_of(topic)]
        request = ConsumerGroupTopicPartitions(group, partitions)
        committed = self.admin.list_consumer_group_offsets([request])[group].result(timeout=10).topic_partitions
        total = 0
        for tp in committed:
            low, high = watermarks(self.reader, TopicPartition(tp.topic, tp.partition))
            total += high - (tp.offset if tp.offset >= 0 else low)
        return total

    def close(self) -> None:
        self.reader.close()

    def _partitions_of(self, topic: str) -> list[int]:
        if topic not in self._partitions:
            self._partitions[topic] = list(self.reader.list_topics(topic, timeout=10).topics[topic].partitions)
        return self._partitions[topic]
