"""Produce and confirm: a record a command writes counts only once the broker acknowledged it.

Commands and tools (``handoff produce``, verdicts, control changes, outcomes, replays, the
demo) write outside a stage's loop, which has its own protocol (outputs released in input
order, committed with the offsets: processors/runtime/runtime.py). Here every record gets a
delivery report: :func:`deliver` says, per record, whether the broker took it; :func:`write`
raises one :class:`NotDelivered` naming the topic, how many records failed and why, and what
to do — so no caller checks a ``flush`` count, or forgets to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sized

from confluent_kafka import Message, Producer
from pydantic import BaseModel, ConfigDict
from tqdm import tqdm

Key = bytes | str | None
Headers = list[tuple[str, bytes]] | None

RETRY = "check the broker and that the topic exists (handoff topics apply), then try again"


class NotDelivered(RuntimeError):
    """The broker did not acknowledge every record; the message names the topic, why, and what to do."""


class Deliveries(BaseModel):
    """What the broker answered for the records of one :func:`deliver` call."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    topic: str
    sent: int
    acknowledged: list[Message]
    """In the order the broker acknowledged them: each has its partition and offset."""
    failed: dict[int, str]
    """A record's index among those sent → the broker's error."""

    @property
    def unanswered(self) -> int:
        """Records the broker said nothing about before the timeout."""
        return self.sent - len(self.acknowledged) - len(self.failed)

    def check(self, what: str, then: str) -> None:
        """Raise :class:`NotDelivered` unless every record was acknowledged."""
        if self.unanswered or self.failed:
            errors = sorted(set(self.failed.values()))
            why = f"{'; '.join(errors[:3])}" + (f"; {self.unanswered} unanswered" if self.unanswered else "")
            raise NotDelivered(f"{self.topic}: {self.sent - len(self.acknowledged)} of {self.sent} {what} not "
                               f"acknowledged by the broker ({why}); {then}")


def deliver(producer: Producer, topic: str, records: Iterable[tuple[Key, bytes | None]], *,
            headers: Headers = None, timeout_s: float = 60.0, progress: str | None = None) -> Deliveries:
    """Produce ``records`` (key, value) to ``topic`` and wait up to ``timeout_s`` for every delivery
    report. A full local queue is drained, not dropped. ``progress`` names a tqdm bar (on a terminal)."""
    acknowledged: list[Message] = []
    failed: dict[int, str] = {}
    sent = 0
    total = len(records) if isinstance(records, Sized) else None
    with tqdm(total=total, desc=progress, unit="record", disable=None if progress else True, leave=False) as bar:
        for index, (key, value) in enumerate(records):
            def report(err, msg, index=index) -> None:  # served by poll/flush on this thread
                if err is None:
                    acknowledged.append(msg)
                    bar.update()
                else:
                    failed[index] = err.str()  # the reason alone, e.g. "Broker: Message size too large"

            while True:
                try:
                    producer.produce(topic, key=key, value=value, headers=headers, on_delivery=report)
                    break
                except BufferError:  # the local queue is full: let deliveries drain, then retry
                    producer.poll(0.5)
            producer.poll(0)
            sent += 1
        producer.flush(timeout_s)
    return Deliveries(topic=topic, sent=sent, acknowledged=acknowledged, failed=failed)


def write(producer: Producer, topic: str, records: Iterable[tuple[Key, bytes | None]], *, what: str = "records",
          then: str = RETRY, headers: Headers = None, timeout_s: float = 60.0,
          progress: str | None = None) -> list[Message]:
    """:func:`deliver`, then :class:`NotDelivered` unless the broker acknowledged every record. ``what``
    names the records in the error, ``then`` says what to do about it. Returns the acknowledged messages."""
    deliveries = deliver(producer, topic, records, headers=headers, timeout_s=timeout_s, progress=progress)
    deliveries.check(what, then)
    return deliveries.acknowledged


def load(producer: Producer, topic: str, records: Iterable[tuple[Key, bytes | None, int | None]], *,
         timeout_s: float = 120.0) -> Counter[int]:
    """Bulk-write ``records`` (key, value, partition or None for the partitioner's choice) and confirm
    them all, counting deliveries instead of keeping them: histories of millions of records for tests
    and benchmarks. Returns the records acknowledged per partition; :class:`NotDelivered` on any failure."""
    landed: Counter[int] = Counter()
    errors: list[str] = []
    sent = 0

    def report(err, msg) -> None:
        if err is None:
            landed[msg.partition()] += 1
        else:
            errors.append(err.str())

    for key, value, partition in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=report,
                                 **({} if partition is None else {"partition": partition}))
                break
            except BufferError:
                producer.poll(0.5)
        sent += 1
    producer.flush(timeout_s)
    if errors or landed.total() != sent:
        raise NotDelivered(f"{topic}: {sent - landed.total()} of {sent} records not acknowledged "
                           f"({'; '.join(errors[:3]) or 'unanswered'}); {RETRY}")
    return landed
