"""What a replay takes: the original triggers, each with its key and bytes, and what it leaves out.

A time range, offset ranges, or the events waiting in review or the dead letters now; every
event left out is counted by reason (the package's docstring lists them), never dropped silently.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timezone
from enum import StrEnum

import orjson
from confluent_kafka import KafkaError, Message, TopicPartition
from pydantic import BaseModel, Field, model_validator
from tqdm import tqdm

from processors.avro.serde import DecodeError, EncodeError
from processors.kafka.read import watermarks
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.offline.replay.places import Found, Place, found_records, placed, places, settles
from processors.paths import dotted
from processors.records import WorkItem
from processors.stages.base import REPLAY_HEADER
from processors.workflow.workflow import Workflow

_OFFSETS = re.compile(r"^(\d+):(\d+)-(\d+)$")


class Source(StrEnum):
    review = "review"
    dlq = "dlq"


class Selection(BaseModel):
    """Exactly one of: a time range, offset ranges, or a source topic."""

    start: datetime | None = None
    end: datetime | None = None
    offsets: dict[int, tuple[int, int]] | None = None
    source: Source | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Selection:
        kinds = [self.start is not None or self.end is not None, self.offsets is not None, self.source is not None]
        if sum(kinds) != 1:
            raise ValueError("select with exactly one of --from/--to, --offsets, --source")
        return self

    @classmethod
    def parse(cls, *, start: str | None = None, end: str | None = None, offsets: str | None = None,
              source: str | None = None) -> Selection:
        """A selection from the command line's text; ``ValueError`` says what is wrong."""
        return cls(start=start and cls.parse_time(start), end=end and cls.parse_time(end),
                   offsets=offsets and cls.parse_offsets(offsets), source=source and Source(source))

    @staticmethod
    def parse_offsets(text: str) -> dict[int, tuple[int, int]]:
        """``"0:10-20,3:0-5"`` → ``{0: (10, 20), 3: (0, 5)}``; both ends included."""
        ranges = {}
        for part in text.split(","):
            match = _OFFSETS.match(part.strip())
            if not match:
                raise ValueError(f"offsets: {part!r} is not PARTITION:FROM-TO (e.g. 0:10-20)")
            partition, first, last = map(int, match.groups())
            if last < first:
                raise ValueError(f"offsets: {part!r} ends before it starts")
            ranges[partition] = (first, last)
        return ranges

    @staticmethod
    def parse_time(text: str) -> datetime:
        """An ISO time; without a zone it is UTC."""
        when = datetime.fromisoformat(text)
        return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class Original(BaseModel):
    """One selected trigger, as it will be replayed."""

    event_id: str
    key: bytes | None
    value: bytes
    event: dict
    origin: str


class Selected(BaseModel):
    originals: list[Original]
    skipped: dict[str, int]
    places: dict[str, Place] | None = Field(None, exclude=True)
    """Where every event was when the selection was made, when selecting had to read that
    (``--source``); :func:`before` hands it on instead of reading the topics again."""

    def render(self) -> str:
        why = "; ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        return f"selected {len(self.originals)} events" + (f" (skipped {why})" if why else "")


def before(workflow: Workflow, settings: KafkaSettings, selected: Selected) -> dict[str, Place]:
    """Each event's place before the replay: the one the selection read, else read now."""
    if selected.places is not None:
        return selected.places
    return places(workflow, settings, events=[o.event_id for o in selected.originals])


def select(workflow: Workflow, settings: KafkaSettings, selection: Selection) -> Selected:
    if selection.source is None:
        return _from_triggers(workflow, settings, selection)
    return _from_source(workflow, settings, selection.source)


def _from_triggers(workflow: Workflow, settings: KafkaSettings, selection: Selection) -> Selected:
    spec = workflow.spec(Role.triggers)
    serde = spec.serde(settings)
    consumer = settings.consumer("replay", **{"enable.partition.eof": True})
    try:
        partitions = sorted(consumer.list_topics(spec.name, timeout=10).topics[spec.name].partitions)
        unknown = sorted(set(selection.offsets or ()) - set(partitions))
        if unknown:
            raise ValueError(f"offsets: {spec.name} has no partition {unknown[0]} (it has {len(partitions)})")
        ranges = (_time_ranges(consumer, spec.name, partitions, selection.start, selection.end)
                  if selection.offsets is None
                  else {p: (first, last + 1) for p, (first, last) in selection.offsets.items()})
        messages = _read(consumer, spec.name, ranges)
    finally:
        consumer.close()
    start, end = (None if t is None else int(t.timestamp() * 1000) for t in (selection.start, selection.end))
    originals, skipped, seen = [], Counter(), set()
    for msg in messages:
        headers = dict(msg.headers() or [])
        if (start is not None and msg.timestamp()[1] < start) or (end is not None and msg.timestamp()[1] >= end):
            continue  # a timestamp out of order with its offset: outside the range all the same
        if REPLAY_HEADER in headers:
            skipped["were replays themselves"] += 1
            continue
        try:
            event = serde.decode(msg.value())
        except DecodeError as exc:
            skipped[f"do not decode ({exc.reason})"] += 1
            continue
        event_id = str(dotted(event, workflow.trigger.event_id))
        if event_id in seen:
            skipped["repeat an event id"] += 1
            continue
        seen.add(event_id)
        originals.append(Original(event_id=event_id, key=msg.key(), value=msg.value(), event=event,
                                  origin=f"triggers {msg.partition()}@{msg.offset()}"))
    return Selected(originals=originals, skipped=dict(skipped))


