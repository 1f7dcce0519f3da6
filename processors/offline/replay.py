"""Replay: run past triggers again after a fix, through a chosen prompt version.

A replay has a selection and a mode, and an id (``r…``, or ``--id``) that marks everything it
writes.

**Selection.** The original triggers, each with its key and its original bytes:

* ``--from/--to``: the records of ``<wf>.triggers`` whose timestamps fall in the range (the
  broker's time index, ``offsets_for_times``, finds where the range starts and ends);
* ``--offsets P:FROM-TO,…``: offset ranges of ``<wf>.triggers``, both ends included;
* ``--source review``: the events that are waiting in review now (a review item holds the
  event's JSON, which is re-encoded with the trigger topic's contract);
* ``--source dlq``: the events that are in the dead letters now (their original bytes, or the
  event of the work item that was dead-lettered after classify).

Where an event is *now* is the latest of its decisions, review items and dead letters. What a
selection leaves out is counted by reason, never silently dropped:

* a trigger that is itself a replay — replaying the original is what was meant;
* **the loop guard**: an event whose latest dead letter came from a replay (its record carried
  ``handoff-replay``; the runtime keeps that header on the dead letter). It failed again after a
  fix, so it waits for a person instead of going round again;
* bytes that do not decode — the same bytes would fail the same way;
* a review item or dead letter whose event has been decided (or moved on) since;
* a review item or dead letter of a later stage — an action that failed or awaits approval, a
  verdict, an outcome: a better prompt does not change them.

**Shadow** runs the selection through the real classify/validate/route code in this process
(:mod:`processors.offline.runner`) with the chosen prompt version, under the control state in force
(rollout mode, thresholds, kill switch) as a live replay would be, writes the new decisions to
``<wf>.replay`` (``Decision.replay`` = the replay id; nothing acts on that topic) and reports
each event's old and new place and the count of each transition (``review:invalid_output →
billing``). Nothing reaches execute.

**Live** produces the selection to ``<wf>.triggers`` again, with its original key and the
headers ``handoff-replay: <id>`` and ``handoff-prompt-version: <V>``. The stages process such a
record as a replay rather than as a duplicate event, and its actions keep their idempotency key
``<event id>:<action>``: an effect that already happened is answered ``already_done``, so
replaying a range twice executes nothing twice.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from enum import StrEnum
from typing import Literal

import orjson
from confluent_kafka import KafkaError, Message, TopicPartition
from pydantic import BaseModel, Field, model_validator
from tqdm import tqdm

from processors.avro.serde import AvroSerde, DecodeError, EncodeError
from processors.clock import now_ms
from processors.control.store import ControlStore
from processors.kafka.read import watermarks
from processors.kafka.settings import KafkaSettings
from processors.offline.evals import EvalReport, run_suite
from processors.offline.outputs import (
    SETTLING_STAGES,
    dead_letter_id,
    dead_letters,
    decision_suffixes,
    read,
)
from processors.offline.runner import OfflineResult, OfflineRunner
from processors.paths import dotted
from processors.providers.base import Provider
from processors.records import ControlState, Decision, ReviewItem, WorkItem
from processors.runtime.dead_letter import Header
from processors.stages.base import PROMPT_VERSION_HEADER, REPLAY_HEADER
from processors.workflow.workflow import Workflow

_OFFSETS = re.compile(r"^(\d+):(\d+)-(\d+)$")


class Source(StrEnum):
    review = "review"
    dlq = "dlq"


class ReplayMode(StrEnum):
    shadow = "shadow"
    live = "live"


def new_id() -> str:
    """A replay id that sorts by time and is unique enough to tell runs apart."""
    return f"r{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


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


class Place(BaseModel):
    """Where an event is: decided on a route, waiting in review, or dead-lettered."""

    kind: Literal["decision", "review", "dead_letter"]
    detail: str
    """The route, the review reason, or the dead-letter reason."""
    at_ms: int = 0
    replay: str | None = None

    def __str__(self) -> str:
        return self.detail if self.kind == "decision" else f"{self.kind}:{self.detail}"


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


# ---- where every event is now ----------------------------------------------------------------------


class _Letter(BaseModel):
    """A dead letter as a replay needs it: the original key and bytes, and where they came from."""

    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def origin(self) -> str:
        return self.headers.get(Header.original_topic, "")


class _Found(BaseModel):
    """A record that places an event, with what a replay of it would need."""

    event_id: str
    place: Place
    review: ReviewItem | None = None
    letter: _Letter | None = None


def _found(workflow: Workflow, settings: KafkaSettings) -> list[_Found]:
    """Every decision, review item and dead letter of the workflow, in no particular order."""
    found = [_Found(event_id=d.event_id, place=Place(kind="decision", detail=d.route, at_ms=d.decided_at_ms,
                                                     replay=d.replay))
             for suffix in decision_suffixes(workflow) for d in read(workflow, settings, suffix, Decision)]
    found += [_Found(event_id=r.event_id, review=r,
                     place=Place(kind="review", detail=r.reason, at_ms=r.created_at_ms, replay=r.replay))
              for r in read(workflow, settings, "review", ReviewItem)]
    for msg, headers in dead_letters(workflow, settings):
        found.append(_Found(event_id=dead_letter_id(workflow, settings, headers, msg.value()),
                            letter=_Letter(key=msg.key(), value=msg.value() or b"", headers=headers),
                            place=Place(kind="dead_letter", detail=headers.get(Header.error_reason, "unknown"),
                                        at_ms=msg.timestamp()[1], replay=headers.get(REPLAY_HEADER))))
    return found


def _settles(found: _Found) -> bool:
    """Does this record say where the event itself ended? Review items and dead letters of later
    stages (execute, review, join) concern what happens after a decision."""
    if found.review is not None:
        return found.review.stage in SETTLING_STAGES
    if found.letter is not None:
        return found.letter.headers.get(Header.stage) in SETTLING_STAGES
    return True


def places(workflow: Workflow, settings: KafkaSettings, found: list[_Found] | None = None) -> dict[str, Place]:
    """Each event's latest place (decision, review or dead letter), by event id."""
    latest: dict[str, Place] = {}
    for item in found if found is not None else _found(workflow, settings):
        if _settles(item) and (item.event_id not in latest or item.place.at_ms >= latest[item.event_id].at_ms):
            latest[item.event_id] = item.place
    return latest


