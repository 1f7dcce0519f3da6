"""``handoff report``: how each prompt version of a workflow did, computed from the views.

The report counts what the stages, the reviewers and the business systems already wrote. The
views (:mod:`processors.views`) keep it joined by event id as it arrives, one row per event and
prompt version (``report_events``, and one per event for all versions), and from those rows the
counts below per prompt version and hour, as the rows change (:mod:`processors.views.totals`), so
the report is two sums over the hours of its window, however long the history (the command first
catches the views up: :func:`~processors.views.catch_up.catch_up`). Where an answer
routes is worked out when the view applies the record, with the routes of that time. The inputs:

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
events with a settling record (decision ``decided_at_ms``, review item ``created_at_ms``, dead
letter record time) written at or after the start of the hour ``since`` falls in: the views count
by the hour, so ``--since 30m`` at 10:40 reports from 10:00, and the report says so. What else
is known about them — repairs, verdicts, outcomes, spend — counts whenever it was written.
Events still in flight are not counted.

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
  decision's wait for a person is not latency). Linear interpolation between ranks, over the
  values' log-spaced histogram (:mod:`processors.views.histogram`): within 4.3% of the exact
  percentile.
* tokens and cost per completed workflow = every classify call's tokens and cost for these
  events with V (repairs and answers that ended in review or the dead letters included, from
  the traces) / events decided with V (by the model or after review).
* cascade: of the model's decisions, *offline* = those whose event spent no token (an embedded model
  answered: a cascade's first tier), *online* = the rest (an LLM answered). When a version has both,
  the report prints the offline share and the saving against an all-LLM run of the same events,
  estimated as offline × (cost / online): what the offline answers would have cost at the price
  the LLM answers did cost (``make bench`` measures the same saving exactly, with both runs made).

**All versions** (the total row): the same figures with the version ignored, plus the dead
letters written before any answer existed — a trigger the model never answered, bytes that are
not Avro. They carry no prompt version, so they count only there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BaseModel, computed_field
from sqlalchemy import Connection, cast, func, select

from processors.clock import now_ms
from processors.kafka.settings import KafkaSettings
from processors.views.catch_up import catch_up
from processors.views.histogram import percentiles
from processors.views.rows import scope_of
from processors.views.schema import EVERY_VERSION, REPORT_COUNTS, report_hours, report_latency
from processors.views.store import ViewStore, open_store
from processors.views.totals import DAY_MS, E2E, HOUR_MS, MODEL, hour_of
from processors.workflow.workflow import Workflow

ALL_VERSIONS = "all versions"
QUANTILES = (0.5, 0.95)
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
    offline: int = 0
    """Model decisions answered without an LLM token (an embedded model, a cascade's first tier)."""
    online: int = 0
    """Model decisions whose calls spent tokens (an LLM answered)."""

    @computed_field
    def offline_share(self) -> float | None:
        return _ratio(self.offline, self.offline + self.online)

    @computed_field
    def cascade_saved_usd(self) -> float | None:
        """What the offline answers would have cost an LLM, at this version's cost per LLM-answered event
        (None unless both kinds answered: a cascade)."""
        return self.offline * self.cost_usd / self.online if self.offline and self.online else None

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
        for f in self.versions:
            if f.cascade_saved_usd is not None:
                lines.append(f"cascade {f.prompt_version}: {f.offline_share:.1%} of the model's decisions answered "
                             f"offline ({f.offline} of {f.offline + f.online}); an all-LLM run would have cost about "
                             f"{f.cascade_saved_usd:.4f} USD more ({f.cost_usd + f.cascade_saved_usd:.4f} instead of "
                             f"{f.cost_usd:.4f})")
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


def build(workflow: Workflow, settings: KafkaSettings, since_ms: int | None = None,
          store: ViewStore | None = None) -> Report:
    """Catch the views up and compute the report (see the module docstring for every figure)."""
    store = store or open_store()
    catch_up(workflow, settings, store)
    return compute(workflow, store, since_ms)


def compute(workflow: Workflow, store: ViewStore, since_ms: int | None = None) -> Report:
    """The report from the views as they are: sums over the hours of the window, whole hours from
    the one ``since_ms`` falls in (:mod:`processors.views.totals`)."""
    start, scope = hour_of(since_ms) if since_ms else None, scope_of(workflow)
    target = workflow.escalation.route if workflow.escalation else None
    hours = [report_hours.c.scope == scope] + ([report_hours.c.hour_ms >= start] if start is not None else [])
    with store.read() as conn:
        hour = report_hours.c
        rows = {row.version: row for row in conn.execute(
            select(hour.version, *(_sum(hour[c]).label(c) for c in (*REPORT_COUNTS, "cost_usd")))
            .where(*hours).group_by(hour.version).having(func.sum(hour.events) > 0))}
        bins = _bins(conn, scope, start)
    versions = sorted(v for v in rows if v != EVERY_VERSION)
    figures = [_figures(version, rows.get(version), bins, target) for version in [*versions, EVERY_VERSION]]
    return Report(workflow=workflow.name, since_ms=start, escalation_route=target, versions=figures[:-1],
                  total=figures[-1])


def _bins(conn: Connection, scope: str, start: int | None) -> dict[tuple[str, str], dict[int, int]]:
    """Per (version, metric) the decisions per latency bin from ``start`` (an hour) on: the window's
    whole days from the day histograms, its hours before the first whole day from the hour ones."""
    latency = report_latency.c
    first_day = -(-start // DAY_MS) * DAY_MS if start is not None else None
    spans = [(DAY_MS, [latency.start_ms >= first_day] if first_day is not None else [])]
    if start is not None and start < first_day:
        spans.append((HOUR_MS, [latency.start_ms >= start, latency.start_ms < first_day]))
    bins: dict[tuple[str, str], dict[int, int]] = {}
    for span, where in spans:
        for version, metric, bin_, decisions in conn.execute(
                select(latency.version, latency.metric, latency.bin, _sum(latency.decisions))
                .where(latency.scope == scope, latency.span_ms == span, *where)
                .group_by(latency.version, latency.metric, latency.bin)):
            counted = bins.setdefault((version, metric), {})
            counted[bin_] = counted.get(bin_, 0) + decisions
    return bins


def _sum(column):
    """A column's sum in its own type (PostgreSQL sums a bigint as a numeric)."""
    return cast(func.sum(column), column.type)


def _figures(version: str, row, bins: dict[tuple[str, str], dict[int, int]], target: str | None) -> Figures:
    """One row of the report; ``version`` EVERY_VERSION is the all-versions row."""
    if row is None:  # nothing settled
        return Figures(prompt_version=ALL_VERSIONS, events=0, decided=0, automated=0, reviewed=0, dead_lettered=0,
                       schema_failures=0, verdicts=0, overrides=0, escalations_needed=None, escalations_caught=None,
                       escalations_judged=None, latency_p50_ms=None, latency_p95_ms=None, model_p50_ms=None,
                       model_p95_ms=None, tokens_in=0, tokens_out=0, cost_usd=0.0)
    latency = percentiles(bins.get((version, E2E), {}), QUANTILES) or (None, None)
    model = percentiles(bins.get((version, MODEL), {}), QUANTILES) or (None, None)
    escalations = target is not None
    return Figures(
        prompt_version=version or ALL_VERSIONS, events=row.events, decided=row.decided, automated=row.automated,
        reviewed=row.reviewed, dead_lettered=row.dead_lettered, schema_failures=row.schema_failures,
        verdicts=row.verdicts, overrides=row.overrides,
        escalations_needed=row.needed if escalations else None, escalations_caught=row.caught if escalations else None,
        escalations_judged=row.judged if escalations else None,
        latency_p50_ms=latency[0], latency_p95_ms=latency[1], model_p50_ms=model[0], model_p95_ms=model[1],
        tokens_in=row.tokens_in, tokens_out=row.tokens_out, cost_usd=row.cost_usd, offline=row.offline,
        online=row.online)


def by_day(workflow: Workflow, store: ViewStore, since_ms: int | None = None) -> dict[str, list[tuple[int, Figures]]]:
    """Per prompt version, the figures of each UTC day from ``since_ms`` on, oldest first (the console's
    charts): the day's hours summed, the latency percentiles from the day histograms."""
    scope, target = scope_of(workflow), workflow.escalation.route if workflow.escalation else None
    start = since_ms // DAY_MS * DAY_MS if since_ms else 0
    hour, latency = report_hours.c, report_latency.c
    days: dict[tuple[str, int], dict[str, float]] = {}
    bins: dict[tuple[str, int], dict[tuple[str, str], dict[int, int]]] = {}
    with store.read() as conn:
        for row in conn.execute(select(hour).where(hour.scope == scope, hour.hour_ms >= start,
                                                   hour.version != EVERY_VERSION)):
            summed = days.setdefault((row.version, row.hour_ms // DAY_MS * DAY_MS), {})
            for name in (*REPORT_COUNTS, "cost_usd"):
                summed[name] = summed.get(name, 0) + getattr(row, name)
        for version, day, metric, bin_, decisions in conn.execute(
                select(latency.version, latency.start_ms, latency.metric, latency.bin, latency.decisions)
                .where(latency.scope == scope, latency.span_ms == DAY_MS, latency.start_ms >= start)):
            bins.setdefault((version, day), {}).setdefault((version, metric), {})[bin_] = decisions
    series: dict[str, list[tuple[int, Figures]]] = {}
    for (version, day), summed in sorted(days.items(), key=lambda kv: kv[0][1]):
        if summed["events"]:
            row = type("Day", (), summed)
            series.setdefault(version, []).append((day, _figures(version, row, bins.get((version, day), {}),
                                                                 target)))
    return series