def _time_ranges(consumer, topic: str, partitions: list[int], start: datetime | None,
                 end: datetime | None) -> dict[int, tuple[int, int]]:
    """Per partition, [first offset at or after ``start``, first offset at or after ``end``)."""
    marks = {p: watermarks(consumer, TopicPartition(topic, p)) for p in partitions}  # (low, high)

    def offsets(when: datetime | None, default: int) -> dict[int, int]:
        if when is None:
            return {p: marks[p][default] for p in partitions}
        ms = int(when.timestamp() * 1000)
        found = consumer.offsets_for_times([TopicPartition(topic, p, ms) for p in partitions], timeout=10)
        return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}

    first, last = offsets(start, 0), offsets(end, 1)
    return {p: (first[p], last[p]) for p in partitions}


def _read(consumer, topic: str, ranges: dict[int, tuple[int, int]]) -> list[Message]:
    """The records of ``[first, end)`` per partition, in offset order per partition."""
    wanted = {p: r for p, r in ranges.items() if r[1] > r[0]}
    if not wanted:
        return []
    consumer.assign([TopicPartition(topic, p, first) for p, (first, _) in wanted.items()])
    out: list[Message] = []
    with tqdm(total=sum(end - first for first, end in wanted.values()), desc="reading triggers", unit="record",
              disable=None) as bar:
        while wanted:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    wanted.pop(msg.partition(), None)  # the range runs past the end (or into a gap)
                    continue
                raise RuntimeError(f"reading {topic}: {msg.error()}")
            end = wanted.get(msg.partition(), (0, -1))[1]
            if msg.offset() < end:
                out.append(msg)
                bar.update()
            if msg.offset() + 1 >= end:
                wanted.pop(msg.partition(), None)
    return out


def _from_source(workflow: Workflow, settings: KafkaSettings, source: Source) -> Selected:
    found = found_records(workflow, settings)
    now = placed(found)
    kind = "review" if source == Source.review else "dead_letter"
    skipped: Counter = Counter()
    latest: dict[str, Found] = {}  # per event, its latest record of this kind
    for item in sorted((f for f in found if f.place.kind == kind), key=lambda f: f.place.at_ms):
        if settles(item):
            latest[item.event_id] = item
        else:
            skipped["came from a later stage (an action, a verdict, an outcome): a prompt does not change them"] += 1
    originals = []
    for event_id, item in latest.items():
        current = now[event_id]
        if current.kind != kind:
            skipped[f"{'were decided' if current.kind == 'decision' else 'moved to ' + current.kind} since"] += 1
        elif kind == "dead_letter" and current.replay is not None:
            skipped["failed again on a replay: left for a person (loop guard)"] += 1
        else:
            original = _original(workflow, settings, item)
            if isinstance(original, str):
                skipped[original] += 1
            else:
                originals.append(original)
    return Selected(originals=originals, skipped=dict(skipped), places=now)


def _original(workflow: Workflow, settings: KafkaSettings, item: Found) -> Original | str:
    """The trigger behind a review item or dead letter, or why there is none to replay."""
    if item.review is not None:
        return _reencoded(workflow, settings, orjson.loads(item.review.event), f"review {item.place.detail}")
    letter = item.letter
    spec = next((s for s in workflow.topics.values() if s.name == letter.origin and s.value_schema), None)
    if spec is None:
        return "came from an unknown topic"
    try:
        record = spec.serde(settings).decode(letter.value)
    except DecodeError as exc:
        return f"do not decode ({exc.reason})"
    where = f"dlq {item.place.detail}"
    if spec.name == workflow.spec(Role.triggers).name:
        return Original(event_id=item.event_id, key=letter.key, value=letter.value, event=record, origin=where)
    return _reencoded(workflow, settings, WorkItem.model_validate(record).event_dict(), where)


def _reencoded(workflow: Workflow, settings: KafkaSettings, event: dict, origin: str) -> Original | str:
    """An event that travelled as JSON, encoded again with the trigger contract, keyed like a trigger."""
    trigger = workflow.spec(Role.triggers)
    try:
        value = trigger.serde(settings).encode(event, trigger.name, check=True)
    except EncodeError:
        return "no longer match the trigger contract"
    return Original(event_id=str(dotted(event, workflow.trigger.event_id)),
                    key=str(dotted(event, workflow.trigger.key)).encode(), value=value, event=event, origin=origin)
