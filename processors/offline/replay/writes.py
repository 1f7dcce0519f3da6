"""Records a replay writes, each acknowledged by the broker, or the replay says it is incomplete.

Shadow decisions and live re-injections alike: a replay that lost a record silently would
report changes it never made.
"""

from __future__ import annotations

from processors.kafka.settings import KafkaSettings
from processors.kafka.write import write


def produce_acknowledged(settings: KafkaSettings, topic: str, records: list[tuple[bytes | None, bytes]],
                         headers: list[tuple[str, bytes]], desc: str) -> int:
    """Produce ``records`` with ``headers``; how many the broker acknowledged (all, or
    :class:`~processors.kafka.write.NotDelivered` says the replay is incomplete)."""
    write(settings.producer(), topic, records, what="replayed records", headers=headers, progress=desc,
          then="the replay is incomplete, run it again with the same --id")
    return len(records)
