"""What each record of a workflow's topics changes in its views: the record → rows mapping.

One :class:`Rows` per workflow turns a consumed record (its topic, partition, offset, raw bytes,
headers, timestamp) into an :class:`~processors.views.store.Applied`: the statements that
bring the views up to date with it. The views stage and a command catching up both go through
it, so there is one mapping. It is pure: it decodes, derives (where an answer routes, which event
a dead letter holds) and returns statements; nothing touches the database until the store
applies a batch. A record that is not what its topic holds becomes a ``skipped`` row, never a
dead letter and never an error: a view must not stop on a foreign writer's bytes.

Every statement merges by an order-free rule (the first review item, the first verdict in its
partition, the latest placement, flags that only turn on, counters that only add: the report's
rows and hours, :mod:`.totals`), so rows come out the same whichever topic is applied first; the
store makes each record count once.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import orjson
from pydantic import BaseModel, ValidationError
from sqlalchemy import and_, case, exists, or_, update

from processors.avro.serde import AvroSerde, DecodeError
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.records import (
    REPLAY_HEADER,
    ControlState,
    Decision,
    Result,
    ReviewItem,
    ReviewReason,
    StageName,
    Trace,
    Verdict,
    VerdictKind,
    WorkItem,
)
from processors.runtime.dead_letter import Header
from processors.signing import Keyring
from processors.views import totals
from processors.views.schema import (
    EVERY_VERSION,
    control_states,
    placements,
    review_items,
    skipped,
    trace_steps,
    verdicts,
)
from processors.views.settling import SETTLING_STAGES, dead_letter_id, decision_suffixes
from processors.views.store import Applied, Op, Writer
from processors.workflow.verdict_log import refusal
from processors.workflow.workflow import Workflow

NO_ROUTE = (ReviewReason.invalid_output, ReviewReason.kill_switch)
"""Review reasons whose answer escalates nothing: none, or one that failed its checks."""

PLACE_RANK = {"decision": 0, "review": 1, "dead_letter": 2}


def scope_of(workflow: Workflow) -> str:
    """The views' name for a workflow in its namespace (``t1.support_ticket``)."""
    return workflow.spec(Role.triggers).name.removesuffix(f".{Role.triggers}")


def view_roles(workflow: Workflow) -> list[str]:
    """The declared names of the topics the views read."""
    suffixes = [*decision_suffixes(workflow, shadow=True), Role.review, Role.verdicts, Role.repair, Role.traces,
                Role.results, Role.dlq, Role.control]
    return [workflow.topic(suffix) for suffix in suffixes]


def route_of(workflow: Workflow, answer: str | None, event: str) -> str | None:
    """Where an answer routes with the workflow's routes; None for no answer."""
    return workflow.decide(orjson.loads(answer), orjson.loads(event))[1] if answer else None


