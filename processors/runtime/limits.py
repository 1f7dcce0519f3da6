"""Output size limits: every record a stage writes is checked against them before it is produced.

Two limits apply to each record: the producer's ``message.max.bytes`` (librdkafka refuses a bigger
record at once, ``MSG_SIZE_TOO_LARGE``) and its topic's ``max.message.bytes`` (the broker refuses a
bigger record batch in the delivery report). Either refusal, left to happen, would stop the stage
on the same record after every restart. So the runtime knows both before the first record
(:meth:`OutputLimits.read`: the broker's value, one ``describe_configs`` for every topic of the
workflow at start, or the topic's declared ``TopicSpec.max_message_bytes`` when lower or the only
one known) and checks each output (:meth:`OutputLimits.check`): a record with an output over its
limit is dead-lettered (``output_too_large``, naming the topic, the size and the limit) and its
partition carries on. A limit lowered on the broker while the stage runs is met by the refusal
path instead (the runtime's **Poison**).

The size checked is the *uncompressed* size plus the framing librdkafka adds (a bound, measured
against librdkafka 2.x): compression may make a record smaller on the wire, but whether a record
passes must not depend on how well it compresses. The producer's ``batch.size`` is kept within
the smallest topic limit (:meth:`OutputLimits.batch_bytes`), so a batch of records that each fit
is never refused as a whole.

A dead letter must have a path too: one over the dead-letter topic's limit keeps its headers
(where the record came from, why it failed) and as much of the value as fits, and says so in
``handoff.value.truncated`` (:meth:`OutputLimits.fit`, :attr:`.Header.value_truncated`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from processors.kafka.topics import TopicSpec
from processors.runtime.dead_letter import Header
from processors.runtime.output import Output
from processors.runtime.stage import DeadLetter

log = logging.getLogger("handoff.runtime")

RECORD_OVERHEAD = 64
"""Bytes librdkafka adds to one record's key and value in its size check (at most 40 measured), with room."""
HEADER_OVERHEAD = 10
"""Bytes each header adds beyond its name and value (two length varints)."""
BATCH_OVERHEAD = 61
"""A record batch's own header (v2): the broker's limit applies to the batch."""
DESCRIBE_TIMEOUT_S = 10

REFUSED = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.INVALID_TIMESTAMP,
           KafkaError.RECORD_LIST_TOO_LARGE}
"""Produce errors that belong to one record, not to the broker or the producer: that record is
dead-lettered and the partition carries on. Any other error follows the commit protocol."""


class OutputTooLarge(DeadLetter):
    """An output over its topic's or the producer's limit: its input record is dead-lettered."""

    def __init__(self, message: str):
        super().__init__("output_too_large", message)


def size(out: Output) -> int:
    """The bytes ``out`` counts for against either limit (see the module docstring)."""
    headers = sum(len(k) + len(v or b"") + HEADER_OVERHEAD for k, v in out.headers)
    return len(out.key or b"") + len(out.value or b"") + headers + RECORD_OVERHEAD


@dataclass
class OutputLimits:
    """The producer's ``message.max.bytes`` and each topic's ``max.message.bytes`` (by topic name)."""

    producer_bytes: int
    topic_bytes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, admin: AdminClient, topics: Iterable[TopicSpec], producer_bytes: int) -> OutputLimits:
        """Each topic's limit: the broker's (one request for all), or the declared one when it is lower
        (drift) or the broker cannot say (the topic is missing, no broker answers); neither known: the
        producer's limit alone holds."""
        specs = list(topics)
        limits = {s.name: s.max_message_bytes for s in specs if s.max_message_bytes}
        asked = [ConfigResource(ResourceType.TOPIC, s.name) for s in specs]
        for resource, future in admin.describe_configs(asked, request_timeout=DESCRIBE_TIMEOUT_S).items():
            try:
                found = int(future.result(timeout=DESCRIBE_TIMEOUT_S)["max.message.bytes"].value)
            except (KafkaException, TimeoutError, KeyError) as exc:
                log.warning("max.message.bytes of %s not read from the broker (%s); %s", resource.name, exc,
                            "the declared limit holds" if resource.name in limits else "the producer's limit holds")
                continue
            limits[resource.name] = min(found, limits.get(resource.name, found))
        return cls(producer_bytes, limits)

    def limit(self, topic: str) -> tuple[int, str]:
        """The largest size (:func:`size`) an output of ``topic`` may have, and which setting says so."""
        topic_limit = self.topic_bytes.get(topic)
        if topic_limit is not None and topic_limit - BATCH_OVERHEAD < self.producer_bytes:
            return topic_limit - BATCH_OVERHEAD, f"topic max.message.bytes {topic_limit}"
        return self.producer_bytes, f"producer message.max.bytes {self.producer_bytes}"

    def batch_bytes(self) -> int:
        """The producer's ``batch.size``: no batch outgrows the smallest limit of any topic."""
        return min([self.producer_bytes, *self.topic_bytes.values()]) - BATCH_OVERHEAD

    def check(self, outputs: list[Output]) -> None:
        """Raise :class:`OutputTooLarge` for the first output over its limit."""
        for out in outputs:
            have = size(out)
            most, setting = self.limit(out.topic)
            if have > most:
                raise OutputTooLarge(f"a {have}-byte record for {out.topic} is over its {most}-byte limit ({setting}, "
                                     "uncompressed with framing)")

    def fit(self, letter: Output, most: int | None = None) -> Output:
        """``letter`` (a dead letter) as it is when within its topic's limit (or ``most`` bytes), else with
        its value cut to fit and ``handoff.value.truncated`` set; the headers always stay."""
        over = size(letter) - (self.limit(letter.topic)[0] if most is None else most)
        if over <= 0:
            return letter
        value = letter.value or b""
        flag = (str(Header.value_truncated), str(len(value)).encode())
        keep = max(0, len(value) - over - len(flag[0]) - len(flag[1]) - HEADER_OVERHEAD)
        return replace(letter, value=value[:keep], headers=[*letter.headers, flag])