def before(workflow: Workflow, settings: KafkaSettings, selected: Selected) -> dict[str, Place]:
    """Each event's place before the replay: the one the selection read, else read now."""
    return selected.places if selected.places is not None else places(workflow, settings)


# ---- selection ---------------------------------------------------------------------------------


def select(workflow: Workflow, settings: KafkaSettings, selection: Selection) -> Selected:
    if selection.source is None:
        return _from_triggers(workflow, settings, selection)
    return _from_source(workflow, settings, selection.source)


def _from_triggers(workflow: Workflow, settings: KafkaSettings, selection: Selection) -> Selected:
    spec = workflow.topics[workflow.topic("triggers")]
    serde = AvroSerde(spec.value_schema, registry_url=settings.schema_registry_url)
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
    found = _found(workflow, settings)
    now = places(workflow, settings, found)

    @functools.cache
    def serde(schema: str) -> AvroSerde:
        return AvroSerde(schema, registry_url=settings.schema_registry_url)

    kind = "review" if source == Source.review else "dead_letter"
    skipped: Counter = Counter()
    latest: dict[str, _Found] = {}  # per event, its latest record of this kind
    for item in sorted((f for f in found if f.place.kind == kind), key=lambda f: f.place.at_ms):
        if _settles(item):
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
            original = _original(workflow, serde, item)
            if isinstance(original, str):
                skipped[original] += 1
            else:
                originals.append(original)
    return Selected(originals=originals, skipped=dict(skipped), places=now)


def _original(workflow: Workflow, serde: Callable[[str], AvroSerde], item: _Found) -> Original | str:
    """The trigger behind a review item or dead letter, or why there is none to replay."""
    if item.review is not None:
        return _reencoded(workflow, serde, orjson.loads(item.review.event), f"review {item.place.detail}")
    letter = item.letter
    spec = next((s for s in workflow.topics.values() if s.name == letter.origin and s.value_schema), None)
    if spec is None:
        return "came from an unknown topic"
    try:
        record = serde(spec.value_schema).decode(letter.value)
    except DecodeError as exc:
        return f"do not decode ({exc.reason})"
    where = f"dlq {item.place.detail}"
    if spec.name == workflow.topics[workflow.topic("triggers")].name:
        return Original(event_id=item.event_id, key=letter.key, value=letter.value, event=record, origin=where)
    return _reencoded(workflow, serde, WorkItem.model_validate(record).event_dict(), where)


