"""The verdict log's one rule: the first verdict per review id, in log order, is the one that counts.

Verdicts are keyed by review id, so all verdicts on one item land in one partition in the order
the broker accepted them. The review stage and the review commands both read the log through
:func:`first_verdicts`, so what a reviewer is told and what happens never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from confluent_kafka import Message
from pydantic import BaseModel, ValidationError

from processors.avro.serde import AvroSerde, DecodeError
from processors.records import Verdict

Record = TypeVar("Record", bound=BaseModel)


class Logged(BaseModel):
    """A verdict where it sits in the log."""

    partition: int
    offset: int
    verdict: Verdict


def decoded(messages: Iterable[Message], serde: AvroSerde, model: type[Record],
            skipped: set[str]) -> Iterator[tuple[Message, Record]]:
    """Each record as ``model``; one that is not (bytes from a foreign writer) is skipped, named in
    ``skipped`` and never counted: the review stage dead-letters such a verdict, and ``review
    list`` names such an item."""
    for msg in messages:
        try:
            yield msg, model.model_validate(serde.decode(msg.value()))
        except (DecodeError, ValidationError) as exc:
            skipped.add(f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {str(exc).splitlines()[0]}")


def first_verdicts(messages: Iterable[Message], serde: AvroSerde,
                   skipped: set[str] | None = None) -> dict[str, Logged]:
    """The first verdict per review id, in log order (``messages`` in offset order per partition)."""
    first: dict[str, Logged] = {}
    for msg, verdict in decoded(messages, serde, Verdict, set() if skipped is None else skipped):
        first.setdefault(verdict.review_id, Logged(partition=msg.partition(), offset=msg.offset(), verdict=verdict))
    return first
