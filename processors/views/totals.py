"""The report's aggregates: what each event adds to its hours, kept as its row changes.

``handoff report`` (:mod:`processors.ops.report`, which defines every figure) must not grow with
history, so it never reads one row per event. The views keep, per workflow, prompt version (and
all versions) and hour, the counts behind its figures (``report_hours``) and the model decisions'
latency histograms (``report_latency``, :mod:`.histogram`, per day too); the report sums the hours
of its window (for the histograms: its whole days, and its hours before the first).

**One event's part.** An event's ``report_events`` row says what the report counts for it, and
that depends on where the window starts (``since``): its decision counts when decided at or after
``since``, its review item when written at or after, the event at all when it settled at or after.
So its part is a step function of ``since`` that changes only at the row's times (decision,
settling review item, dead letter). :func:`counts` evaluates the report's definitions at one
``since``; :func:`contribution` evaluates them at each of the row's times ``t1 < … < tn`` and
puts, in the hour of ``tk``, ``counts(tk) - counts(tk+1)``. Summing the hours from any hour
boundary ``H`` on then gives exactly ``counts(H)``: a window is whole hours, and within them the
figures are the ones the per-event evaluation gives.

**Kept as rows change.** When a record changes an event's row (a decision after review, an
override, an outcome joined), :func:`apply` reads the row, merges the record in by the order-free
rules, writes it, and adds ``contribution(new) - contribution(old)`` to the hours, all in the
store's batch transaction: a record the store skips (applied before) changes no hour either.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, delete, insert, select, update

from processors.records import DecisionSource, VerdictKind
from processors.views.histogram import bin_of
from processors.views.schema import recount_due as due
from processors.views.schema import report_events, report_hours, report_latency
from processors.views.store import ViewStore, Writer

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
E2E, MODEL = "e2e", "model"

LATEST = {"decided_at_ms": ("decision_source", "decision_route", "model_latency_ms", "e2e_ms"),
          "review_at_ms": ("review_route",), "dead_at_ms": (), "verdict_at_ms": ("verdict_kind", "verdict_route")}
"""Groups of report_events columns that move together: the latest by their time column wins."""
FLAGS = ("touched", "repaired", "missed")
SUMS = ("verdicts", "overrides", "tokens_in", "tokens_out", "cost_usd")
EMPTY = {c.name: c.default.arg if c.default is not None else None for c in report_events.columns}
"""A report_events row before any record: no times, flags off, sums at 0."""

Part = dict[tuple, float]
"""An event's counts by where they go: ``(hour_ms, column)`` of report_hours, ``(hour_ms, metric, bin)``
of report_latency."""


def hour_of(at_ms: int) -> int:
    """The start of the hour ``at_ms`` falls in."""
    return at_ms - at_ms % HOUR_MS


def merged(row: dict, fields: dict) -> dict:
    """``row`` having taken ``fields``: the latest of each group, flags that turn on, sums that add."""
    out = dict(row)
    for when, columns in LATEST.items():
        if when in fields and (out[when] is None or fields[when] >= out[when]):
            out |= {c: fields[c] for c in (when, *columns)}
    if "settled_at_ms" in fields and (out["settled_at_ms"] is None or fields["settled_at_ms"] > out["settled_at_ms"]):
        out["settled_at_ms"] = fields["settled_at_ms"]
    out |= {c: bool(out[c] or fields[c]) for c in FLAGS if c in fields}
    out |= {c: out[c] + fields[c] for c in SUMS if c in fields}
    return out


def _since(at_ms: int | None, since: int) -> bool:
    return at_ms is not None and at_ms >= since


def counts(row: dict, since: int, target: str | None) -> dict:
    """What the report counts for this event in a window starting at ``since`` (the definitions of
    :mod:`processors.ops.report`): report_hours columns → amount, ``(metric, bin)`` → 1."""
    if not _since(row["settled_at_ms"], since):
        return {}
    decided, reviewed = _since(row["decided_at_ms"], since), _since(row["review_at_ms"], since)
    by_model = decided and row["decision_source"] == DecisionSource.model
    model_route = row["decision_route"] if by_model else row["review_route"] if reviewed else None
    kind = row["verdict_kind"]
    truth = (target if row["missed"] else model_route if kind == VerdictKind.approve
             else None if kind == VerdictKind.reject else row["verdict_route"] if kind == VerdictKind.correct
             else row["decision_route"] if by_model else None)
    needed = target is not None and truth == target
    llm = row["tokens_in"] + row["tokens_out"] > 0  # a model that spends no token answered offline (embedded)
    out = {"events": 1, "decided": int(decided), "automated": int(by_model and not row["touched"]),
           "reviewed": int(reviewed), "dead_lettered": int(_since(row["dead_at_ms"], since)),
           "schema_failures": int(row["repaired"]), "verdicts": row["verdicts"], "overrides": row["overrides"],
           "needed": int(needed), "caught": int(needed and model_route == target),
           "judged": int(bool(row["missed"]) or kind is not None), "tokens_in": row["tokens_in"],
           "tokens_out": row["tokens_out"], "cost_usd": row["cost_usd"],
           "offline": int(by_model and not llm), "online": int(by_model and llm)}
    if by_model:  # a reviewed decision's wait for a person is not latency
        for metric, value in ((E2E, row["e2e_ms"]), (MODEL, row["model_latency_ms"])):
            if value is not None:
                out[(metric, bin_of(value))] = 1
    return out


def contribution(row: dict, target: str | None) -> Part:
    """The event's counts spread over the hours of its times (see the module docstring)."""
    times = {row[c] for c in ("decided_at_ms", "review_at_ms", "dead_at_ms", "settled_at_ms")} - {None}
    part: Part = {}
    later: dict = {}
    for at in sorted(times, reverse=True):
        now = counts(row, at, target)
        hour = hour_of(at)
        for name in now.keys() | later.keys():
            step = now.get(name, 0) - later.get(name, 0)
            if step:
                where = (hour, *name) if isinstance(name, tuple) else (hour, name)
                part[where] = part.get(where, 0) + step
        later = now
    return part


