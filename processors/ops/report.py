"""``handoff report``: how each prompt version of a workflow did, computed from its topics alone.

The report reads what the stages, the reviewers and the business systems already wrote, with
``tail.snapshot`` (read committed, from the beginning, no consumer group: it never moves a
stage's offsets), and joins it by event id:

* ``<wf>.decisions.<route>`` and ``<wf>.shadow``: decisions (route, ``source`` model or review,
  prompt version, trigger and decision times, model latency). A shadow decision counts as a
  decision: shadow mode runs a version precisely to measure it, acting on nothing;
* ``<wf>.review``: review items (reason, the stage that wrote it, the model's answer);
* ``<wf>.verdicts``: reviewers' verdicts, joined to their item by ``review_id``; only the first
  verdict per review id counts (it is the one that wins);
* ``<wf>.repair``: work items whose first answer failed validation;
* ``<wf>.dlq``: dead letters (the headers name the stage; the original bytes the event);
* ``<wf>.traces``: classify traces, the tokens and cost of every model call — the honest source
  of spend, since answers that end in review cost money too;
* ``<wf>.results``: decisions joined with business outcomes.

**Which events.** An event *settles* where it leaves the automated path: a decision, a review
item written by classify, validate or route (not a risky-action approval: execute writes that
for an event already decided), or a dead letter written by those stages. ``since`` keeps the
events with a settling record written at or after it (decision ``decided_at_ms``, review item
``created_at_ms``, dead letter record time); what else is known about them — repairs, verdicts,
outcomes, spend — counts whenever it was written. Events still in flight are not counted.

**Per prompt version V** (every record carries the prompt version that produced it), over the
events that settled with V:

* ``events`` (N): distinct event ids settled with V.
* automation rate = events the model decided (``source=model``) that no person touched — no
  review item of any reason, a risky-action approval included — / N.
* review rate = events sent to review by classify, validate or route / N.
* review override rate = first verdicts that ``correct`` or ``reject`` / first verdicts, on the
  review items of these events (risky-action approvals included).
* escalation recall = |escalated ∩ needed| / |needed| for the workflow's ``escalation.route``.
  *Escalated*: the model's answer leads there — a model decision's route, or a review item's
  answer routed with ``workflow.decide`` (today's routes); an invalid or absent answer
  (``invalid_output``, ``kill_switch``) escalates nothing. *Needed*, strongest evidence first:
  an outcome in ``escalation.missed_outcomes`` reported for a decision on another route → needed;
  else the verdict on the event's review item: ``correct`` → where the corrected answer routes,
  ``approve`` → where the model's answer routes, ``reject`` → not needed; else a model decision
  nobody contradicted is taken as right. Events waiting for a verdict and dead letters are in
  neither set: their truth is not known yet. *Judged* counts the events a verdict or an outcome
  decided on: with none, recall is only the model's word about itself (100% by construction).
* schema failure rate = events whose first answer failed validation (not JSON, the output
  schema, or a business rule: they went to ``<wf>.repair``) / N.
* dead-letter rate = events dead-lettered by classify, validate or route / N.
* latency p50/p95: trigger to decision (``decided_at_ms - trigger_timestamp_ms``, queueing
  included) and the model call (``latency_ms``), over the model's decisions (a reviewed
  decision's wait for a person is not latency). Linear interpolation between ranks.
* tokens and cost per completed workflow = every classify call's tokens and cost for these
  events with V (repairs and answers that ended in review or the dead letters included, from
  the traces) / events decided with V (by the model or after review).

**All versions** (the total row): the same figures with the version ignored, plus the dead
letters written before any answer existed — a trigger the model never answered, bytes that are
not Avro. They carry no prompt version, so they count only there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import orjson
from pydantic import BaseModel, computed_field

from processors.avro.serde import DecodeError
from processors.clock import now_ms
from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.offline.outputs import SETTLING_STAGES, dead_letter_id, dead_letters, decision_suffixes, read
from processors.records import (
    Decision,
    DecisionSource,
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
from processors.workflow.verdict_log import first_verdicts
from processors.workflow.workflow import Workflow

ALL_VERSIONS = "all versions"
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: int | None = None) -> int:
    """Epoch ms from an ISO time (UTC unless it names a zone) or a span back from now (``30m``, ``2h``, ``7d``)."""
    span = _SPAN.match(text.strip())
    if span:
        return (now or now_ms()) - int(float(span.group(1)) * _UNIT_S[span.group(2)] * 1000)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: expected an ISO time such as 2026-05-29T10:00 (UTC unless it "
                         f"says otherwise) or a span back from now such as 30m, 2h, 7d") from None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


class Figures(BaseModel):
    """One row of the report: the counts behind each figure, and the figures (None when nothing to divide)."""

    prompt_version: str
    events: int
    decided: int
    automated: int
    reviewed: int
    dead_lettered: int
    schema_failures: int
    verdicts: int
    overrides: int
    escalations_needed: int | None
    escalations_caught: int | None
    escalations_judged: int | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    model_p50_ms: float | None
    model_p95_ms: float | None
    tokens_in: int
    tokens_out: int
    cost_usd: float

    @computed_field
    def automation_rate(self) -> float | None:
        return _ratio(self.automated, self.events)

    @computed_field
    def review_rate(self) -> float | None:
        return _ratio(self.reviewed, self.events)

    @computed_field
    def review_override_rate(self) -> float | None:
        return _ratio(self.overrides, self.verdicts)

    @computed_field
    def escalation_recall(self) -> float | None:
        return _ratio(self.escalations_caught, self.escalations_needed)

    @computed_field
    def schema_failure_rate(self) -> float | None:
        return _ratio(self.schema_failures, self.events)

    @computed_field
    def dead_letter_rate(self) -> float | None:
        return _ratio(self.dead_lettered, self.events)

    @computed_field
    def tokens_per_decision(self) -> float | None:
        return _ratio(self.tokens_in + self.tokens_out, self.decided)

    @computed_field
    def cost_per_decision_usd(self) -> float | None:
        return _ratio(self.cost_usd, self.decided)


class Report(BaseModel):
    workflow: str
    since_ms: int | None
    escalation_route: str | None
    versions: list[Figures]
    total: Figures

    def render(self) -> str:
        since = ("events settled since " + datetime.fromtimestamp(self.since_ms / 1000, UTC).isoformat(timespec="seconds")
                 if self.since_ms is not None else "all events")
        rows = [[name for name, _ in COLUMNS]]
        rows += [[cell(figures) for _, cell in COLUMNS] for figures in [*self.versions, self.total]]
        widths = [max(len(row[index]) for row in rows) for index in range(len(COLUMNS))]
        lines = [f"{self.workflow}: {since}; escalation route: {self.escalation_route or '- (none declared)'}"]
        lines += ["  ".join(text.ljust(width) if index == 0 else text.rjust(width)
                            for index, (text, width) in enumerate(zip(row, widths))) for row in rows]
        lines.append("(rates over the events that settled with each version; definitions: processors/ops/report.py; "
                     f"'{ALL_VERSIONS}' also counts dead letters that never had an answer)")
        return "\n".join(lines)


def _ratio(part: float | None, whole: float | None) -> float | None:
    return part / whole if part is not None and whole else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ms(p50: float | None, p95: float | None, digits: int = 0) -> str:
    return "-" if p50 is None else f"{p50:.{digits}f}/{p95:.{digits}f}"


COLUMNS: list[tuple[str, Callable[[Figures], str]]] = [
    ("prompt version", lambda f: f.prompt_version),
    ("events", lambda f: str(f.events)),
    ("automated", lambda f: _pct(f.automation_rate)),
    ("review", lambda f: _pct(f.review_rate)),
    ("overridden", lambda f: _pct(f.review_override_rate)),
    ("esc. recall", lambda f: _pct(f.escalation_recall)),
    ("judged", lambda f: "-" if f.escalations_judged is None else str(f.escalations_judged)),
    ("schema fail", lambda f: _pct(f.schema_failure_rate)),
    ("dead", lambda f: _pct(f.dead_letter_rate)),
    ("p50/p95 ms", lambda f: _ms(f.latency_p50_ms, f.latency_p95_ms)),
    ("model p50/p95 ms", lambda f: _ms(f.model_p50_ms, f.model_p95_ms, 1)),  # an embedded model takes a ms
    ("tokens/decision", lambda f: "-" if f.tokens_per_decision is None else f"{f.tokens_per_decision:.0f}"),
    ("USD/decision", lambda f: "-" if f.cost_per_decision_usd is None else f"{f.cost_per_decision_usd:.6f}"),
]


@dataclass(frozen=True)
class DeadLetterSeen:
    """A settling dead letter: its event (or where its bytes came from), the prompt version if an answer existed."""

    event_id: str
    version: str | None
    at_ms: int


@dataclass
class Evidence:
    """Everything the report joins, read once from the workflow's topics."""

    decisions: list[Decision]
    reviews: list[ReviewItem]
    verdicts: list[Verdict]  # the first per review id, in log order
    repairs: list[WorkItem]
    dead: list[DeadLetterSeen]
    spend: list[Trace]  # classify traces
    results: list[Result]

    @classmethod
    def read(cls, workflow: Workflow, settings: KafkaSettings) -> Evidence:
        """The topics are read side by side: each read spends most of its time waiting for the broker."""
        with ThreadPoolExecutor(8) as pool:
            def fetch(suffix: str, model: type[BaseModel]) -> Future:
                return pool.submit(read, workflow, settings, suffix, model)

            decisions = [fetch(suffix, Decision) for suffix in decision_suffixes(workflow, shadow=True)]
            reviews, repairs = fetch(Role.review, ReviewItem), fetch(Role.repair, WorkItem)
            traces, results = fetch(Role.traces, Trace), fetch(Role.results, Result)
            verdicts = pool.submit(_first_verdicts, workflow, settings)
            dead = pool.submit(_dead_letters, workflow, settings)
        return cls(decisions=[d for future in decisions for d in future.result()], reviews=reviews.result(),
                   verdicts=verdicts.result(), repairs=repairs.result(), dead=dead.result(),
                   spend=[t for t in traces.result() if t.step == StageName.classify and t.prompt], results=results.result())


