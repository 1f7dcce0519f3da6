"""``handoff produce``: JSON Lines in, Avro-encoded keyed trigger events out.

Each line is checked against the trigger contract before anything is sent; a bad line is
reported with its number (1-based, the file's) and reason — a field by its dotted path, a JSON error
by its column on that line — and skipped, the good ones are sent, and the summary
counts both. Delivery is confirmed: a line counts as sent only when the broker acknowledged it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
from confluent_kafka import Producer
from pydantic import BaseModel

from processors.avro.serde import AvroSerde, EncodeError
from processors.kafka.write import deliver
from processors.paths import dotted
from processors.records import LABELS_FIELD


class Rejected(BaseModel):
    line: int
    reason: str


class ProduceSummary(BaseModel):
    sent: int = 0
    rejected: list[Rejected] = []
    failed: list[Rejected] = []


def encode_lines(path: Path, serde: AvroSerde, topic: str, key_field: str | None) -> Iterator[tuple[int, bytes | None, bytes | str]]:
    """Yield ``(line number, key, value bytes)`` for good lines, ``(line number, None, reason)`` for bad."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line.rstrip())  # no newline: a parser error stays on this line
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
                record.pop(LABELS_FIELD, None)
                value = serde.encode(record, topic, check=True)
                key = str(dotted(record, key_field)).encode() if key_field else None
            except orjson.JSONDecodeError as exc:
                yield number, None, f"not JSON at column {exc.colno}: {exc.msg}"  # the file's line, not the parser's
            except EncodeError as exc:
                yield number, None, f"does not match {serde.writer.name}: {exc}"
            except (ValueError, KeyError, TypeError) as exc:
                yield number, None, str(exc)
            else:
                yield number, key, value


def produce_file(path: Path, producer: Producer, topic: str, serde: AvroSerde, key_field: str | None) -> ProduceSummary:
    summary = ProduceSummary()
    numbers: list[int] = []  # the line number of each record sent, by its index

    def good_lines() -> Iterator[tuple[bytes | None, bytes]]:
        for number, key, value in encode_lines(path, serde, topic, key_field):
            if isinstance(value, str):
                summary.rejected.append(Rejected(line=number, reason=value))
            else:
                numbers.append(number)
                yield key, value

    deliveries = deliver(producer, topic, good_lines())
    summary.sent = len(deliveries.acknowledged)
    summary.failed = [Rejected(line=numbers[index], reason=reason) for index, reason in deliveries.failed.items()]
    if deliveries.unanswered:
        summary.failed.append(Rejected(line=0, reason=f"{deliveries.unanswered} records not acknowledged within 60s"))
    return summary