def _reencoded(workflow: Workflow, serde: Callable[[str], AvroSerde], event: dict, origin: str) -> Original | str:
    """An event that travelled as JSON, encoded again with the trigger contract, keyed like a trigger."""
    trigger = workflow.topics[workflow.topic("triggers")]
    try:
        value = serde(trigger.value_schema).encode(event, trigger.name, check=True)
    except EncodeError:
        return "no longer match the trigger contract"
    return Original(event_id=str(dotted(event, workflow.trigger.event_id)),
                    key=str(dotted(event, workflow.trigger.key)).encode(), value=value, event=event, origin=origin)


# ---- shadow: decide again, act on nothing, report what changed ----------------------------------------


class Change(BaseModel):
    """One event's place before the replay and in it."""

    event_id: str
    origin: str
    before: Place | None
    after: Place
    label: str | None = None
    confidence: float | None = None

    @property
    def transition(self) -> str:
        return f"{self.before or 'nowhere'} -> {self.after}"

    @property
    def changed(self) -> bool:
        return self.before is None or (self.before.kind, self.before.detail) != (self.after.kind, self.after.detail)


class ReplayReport(BaseModel):
    """What a replay changed (live) or would change (shadow), event by event."""

    replay_id: str
    mode: ReplayMode
    prompt_version: str
    selected: Selected
    changes: list[Change]
    """Shadow: every selected event. Live: the events the stages have settled again so far."""
    written: int
    """Shadow: decisions written to ``<wf>.replay``. Live: triggers re-injected."""

    def transitions(self) -> Counter:
        """Count of each ``before -> after``, changed events only."""
        return Counter(c.transition for c in self.changes if c.changed)

    def render(self, events: int | None = 20) -> str:
        """The summary, a transition table and the first ``events`` changed events (None: all)."""
        changed = [c for c in self.changes if c.changed]
        lines = [f"replay {self.replay_id} ({self.mode}, prompt {self.prompt_version}): {self.selected.render()}"]
        if self.mode == ReplayMode.shadow:
            lines.append(f"{len(changed)} of {len(self.changes)} events would change; {self.written} decisions "
                         f"written to the replay topic, nothing acted on")
        else:
            waiting = len(self.selected.originals) - len(self.changes)
            lines.append(f"re-injected {self.written}; {len(changed)} of {len(self.changes)} settled events changed"
                         + (f"; {waiting} not settled yet (are the stages running?)" if waiting else ""))
        table = self.transitions().most_common()
        if table:
            width = max(len(t) for t, _ in table)
            lines += ["", f"{'transition':<{width}}  count"] + [f"{t:<{width}}  {n:>5}" for t, n in table]
        shown = changed if events is None else changed[:events]
        if shown:
            lines.append("")
            lines += [f"  {c.event_id}: {c.transition}" + (f" ({c.label} {c.confidence:.2f})" if c.label else "")
                      + f"  [{c.origin}]" for c in shown]
            if len(shown) < len(changed):
                lines.append(f"  … {len(changed) - len(shown)} more (--show-events)")
        return "\n".join(lines)


def _place(result: OfflineResult) -> Place:
    if result.ended == "decision":
        return Place(kind="decision", detail=result.route or "", at_ms=result.decision.decided_at_ms)
    if result.ended == "review":
        return Place(kind="review", detail=result.review_reason or "", at_ms=result.review.created_at_ms)
    return Place(kind="dead_letter", detail=result.dead_letter_reason or "", at_ms=now_ms())