def _first_verdicts(workflow: Workflow, settings: KafkaSettings) -> list[Verdict]:
    """The verdict that wins per review id, in log order, by the review queue's own rule."""
    spec = workflow.spec(Role.verdicts)
    return [logged.verdict for logged in first_verdicts(snapshot(settings, spec.name), spec.serde(settings)).values()]


def _dead_letters(workflow: Workflow, settings: KafkaSettings) -> list[DeadLetterSeen]:
    """Dead letters of the settling stages; a work item's bytes say its event and prompt version."""
    work_item_topics = {spec.name for spec in workflow.topics.values() if spec.value_schema == "handoff/work_item"}
    serde = workflow.spec(Role.classified).serde(settings)  # the work-item topics' schema
    out = []
    for msg, headers in dead_letters(workflow, settings):
        if headers.get(Header.stage) not in SETTLING_STAGES:
            continue
        at_ms = msg.timestamp()[1]
        if headers.get(Header.original_topic) in work_item_topics:
            try:
                item = WorkItem.model_validate(serde.decode(msg.value()))
                out.append(DeadLetterSeen(item.event_id, item.prompt.version, at_ms))
                continue
            except DecodeError:
                pass  # identified by where it came from, below
        out.append(DeadLetterSeen(dead_letter_id(workflow, settings, headers, msg.value()), None, at_ms))
    return out


