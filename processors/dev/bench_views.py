"""Bench of the views: ``review list`` and ``handoff report`` latency at 10k, 100k and 1M settled events.

A history is written straight into a views database of its own (``.local/bench/views.db`` unless
given a URL), as the views stage would have left it, not by running events through a model (the
database makes the rows from a counter):
per event its report rows (its prompt version's and the all-versions one) and its placement, one
event settling every ``SPACING_MS`` (1M events: 11.6 days, 278 hours); the report's hours are
then worked out from those rows (:func:`processors.views.totals.recount`, as the views stage
would have kept them). One event in ten went to review, and every review item but 1,000 has its
first verdict, so the queue holds 1,000 open items at every size. Then each query is timed as the commands run it,
without the catch-up (no broker is involved): the open queue read and parsed into review items,
and the whole report (:func:`processors.ops.report.compute`). Each figure is the best of
``repeat`` runs, in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
from sqlalchemy import Float, String, and_, case, cast, delete, func, insert, literal, null, select

from processors.ops.report import compute
from processors.ops.review_queue import open_items
from processors.records import ReviewItem, Verdict
from processors.views import totals
from processors.views.rows import scope_of
from processors.views.schema import EVERY_VERSION, placements, report_events, review_items, verdicts
from processors.views.store import ViewStore, Writer
from processors.workflow.workflow import Workflow, load_workflow

SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
OPEN = 1_000
REVIEWED_EVERY = 10
SPACING_MS = 1_000
START_MS = 1_780_000_000_000
DEFAULT_DB = Path(".local/bench/views.db")
VERSIONS = ("2026-05-29.1", "2026-06-02.1")
ROUTES = ("billing", "bug", "how_to", "escalation")


def build_history(store: ViewStore, workflow: Workflow, events: int) -> None:
    """Replace the workflow's views with ``events`` settled events and 1,000 open review items. The rows
    are made by the database itself from a counter (a recursive query), so even 1M take seconds; the
    report's hours take a pass over them."""
    scope, item = scope_of(workflow), _review_item(workflow)
    reviewed = max(events // REVIEWED_EVERY, OPEN)
    verdict = Verdict(verdict_id="v", review_id="r", event_id="e", workflow=workflow.name, reviewer="bench",
                      verdict="approve", answer=item.answer, at_ms=1, item=item).model_dump_json()
    template = item.model_copy(update={"review_id": "@ID@", "event_id": "@EVENT@"}).model_dump_json()
    with store.engine.begin() as conn:
        for table in (report_events, placements, review_items, verdicts):
            conn.execute(delete(table).where(table.c.scope == scope))
        n = _counter(events)
        i = n.c.i
        event_id = literal("e") + cast(i, String)
        in_review = and_(i % REVIEWED_EVERY == 0, i < reviewed * REVIEWED_EVERY)
        route = case(*((i % len(ROUTES) == k, r) for k, r in enumerate(ROUTES)))
        at = i * SPACING_MS + START_MS
        decided = case((in_review, null()), else_=at)
        row = {"scope": literal(scope), "event_id": event_id, "settled_at_ms": at, "decided_at_ms": decided,
               "decision_source": case((in_review, null()), else_="model"), "decision_route": route,
               "model_latency_ms": cast(i % 997, Float), "e2e_ms": cast(i % 1_013, Float),
               "review_at_ms": case((in_review, at), else_=null()),
               "review_route": case((in_review, route), else_=null()), "touched": in_review,
               "repaired": i % 50 == 0, "missed": i % 200 == 0, "verdicts": case((in_review, 1), else_=0),
               "overrides": case((and_(in_review, i % 3 == 0), 1), else_=0),
               "verdict_kind": case((in_review, "approve"), else_=null()), "verdict_at_ms": null(),
               "verdict_route": null(), "dead_at_ms": null(), "tokens_in": literal(180), "tokens_out": literal(40),
               "cost_usd": literal(0.0004)}
        for version in (case((i % 2 == 0, VERSIONS[0]), else_=VERSIONS[1]), literal(EVERY_VERSION)):
            columns = {**row, "version": version}
            conn.execute(insert(report_events).from_select(list(columns), select(*columns.values()).select_from(n)))
        place = {"scope": literal(scope), "event_id": event_id, "kind": literal("decision"), "detail": route, "at_ms": i,
                 "rank": literal(0), "replay": null()}
        conn.execute(insert(placements).from_select(list(place), select(*place.values()).select_from(n)))
        m = _counter(reviewed)
        review_id = literal("e") + cast(m.c.i * REVIEWED_EVERY, String) + literal(":low_confidence")
        items = {"scope": literal(scope), "review_id": review_id, "event_id": literal("e") + cast(m.c.i * REVIEWED_EVERY, String),
                 "rank": literal(1), "created_at_ms": m.c.i, "decided": m.c.i >= OPEN,
                 "item": func.replace(func.replace(literal(template), "@ID@", review_id), "@EVENT@",
                                      literal("e") + cast(m.c.i * REVIEWED_EVERY, String))}
        conn.execute(insert(review_items).from_select(list(items), select(*items.values()).select_from(m)))
        given = {"scope": literal(scope), "review_id": review_id, "partition_id": literal(0), "log_offset": m.c.i,
                 "verdict": literal(verdict)}
        conn.execute(insert(verdicts).from_select(list(given), select(*given.values()).select_from(m)
                                                  .where(m.c.i >= OPEN)))
        totals.recount(Writer(conn), scope, workflow.escalation.route if workflow.escalation else None)


def _counter(size: int):
    """0 … size-1, one row each."""
    n = select(literal(0).label("i")).cte("n", recursive=True)
    return n.union_all(select(n.c.i + 1).where(n.c.i < size - 1))


def _review_item(workflow: Workflow) -> ReviewItem:
    answer = {"category": "billing", "urgency": "low", "confidence": 0.4, "reason": "A question about an invoice."}
    event = {"event_id": "e", "ticket": {"subject": "Invoice question", "body": "Why was I charged twice?"}}
    return ReviewItem(review_id="r", event_id="e", workflow=workflow.name, reason="low_confidence", stage="validate",
                      event=orjson.dumps(event).decode(), answer=orjson.dumps(answer).decode(),
                      prompt=workflow.prompt_spec.ref, model="bench", created_at_ms=0)


def _best(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_views(url: str | None = None, sizes: dict[str, int] = SIZES, repeat: int = 3,
                say: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """``{"review_list_s": {"10k": …, "100k": …, "1m": …}, "report_s": {…}, "report_day_s": {…}}``, from a
    history of each size (``report_s``: all events; ``report_day_s``: ``--since`` the history's last day)."""
    if url is None:
        DEFAULT_DB.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_DB.unlink(missing_ok=True)
        url = f"sqlite:///{DEFAULT_DB}"
    store, workflow = ViewStore(url), load_workflow("support_ticket")
    figures: dict[str, dict[str, float]] = {"review_list_s": {}, "report_s": {}, "report_day_s": {}}
    for name, events in sizes.items():
        started = time.perf_counter()
        build_history(store, workflow, events)
        listed = open_items(store, scope_of(workflow))
        assert len(listed) == OPEN, f"{len(listed)} open items, expected {OPEN}"
        figures["review_list_s"][name] = _best(lambda: open_items(store, scope_of(workflow)), repeat)
        figures["report_s"][name] = _best(lambda: compute(workflow, store), repeat)
        last_day = START_MS + events * SPACING_MS - 86_400_000
        figures["report_day_s"][name] = _best(lambda: compute(workflow, store, since_ms=last_day), repeat)
        say(f"views {name}: history built in {time.perf_counter() - started:.1f}s; review list (1,000 open) "
            f"{figures['review_list_s'][name] * 1000:.1f} ms, report {figures['report_s'][name] * 1000:.1f} ms "
            f"(--since the last day: {figures['report_day_s'][name] * 1000:.1f} ms)")
    return figures


if __name__ == "__main__":
    bench_views()