class Rows:
    """The record → rows mapping of one workflow (see the module docstring)."""

    @cached_property
    def keyring(self) -> Keyring:
        """The keys verdicts are checked with, read once and only when a verdict comes (every catch-up
        builds its rows: most have no verdict to check)."""
        return Keyring.from_env()

    def __init__(self, workflow: Workflow, settings: KafkaSettings):
        self.workflow = workflow
        self.settings = settings
        self.scope = scope_of(workflow)
        self.target = workflow.escalation.route if workflow.escalation else None
        def reads(suffix: str, handle: Callable, model: type[BaseModel] | None) -> tuple[str, tuple]:
            spec = workflow.topics[workflow.topic(suffix)]
            return spec.name, (handle, model, spec.serde(settings) if model else None)

        self._handlers: dict[str, tuple[Callable, type[BaseModel] | None, AvroSerde | None]] = dict([
            *(reads(suffix, self._decision, Decision) for suffix in decision_suffixes(workflow)),
            reads(Role.shadow, self._shadow, Decision), reads(Role.review, self._review, ReviewItem),
            reads(Role.verdicts, self._verdict, Verdict), reads(Role.repair, self._repair, WorkItem),
            reads(Role.traces, self._trace, Trace), reads(Role.results, self._result, Result),
            reads(Role.control, self._control, ControlState), reads(Role.dlq, self._dead_letter, None)])
        self._control_topic = workflow.spec(Role.control).name
        self.topics = list(self._handlers)
        self._work_item_topics = {s.name for s in workflow.topics.values() if s.value_schema == "handoff/work_item"}
        self._work_items = workflow.spec(Role.classified).serde(settings)

    def of(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
           headers: dict[str, bytes | None], timestamp_ms: int) -> Applied:
        handle, model, serde = self._handlers[topic]
        record = Applied(topic, partition, offset)
        if model is None:
            record.ops = handle(value, {k: v.decode(errors="replace") for k, v in headers.items() if v is not None},
                                timestamp_ms)
            return record
        if topic == self._control_topic and (value is None or key != self.workflow.name.encode()):
            return record  # another workflow's state, or a tombstone
        try:
            decoded = model.model_validate(serde.decode(value))
        except (DecodeError, ValidationError) as exc:
            record.ops = [self._skipped(topic, partition, offset, str(exc).splitlines()[0])]
            return record
        record.ops = handle(decoded, record)
        return record

    # ---- one handler per topic ---------------------------------------------------------------

    def _review(self, item: ReviewItem, _at: Applied) -> list[Op]:
        scope, settles = self.scope, item.stage in SETTLING_STAGES
        route = None if item.reason in NO_ROUTE else route_of(self.workflow, item.answer, item.event)

        def write(w: Writer) -> None:
            key = and_(review_items.c.scope == scope, review_items.c.review_id == item.review_id)
            if w.add(review_items, {"scope": scope, "review_id": item.review_id, "event_id": item.event_id,
                                    "rank": int(item.reason != ReviewReason.event_rule),
                                    "created_at_ms": item.created_at_ms, "decided": False,
                                    "item": item.model_dump_json()}):
                decided = exists().where(verdicts.c.scope == scope, verdicts.c.review_id == item.review_id)
                w.execute(update(review_items).where(key, decided).values(decided=True))
            if settles:
                self._place(w, item.event_id, "review", item.reason, item.created_at_ms, item.replay, item.answer)
            for version in (item.prompt.version, EVERY_VERSION):
                fields = {"touched": True} | ({"review_at_ms": item.created_at_ms, "review_route": route,
                                               "settled_at_ms": item.created_at_ms} if settles else {})
                self._event(w, item.event_id, version, fields)

        return [write]

    def _verdict(self, verdict: Verdict, at: Applied) -> list[Op]:
        refused = refusal(verdict, self.keyring, strict=self.keyring.complete)
        if refused is not None:  # not accepted, so it claims nothing (the review stage dead-letters it)
            return [self._skipped(at.topic, at.partition, at.offset, f"{refused.reason}: {refused.message}")]
        scope, item = self.scope, verdict.item
        settles = item.stage in SETTLING_STAGES
        route = (route_of(self.workflow, verdict.answer, item.event)
                 if settles and verdict.verdict == VerdictKind.correct else None)

        def write(w: Writer) -> None:
            first = w.add(verdicts, {"scope": scope, "review_id": verdict.review_id, "partition_id": at.partition,
                                     "log_offset": at.offset, "verdict": verdict.model_dump_json()})
            if not first:
                return  # a later verdict on a decided item: void, it changes nothing
            w.execute(update(review_items).where(review_items.c.scope == scope,
                                                 review_items.c.review_id == verdict.review_id).values(decided=True))
            fields = {"verdicts": 1, "overrides": int(verdict.verdict != VerdictKind.approve)}
            if settles:
                fields |= {"verdict_at_ms": verdict.at_ms, "verdict_kind": verdict.verdict, "verdict_route": route}
            for version in (item.prompt.version, EVERY_VERSION):
                self._event(w, item.event_id, version, fields)

        return [write]

    def _decision(self, decision: Decision, at: Applied) -> list[Op]:
        """A decision on a route places its event; every decision, shadow ones too, counts in the report."""
        return [lambda w: self._place(w, decision.event_id, "decision", decision.route, decision.decided_at_ms,
                                      decision.replay, decision.answer), *self._shadow(decision, at)]

    def _shadow(self, decision: Decision, _at: Applied) -> list[Op]:
        fields = {"decided_at_ms": decision.decided_at_ms, "decision_source": decision.source,
                  "decision_route": decision.route, "model_latency_ms": decision.latency_ms,
                  "e2e_ms": (decision.decided_at_ms - decision.trigger_timestamp_ms
                             if decision.trigger_timestamp_ms else None),
                  "settled_at_ms": decision.decided_at_ms}
        return [self._both(decision.event_id, decision.prompt.version, fields)]

    def _repair(self, item: WorkItem, _at: Applied) -> list[Op]:
        return [self._both(item.event_id, item.prompt.version, {"repaired": True})]

    def _trace(self, trace: Trace, at: Applied) -> list[Op]:
        step = {"scope": self.scope, "partition_id": at.partition, "log_offset": at.offset, "run_id": trace.run_id,
                "at_ms": trace.at_ms, "trace": trace.model_dump_json()}
        kept = [lambda w: w.add(trace_steps, step)]
        if trace.step != StageName.classify or not trace.prompt:
            return kept
        return [*kept, self._both(trace.run_id, trace.prompt.version, {"tokens_in": trace.tokens_in,
                                                                "tokens_out": trace.tokens_out,
                                                                "cost_usd": trace.cost_usd})]

    def _result(self, result: Result, _at: Applied) -> list[Op]:
        escalation = self.workflow.escalation
        if escalation is None or result.outcome_type not in escalation.missed_outcomes or \
                result.route == escalation.route:
            return []
        return [self._both(result.event_id, result.prompt.version, {"missed": True})]

    def _control(self, state: ControlState, at: Applied) -> list[Op]:
        row = {"scope": self.scope, "log_offset": at.offset, "state": state.model_dump_json()}
        return [lambda w: w.add(control_states, row)]

    def _dead_letter(self, value: bytes | None, headers: dict[str, str], timestamp_ms: int) -> list[Op]:
        if headers.get(Header.stage) not in SETTLING_STAGES:
            return []
        event_id, version = dead_letter_id(self.workflow, self.settings, headers, value), None
        if headers.get(Header.original_topic) in self._work_item_topics:
            try:
                item = WorkItem.model_validate(self._work_items.decode(value))
                event_id, version = item.event_id, item.prompt.version
            except (DecodeError, ValidationError):
                pass  # identified by where it came from
        fields = {"dead_at_ms": timestamp_ms, "settled_at_ms": timestamp_ms}

        def write(w: Writer) -> None:
            place_id = dead_letter_id(self.workflow, self.settings, headers, value)
            self._place(w, place_id, "dead_letter", headers.get(Header.error_reason, "unknown"), timestamp_ms,
                        headers.get(REPLAY_HEADER))
            for each in ([version] if version is not None else []) + [EVERY_VERSION]:
                self._event(w, event_id, each, fields)

        return [write]

    # ---- the merge rules -----------------------------------------------------------------------

    def _skipped(self, topic: str, partition: int, offset: int, error: str) -> Op:
        row = {"scope": self.scope, "topic": topic, "partition_id": partition, "log_offset": offset, "error": error}
        return lambda w: w.add(skipped, row)

    def _place(self, w: Writer, event_id: str, kind: str, detail: str, at_ms: int, replay: str | None,
               answer: str | None = None) -> None:
        """The latest place wins; at the same time a dead letter beats a review item beats a decision."""
        def later(table, new) -> dict:
            wins = or_(new.at_ms > table.c.at_ms, and_(new.at_ms == table.c.at_ms, new.rank >= table.c.rank))
            return {c: case((wins, getattr(new, c)), else_=table.c[c]) for c in ("kind", "detail", "at_ms", "rank",
                                                                                 "replay", "answer")}

        w.merge(placements, {"scope": self.scope, "event_id": event_id, "kind": kind, "detail": str(detail),
                             "at_ms": at_ms, "rank": PLACE_RANK[kind], "replay": replay, "answer": answer}, later)

    def _both(self, event_id: str, version: str, fields: dict) -> Op:
        """The event's row under its prompt version and under all versions."""
        def write(w: Writer) -> None:
            for each in (version, EVERY_VERSION):
                self._event(w, event_id, each, fields)

        return write

    def _event(self, w: Writer, event_id: str, version: str, fields: dict) -> None:
        totals.apply(w, self.scope, event_id, version, fields, self.target)