def build(workflow: Workflow, settings: KafkaSettings, since_ms: int | None = None) -> Report:
    """Read the workflow's topics and compute the report (see the module docstring for every figure)."""
    return compute(workflow, Evidence.read(workflow, settings), since_ms)


def compute(workflow: Workflow, evidence: Evidence, since_ms: int | None = None) -> Report:
    since = since_ms or 0
    versions = sorted({d.prompt.version for d in evidence.decisions if d.decided_at_ms >= since}
                      | {r.prompt.version for r in evidence.reviews
                         if r.stage in SETTLING_STAGES and r.created_at_ms >= since}
                      | {d.version for d in evidence.dead if d.version is not None and d.at_ms >= since})
    return Report(workflow=workflow.name, since_ms=since_ms,
                  escalation_route=workflow.escalation.route if workflow.escalation else None,
                  versions=[_figures(workflow, evidence, version, since) for version in versions],
                  total=_figures(workflow, evidence, None, since))


def _figures(workflow: Workflow, evidence: Evidence, version: str | None, since: int) -> Figures:
    """One row: ``version`` None is the all-versions row."""

    def mine(of: str | None) -> bool:
        return version is None or of == version

    decisions = {d.event_id: d for d in evidence.decisions if mine(d.prompt.version) and d.decided_at_ms >= since}
    reviews = {r.event_id: r for r in evidence.reviews
               if r.stage in SETTLING_STAGES and mine(r.prompt.version) and r.created_at_ms >= since}
    dead = {d.event_id for d in evidence.dead if mine(d.version) and d.at_ms >= since}
    settled = decisions.keys() | reviews.keys() | dead

    touched = {r.event_id for r in evidence.reviews if mine(r.prompt.version)}
    by_model = {e: d for e, d in decisions.items() if d.source == DecisionSource.model}
    items = {r.review_id: r for r in evidence.reviews if mine(r.prompt.version) and r.event_id in settled}
    verdicts = [(v, items[v.review_id]) for v in evidence.verdicts if v.review_id in items]
    spend = [t for t in evidence.spend if mine(t.prompt.version) and t.run_id in settled]
    results = [r for r in evidence.results if mine(r.prompt.version) and r.event_id in settled]
    escalations = _escalations(workflow, by_model, reviews, verdicts, results)
    latency = _percentiles(d.decided_at_ms - d.trigger_timestamp_ms for d in by_model.values() if d.trigger_timestamp_ms)
    model = _percentiles(d.latency_ms for d in by_model.values())
    return Figures(
        prompt_version=version or ALL_VERSIONS, events=len(settled), decided=len(decisions),
        automated=len(by_model.keys() - touched), reviewed=len(reviews), dead_lettered=len(dead),
        schema_failures=len({w.event_id for w in evidence.repairs if mine(w.prompt.version)} & settled),
        verdicts=len(verdicts), overrides=sum(v.verdict != VerdictKind.approve for v, _ in verdicts),
        escalations_needed=escalations.needed, escalations_caught=escalations.caught,
        escalations_judged=escalations.judged,
        latency_p50_ms=latency[0], latency_p95_ms=latency[1], model_p50_ms=model[0], model_p95_ms=model[1],
        tokens_in=sum(t.tokens_in for t in spend), tokens_out=sum(t.tokens_out for t in spend),
        cost_usd=sum(t.cost_usd for t in spend))


