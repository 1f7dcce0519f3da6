"""Corrections become data: every answer a reviewer corrected is a regression example.

A correction is the winning ``correct`` verdict on a review item (void verdicts, approvals
and rejections are not: an approval confirms what the model already gets right, and a
rejection says no action should follow without saying what the right answer is). The
verdicts topic is kept forever and each verdict carries its review item, so the verdicts
alone rebuild the whole set.

An exported row has the format evals read, the same as the workflow's labelled examples
(``workflows/support_ticket/datasets/tickets.jsonl``): the trigger event, exactly as the
trigger contract reads it, plus ``expected`` — the corrected answer's output-schema fields
except what a model says about its own answer (``confidence``, ``reason``), and, like the
sample's ``tags``, one field that is not an answer: ``correction`` (the review id, what the
model had answered, the reviewer and when). It sits inside ``expected`` because evals check
every other top-level key against the trigger contract, and a trigger may have a field of
its own named ``source`` (``support_ticket/created.v2`` does). An event corrected more than
once keeps one row, its latest correction.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel

from processors.kafka.settings import KafkaSettings
from processors.ops.review_queue import ReviewQueue
from processors.project import write_rows
from processors.records import LABELS_FIELD, Verdict, VerdictKind
from processors.workflow.workflow import Workflow

NOT_EXPECTED = ("confidence", "reason")
"""Answer fields about the answer itself, not part of what an example expects."""


class Correction(BaseModel):
    review_id: str
    model_answer: dict | None
    reviewer: str
    at_ms: int


class Exported(BaseModel):
    path: Path
    rows: int
    corrections: int


def default_path(workflow: Workflow) -> Path:
    return workflow.folder / "datasets" / "evals" / "regression.jsonl"


def corrections(workflow: Workflow, settings: KafkaSettings) -> list[Verdict]:
    """The winning ``correct`` verdicts, oldest first."""
    first = ReviewQueue(workflow, settings).verdicts().values()
    return sorted((v.verdict for v in first if v.verdict.verdict == VerdictKind.correct and v.verdict.answer),
                  key=lambda v: v.at_ms)


def rows(workflow: Workflow, corrected: list[Verdict]) -> list[dict]:
    """One row per corrected event (its latest correction), ordered by event id."""
    fields = [f for f in workflow.prompt_spec.output_schema.get("properties", {}) if f not in NOT_EXPECTED]
    latest: dict[str, dict] = {}
    for verdict in corrected:
        item, answer = verdict.item, orjson.loads(verdict.answer)
        correction = Correction(review_id=verdict.review_id, reviewer=verdict.reviewer, at_ms=verdict.at_ms,
                                model_answer=orjson.loads(item.answer) if item.answer else None)
        expected = {f: answer[f] for f in fields if f in answer} | {"correction": correction.model_dump()}
        latest[verdict.event_id] = orjson.loads(item.event) | {LABELS_FIELD: expected}
    return [latest[event_id] for event_id in sorted(latest)]


def export(workflow: Workflow, settings: KafkaSettings, out: Path | None = None) -> Exported:
    """Write the regression set (replacing the file whole)."""
    path = out or default_path(workflow)
    corrected = corrections(workflow, settings)
    examples = rows(workflow, corrected)
    write_rows(path, examples)
    return Exported(path=path, rows=len(examples), corrections=len(corrected))