def add_part(w: Writer, scope: str, version: str, part: Part, sign: int = 1) -> None:
    """Add (``sign`` -1: take away) an event's part to its hours, when the batch ends."""
    hours: dict[int, dict[str, float]] = {}
    for where, amount in part.items():
        if len(where) == 2:
            hours.setdefault(where[0], {})[where[1]] = sign * amount
        else:
            hour, metric, bin_ = where
            for span in (HOUR_MS, DAY_MS):
                w.add_up(report_latency, (scope, span, hour - hour % span, version, metric, bin_),
                         {"decisions": sign * amount})
    for hour, amounts in hours.items():
        w.add_up(report_hours, (scope, version, hour), amounts)


_KEY = (report_events.c.scope == bindparam("k_scope"), report_events.c.version == bindparam("k_version"),
        report_events.c.event_id == bindparam("k_event"))
_READ, _INSERT, _UPDATE = select(report_events).where(*_KEY), insert(report_events), update(report_events).where(*_KEY)
"""The row's statements, built once: bound per call, they skip SQLAlchemy's per-statement building."""
_VALUES = [c.name for c in report_events.columns if not c.primary_key]


def apply(w: Writer, scope: str, event_id: str, version: str, fields: dict, target: str | None) -> None:
    """Merge ``fields`` into the event's row and move its part in the hours from the old row's to the new's."""
    key = {"k_scope": scope, "k_version": version, "k_event": event_id}
    old = w.conn.execute(_READ, key).mappings().first()
    row = merged(dict(old) if old else EMPTY | {"scope": scope, "version": version, "event_id": event_id}, fields)
    if old is None:
        w.conn.execute(_INSERT, row)
    else:
        w.conn.execute(_UPDATE, key | {c: row[c] for c in _VALUES})
    before, after = (contribution(dict(old), target) if old else {}), contribution(row, target)
    add_part(w, scope, version, {k: after.get(k, 0) - before.get(k, 0) for k in after.keys() | before.keys()
                                 if after.get(k, 0) != before.get(k, 0)})


def recount(w: Writer, scope: str, target: str | None, rows: Iterable[dict] | None = None) -> None:
    """Work the scope's hours out again from its report_events rows: for a history written straight
    into the rows (the bench), or rows kept before the hours existed."""
    for table in (report_hours, report_latency):
        w.execute(delete(table).where(table.c.scope == scope))
    if rows is None:
        rows = w.conn.execute(select(report_events).where(report_events.c.scope == scope)
                              .execution_options(yield_per=10_000)).mappings()
    for row in rows:
        add_part(w, scope, row["version"], contribution(row, target))
    w.sum_up()


def recount_due(store: ViewStore, scope: str, target: str | None) -> None:
    """Work out the scope's hours once when its rows were kept before the hours existed (the store
    marks such scopes when it creates the hours' tables); one indexed look-up otherwise. Order-free:
    records applied before it moved hours the recount works out again from their rows."""
    with store.read() as conn:
        if conn.execute(select(due).where(due.c.scope == scope)).first() is None:
            return
    with store.writing() as w:
        if w.conn.execute(select(due).where(due.c.scope == scope)).first() is not None:
            recount(w, scope, target)
            w.execute(delete(due).where(due.c.scope == scope))