class Escalations(NamedTuple):
    """Counts behind escalation recall; all None when the workflow declares no escalation route."""

    needed: int | None = None
    caught: int | None = None
    judged: int | None = None
    """Events a verdict or an outcome judged (escalation needed or not); the rest with a known need
    are the model's own decisions, taken as right — with none judged, recall is only the model's word."""


def _escalations(workflow: Workflow, by_model: dict[str, Decision], reviews: dict[str, ReviewItem],
                 verdicts: list[tuple[Verdict, ReviewItem]], results: list[Result]) -> Escalations:
    """Needed, caught and judged escalations by the evidence rules of the module docstring."""
    if workflow.escalation is None:
        return Escalations()
    target = workflow.escalation.route
    model_route = {e: _route(workflow, r.answer, r.event) for e, r in reviews.items()
                   if r.reason not in (ReviewReason.invalid_output, ReviewReason.kill_switch)}
    model_route |= {e: d.route for e, d in by_model.items()}
    truth: dict[str, str | None] = {e: d.route for e, d in by_model.items()}  # uncontradicted: taken as right
    judged = set()
    for verdict, item in verdicts:
        if item.stage not in SETTLING_STAGES:
            continue  # a risky-action approval judges an action, not the route
        if verdict.verdict == VerdictKind.correct:
            truth[item.event_id] = _route(workflow, verdict.answer, item.event)
        elif verdict.verdict == VerdictKind.approve:
            truth[item.event_id] = model_route.get(item.event_id)
        else:
            truth[item.event_id] = None
        judged.add(item.event_id)
    for result in results:
        if result.outcome_type in workflow.escalation.missed_outcomes and result.route != target:
            truth[result.event_id] = target
            judged.add(result.event_id)
    needed = {e for e, route in truth.items() if route == target}
    return Escalations(len(needed), sum(model_route.get(e) == target for e in needed), len(judged))


def _route(workflow: Workflow, answer: str | None, event: str) -> str | None:
    """Where an answer routes with today's routes; None for no answer."""
    return workflow.decide(orjson.loads(answer), orjson.loads(event))[1] if answer else None


def _percentiles(values: Iterable[float]) -> tuple[float | None, float | None]:
    data = list(values)
    if not data:
        return None, None
    p50, p95 = np.percentile(data, [50, 95])
    return float(p50), float(p95)
