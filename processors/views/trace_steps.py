"""One run's steps as the views keep them: what the console's item page shows, without reading a topic."""

from __future__ import annotations

from sqlalchemy import select

from processors.records import Trace
from processors.views.schema import trace_steps
from processors.views.store import ViewStore


def steps_of(store: ViewStore, scope: str, run_id: str) -> list[Trace]:
    """Every trace of the run (the event id), oldest first: one index range."""
    step = trace_steps.c
    with store.read() as conn:
        rows = conn.execute(select(step.trace).where(step.scope == scope, step.run_id == run_id)
                            .order_by(step.at_ms, step.partition_id, step.log_offset))
        return [Trace.model_validate_json(trace) for (trace,) in rows]
