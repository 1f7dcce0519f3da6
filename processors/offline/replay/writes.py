"""Records a replay writes, each acknowledged by the broker, or the replay says it is incomplete.

Shadow decisions and live re-injections alike: a replay that lost a record silently would
report changes it never made.
"""

from __future__ import annotations

from tqdm import tqdm

from processors.kafka.settings import KafkaSettings


class ReplayError(RuntimeError):
    """The broker did not acknowledge every record a replay wrote."""


def produce_acknowledged(settings: KafkaSettings, topic: str, records: list[tuple[bytes | None, bytes]],
                         headers: list[tuple[str, bytes]], desc: str) -> int:
    """Produce ``records`` with ``headers``; how many the broker acknowledged (all, or it raises)."""
    producer = settings.producer()
    failures: list[str] = []
    with tqdm(total=len(records), desc=desc, unit="record", disable=None) as bar:
        def delivered(err, _msg) -> None:
            if err is not None:
                failures.append(str(err))
            else:
                bar.update()

        for key, value in records:
            while True:
                try:
                    producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain
                    producer.poll(0.5)
            producer.poll(0)
        remaining = producer.flush(60)
    if remaining or failures:
        raise ReplayError(f"{topic}: {remaining} records unacknowledged, {len(failures)} failed "
                          f"({'; '.join(failures[:3])}); the replay is incomplete, run it again with the same --id")
    return len(records)
