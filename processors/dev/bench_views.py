"""Bench of the views: ``review list`` and ``handoff report`` latency at 10k, 100k and 1M settled events.

A history is written straight into a views database of its own (``.local/bench/views.db`` unless
given a URL), as the views stage would have left it, not by running events through a model:
per event its report rows (its prompt version's and the all-versions one) and its placement;
one event in ten went to review, and every review item but 1,000 has its first verdict, so the
queue holds 1,000 open items at every size. Then each query is timed as the commands run it,
without the catch-up (no broker is involved): the open queue read and parsed into review items,
and the whole report (:func:`processors.ops.report.compute`). Each figure is the best of
``repeat`` runs, in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
from sqlalchemy import delete, insert

from processors.ops.report import compute
from processors.ops.review_queue import open_items
from processors.records import ReviewItem, Verdict
from processors.views.rows import scope_of
from processors.views.schema import EVERY_VERSION, placements, report_events, review_items, verdicts
from processors.views.store import ViewStore
from processors.workflow.workflow import Workflow, load_workflow

SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
OPEN = 1_000
REVIEWED_EVERY = 10
CHUNK = 20_000
DEFAULT_DB = Path(".local/bench/views.db")
VERSIONS = ("2026-05-29.1", "2026-06-02.1")
ROUTES = ("billing", "bug", "how_to", "escalation")


def build_history(store: ViewStore, workflow: Workflow, events: int) -> None:
    """Replace the workflow's views with ``events`` settled events and 1,000 open review items."""
    scope = scope_of(workflow)
    item = _review_item(workflow)
    reviewed = max(events // REVIEWED_EVERY, OPEN)
    with store.engine.begin() as conn:
        for table in (report_events, placements, review_items, verdicts):
            conn.execute(delete(table).where(table.c.scope == scope))
        for rows in _chunks(_report_rows(scope, events, reviewed)):
            conn.execute(insert(report_events), rows)
        for rows in _chunks({"scope": scope, "event_id": f"e{n}", "kind": "decision", "detail": ROUTES[n % 4],
                             "at_ms": n, "rank": 0, "replay": None} for n in range(events)):
            conn.execute(insert(placements), rows)
        for rows in _chunks(_review_rows(scope, item, reviewed)):
            conn.execute(insert(review_items), rows)
        verdict = Verdict(verdict_id="v", review_id="r", event_id="e", workflow=workflow.name, reviewer="bench",
                          verdict="approve", answer=item.answer, at_ms=1, item=item).model_dump_json()
        for rows in _chunks({"scope": scope, "review_id": f"e{n * REVIEWED_EVERY}:low_confidence", "partition_id": 0,
                             "log_offset": n, "verdict": verdict} for n in range(OPEN, reviewed)):
            conn.execute(insert(verdicts), rows)


def _review_item(workflow: Workflow) -> ReviewItem:
    answer = {"category": "billing", "urgency": "low", "confidence": 0.4, "reason": "A question about an invoice."}
    event = {"event_id": "e", "ticket": {"subject": "Invoice question", "body": "Why was I charged twice?"}}
    return ReviewItem(review_id="r", event_id="e", workflow=workflow.name, reason="low_confidence", stage="validate",
                      event=orjson.dumps(event).decode(), answer=orjson.dumps(answer).decode(),
                      prompt=workflow.prompt_spec.ref, model="bench", created_at_ms=0)


def _report_rows(scope: str, events: int, reviewed: int) -> Iterator[dict]:
    for n in range(events):
        in_review = n % REVIEWED_EVERY == 0 and n // REVIEWED_EVERY < reviewed
        row = {"scope": scope, "event_id": f"e{n}", "settled_at_ms": 1_000 + n, "decided_at_ms": None if in_review else 1_000 + n,
               "decision_source": None if in_review else "model", "decision_route": ROUTES[n % 4],
               "model_latency_ms": float(n % 997), "e2e_ms": float(n % 1_013), "review_at_ms": 1_000 + n if in_review else None,
               "review_route": ROUTES[n % 4] if in_review else None, "touched": in_review, "repaired": n % 50 == 0,
               "missed": n % 200 == 0, "verdicts": int(in_review), "overrides": int(in_review and n % 3 == 0),
               "verdict_kind": "approve" if in_review else None, "tokens_in": 180, "tokens_out": 40, "cost_usd": 0.0004}
        yield row | {"version": VERSIONS[n % 2]}
        yield row | {"version": EVERY_VERSION}


def _review_rows(scope: str, item: ReviewItem, reviewed: int) -> Iterator[dict]:
    for n in range(reviewed):
        review_id = f"e{n * REVIEWED_EVERY}:low_confidence"
        text = item.model_copy(update={"review_id": review_id, "event_id": f"e{n * REVIEWED_EVERY}",
                                       "created_at_ms": n}).model_dump_json()
        yield {"scope": scope, "review_id": review_id, "event_id": f"e{n * REVIEWED_EVERY}", "rank": 1,
               "created_at_ms": n, "decided": n >= OPEN, "item": text}


def _chunks(rows: Iterator[dict]) -> Iterator[list[dict]]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _best(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_views(url: str | None = None, sizes: dict[str, int] = SIZES, repeat: int = 3,
                say: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """``{"review_list_s": {"10k": …, "100k": …, "1m": …}, "report_s": {…}}``, from a history of each size."""
    if url is None:
        DEFAULT_DB.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_DB.unlink(missing_ok=True)
        url = f"sqlite:///{DEFAULT_DB}"
    store, workflow = ViewStore(url), load_workflow("support_ticket")
    figures: dict[str, dict[str, float]] = {"review_list_s": {}, "report_s": {}}
    for name, events in sizes.items():
        started = time.perf_counter()
        build_history(store, workflow, events)
        listed = open_items(store, scope_of(workflow))
        assert len(listed) == OPEN, f"{len(listed)} open items, expected {OPEN}"
        figures["review_list_s"][name] = _best(lambda: open_items(store, scope_of(workflow)), repeat)
        figures["report_s"][name] = _best(lambda: compute(workflow, store), repeat)
        say(f"views {name}: history built in {time.perf_counter() - started:.1f}s; review list (1,000 open) "
            f"{figures['review_list_s'][name] * 1000:.1f} ms, report {figures['report_s'][name] * 1000:.1f} ms")
    return figures


if __name__ == "__main__":
    bench_views()