async def shadow(workflow: Workflow, settings: KafkaSettings, selected: Selected, prompt_version: str,
                 provider: Provider | None, replay_id: str, *, state: ControlState | None = None) -> ReplayReport:
    """Decide the selection again with ``prompt_version``; decisions go to ``<wf>.replay`` only.

    The stages obey the control state in force (mode, thresholds, kill switch) with production
    pointing to ``prompt_version``: what a live replay would do now, short of acting. ``state``:
    that control state when the caller has read it already. ``provider``: None for the
    workflow's own model, built here and closed after."""

    was = before(workflow, settings, selected)
    state = ControlStore(settings, workflow).current() if state is None else state
    pinned = state.model_copy(update={"labels": state.labels | {"production": prompt_version}})
    runner = OfflineRunner(workflow.with_prompt(prompt_version), provider or workflow.provider(), pinned)
    try:
        results = await runner.run([o.event for o in selected.originals], progress=f"shadow replay {replay_id}")
    finally:
        if provider is None:
            await runner.provider.close()
    spec = workflow.topics[workflow.topic("replay")]
    serde = AvroSerde(spec.value_schema, registry_url=settings.schema_registry_url)
    decisions = [(o.key, r.decision.model_copy(update={"replay": replay_id}))
                 for o, r in zip(selected.originals, results) if r.decision is not None]
    _produce(settings, spec.name, [(key, serde.encode(d.model_dump(), spec.name)) for key, d in decisions],
             headers=[(REPLAY_HEADER, replay_id.encode())], desc="writing replay decisions")
    changes = [Change(event_id=o.event_id, origin=o.origin, before=was.get(o.event_id), after=_place(r),
                      label=r.label, confidence=(r.answer or {}).get("confidence"))
               for o, r in zip(selected.originals, results) if r.ended != "duplicate"]
    return ReplayReport(replay_id=replay_id, mode=ReplayMode.shadow, prompt_version=prompt_version,
                        selected=selected, changes=changes, written=len(decisions))


# ---- live: through the real stages again, marked as a replay ---------------------------------------------


def gate(workflow: Workflow, version: str, production: str) -> EvalReport | None:
    """A live replay acts through ``version``: unless production runs it already, it must pass its
    eval suite first, the gate ``prompt promote`` applies. The report of a miss, or None: go ahead."""
    if version == production:
        return None
    report = run_suite(workflow.with_prompt(version), progress=True)
    return None if report.passed else report


def reinject(workflow: Workflow, settings: KafkaSettings, selected: Selected, replay_id: str,
             prompt_version: str | None) -> int:
    """Produce the selection to ``<wf>.triggers`` with its original keys and the replay headers;
    returns how many records the broker acknowledged (all, or it raises)."""
    headers = [(REPLAY_HEADER, replay_id.encode())]
    if prompt_version is not None:
        headers.append((PROMPT_VERSION_HEADER, prompt_version.encode()))
    return _produce(settings, workflow.topics[workflow.topic("triggers")].name,
                    [(o.key, o.value) for o in selected.originals], headers=headers, desc=f"re-injecting {replay_id}")


def settle(workflow: Workflow, settings: KafkaSettings, selected: Selected, replay_id: str, prompt_version: str,
           before: dict[str, Place], written: int, timeout: float, poll_s: float = 1.0) -> ReplayReport:
    """Wait (up to ``timeout``) until the running stages have placed every re-injected event again
    — a decision, review item or dead letter carrying the replay id — and report the changes."""
    wanted = {o.event_id: o for o in selected.originals}
    deadline = time.monotonic() + timeout
    with tqdm(total=len(wanted), desc=f"settling {replay_id}", unit="event", disable=None) as bar:
        while True:
            now = {e: p for e, p in places(workflow, settings).items() if e in wanted and p.replay == replay_id}
            bar.update(len(now) - bar.n)
            if len(now) == len(wanted) or time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
    changes = [Change(event_id=e, origin=o.origin, before=before.get(e), after=now[e])
               for e, o in wanted.items() if e in now]
    return ReplayReport(replay_id=replay_id, mode=ReplayMode.live, prompt_version=prompt_version, selected=selected,
                        changes=changes, written=written)


class ReplayError(RuntimeError):
    """The broker did not acknowledge every record a replay wrote."""


def _produce(settings: KafkaSettings, topic: str, records: list[tuple[bytes | None, bytes]],
             headers: list[tuple[str, bytes]], desc: str) -> int:
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
