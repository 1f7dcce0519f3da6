"""Dead letters: a record that must leave the pipeline, with headers saying where it came from and why.

A dead letter carries the input's original key and value bytes, so it can be sent back to its
topic as it was (``handoff replay``, :mod:`processors.offline.replay`). The input's own headers
are kept, all but ``handoff.*`` (:data:`PREFIX`), which the dead letter sets afresh: a replayed
record that fails again still carries ``handoff-replay``, and a replay does not pick it up again.
Every reader of dead letters (replay, report, summary, outputs) names the headers by
:class:`Header`.

The value is kept exactly: a tombstone's dead letter has a null value, not an empty one. The
values of the ``handoff.*`` headers never hold a comma or a line break (an error message's commas
become semicolons), so ``kcat -f '%h'``, which joins headers with commas, lists them unambiguously.
The input's own headers are kept as they came: read those with ``kcat -J`` (JSON).
"""

from __future__ import annotations

from enum import StrEnum

from confluent_kafka import Message

from processors.clock import now_ms
from processors.records import Original
from processors.runtime.output import Output

PREFIX = "handoff."
"""The headers a dead letter sets; the input's own headers with this prefix are dropped."""


class Header(StrEnum):
    original_topic = "handoff.original.topic"
    original_partition = "handoff.original.partition"
    original_offset = "handoff.original.offset"
    original_timestamp = "handoff.original.timestamp"
    stage = "handoff.stage"
    """The stage that dead-lettered the record."""
    error_reason = "handoff.error.reason"
    """A short stable label (``not_avro``, ``stage_error``, a ``DeadLetter``'s reason)."""
    error_class = "handoff.error.class"
    error_message = "handoff.error.message"
    """The exception's message, cut at 1,000 characters."""
    attempts = "handoff.attempts"
    first_failure_ms = "handoff.first.failure.ms"
    source_offset = "handoff.source.offset"
    """On a state store's changelog record (under at_least_once): the offset of the input record that wrote it."""
    value_truncated = "handoff.value.truncated"
    """Set when the value was cut to fit the dead-letter topic: the original value's length in bytes.
    Such a dead letter cannot be replayed; its headers say where the whole record is."""


SEPARATORS = str.maketrans({",": ";", "\n": " ", "\r": " "})


def dead_letter(topic: str, stage: str, record: Original | Message, reason: str, exc: BaseException, attempts: int = 1,
                first_failure_ms: int | None = None) -> Output:
    """``record`` as a dead letter on ``topic`` (the workflow's dead-letter topic); a consumed message's
    value as it was, null for a tombstone."""
    value = record.value() if isinstance(record, Message) else record.value
    if isinstance(record, Message):
        record = original(record)
    headers = {
        Header.original_topic: record.topic,
        Header.original_partition: str(record.partition),
        Header.original_offset: str(record.offset),
        Header.original_timestamp: str(record.timestamp_ms),
        Header.stage: stage,
        Header.error_reason: reason,
        Header.error_class: type(exc).__name__,
        Header.error_message: str(exc)[:1000],
        Header.attempts: str(attempts),
        Header.first_failure_ms: str(first_failure_ms or now_ms()),
    }
    kept = [(k, v) for k, v in record.headers.items() if not k.startswith(PREFIX)]
    return Output(topic, record.key, value, kept + [(str(k), v.translate(SEPARATORS).encode()) for k, v in headers.items()])


def original(msg: Message) -> Original:
    """A consumed record as it was, for its dead letter."""
    return Original(topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), timestamp_ms=msg.timestamp()[1],
                    key=msg.key(), value=msg.value() or b"", headers=dict(msg.headers() or []))
