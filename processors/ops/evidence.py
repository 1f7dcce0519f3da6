"""Outcomes become data: joined results turned into dataset rows by the rules each workflow declares.

A decision is a claim; a business outcome reported for it later is evidence about that claim. The
workflow says which outcomes count as what (``datasets.outcomes`` in ``workflow.yaml``, the first rule
that applies to a result decides, :class:`~processors.workflow.workflow.OutcomeRule`):

* ``confirms`` — the decided answer was right (a lead qualified, a call booked): the row expects it;
* ``corrects`` — the answer should have held the rule's ``expect`` values (a ticket reopened after a
  decision off the escalation route was a missed escalation: ``urgency: high``): the row expects the
  decided answer with those values;
* ``against`` — the decided label was wrong, and what is right is not known (a lead decided a sales
  intent, then disqualified): the row expects the decided answer without its label, and names the
  label it is evidence against (``expected.evidence.against``). Training turns it into the likeliest
  other label (processors/offline/training.py); an eval reads no label from it.

Results (``<wf>.results``) carry the decision's route and label, not its event or answer, so each is
matched, by event id, with its latest decision on ``<wf>.decisions.*``. A row has the format of the
labelled examples and of the corrections export: the trigger event plus ``expected`` — the answer's
fields but ``confidence`` and ``reason`` — and ``expected.evidence`` (the outcome, when, from where,
the rule and the decided label). One row per event: its latest result a rule applies to.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel

from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.offline.outputs import decision_suffixes, read
from processors.offline.training import EVIDENCE_FIELD
from processors.ops.corrections import NOT_EXPECTED
from processors.project import write_rows
from processors.records import LABELS_FIELD, Decision, Result
from processors.workflow.workflow import Evidence, OutcomeRule, Workflow

"""Inside ``expected``: where the row's evidence came from (not an answer field)."""


class EvidenceOf(BaseModel):
    """What made a row: the outcome, the rule that read it and the decision it judged."""

    evidence: Evidence
    rule: int
    outcome_type: str
    outcome_at_ms: int
    outcome_source: str
    decided_label: str
    decided_route: str
    against: dict[str, str] | None = None


def default_path(workflow: Workflow) -> Path:
    return workflow.folder / "datasets" / "outcomes.jsonl"


def row(workflow: Workflow, rule: OutcomeRule, index: int, result: Result, decision: Decision) -> dict:
    """The dataset row one result is evidence for, under ``rule``."""
    answer = orjson.loads(decision.answer)
    fields = [f for f in workflow.prompt_spec.output_schema.get("properties", {}) if f not in NOT_EXPECTED]
    expected = {f: answer[f] for f in fields if f in answer}
    against = None
    if rule.evidence == Evidence.corrects:
        expected |= rule.expect
    elif rule.evidence == Evidence.against:
        against = {workflow.label: result.label}
        expected.pop(workflow.label, None)
    evidence = EvidenceOf(evidence=rule.evidence, rule=index, outcome_type=result.outcome_type,
                          outcome_at_ms=result.outcome_at_ms, outcome_source=result.outcome_source,
                          decided_label=result.label, decided_route=result.route, against=against)
    return orjson.loads(decision.event) | {LABELS_FIELD: expected | {EVIDENCE_FIELD: evidence.model_dump()}}


def rows(workflow: Workflow, results: list[Result], decisions: list[Decision]) -> list[dict]:
    """One row per event with a result some rule applies to (its latest such result), ordered by event id."""
    latest = {d.event_id: d for d in sorted(decisions, key=lambda d: d.decided_at_ms)}
    made: dict[str, tuple[int, dict]] = {}
    for result in results:
        decision = latest.get(result.event_id)
        matched = next(((i, r) for i, r in enumerate(workflow.datasets.outcomes) if r.applies(result)), None)
        if decision is None or matched is None:
            continue
        if result.event_id not in made or made[result.event_id][0] <= result.outcome_at_ms:
            made[result.event_id] = (result.outcome_at_ms, row(workflow, matched[1], matched[0], result, decision))
    return [made[event_id][1] for event_id in sorted(made)]


def from_topics(workflow: Workflow, settings: KafkaSettings) -> list[dict]:
    """The rows the workflow's results so far are evidence for, read from its results and decisions topics."""
    results = read(workflow, settings, Role.results, Result)
    decisions = [d for suffix in decision_suffixes(workflow) for d in read(workflow, settings, suffix, Decision)]
    return rows(workflow, results, decisions)


def export(workflow: Workflow, settings: KafkaSettings, out: Path | None = None) -> tuple[Path, int]:
    """Write the outcome rows (default ``datasets/outcomes.jsonl``); the path and how many."""
    path = out or default_path(workflow)
    examples = from_topics(workflow, settings)
    write_rows(path, examples)
    return path, len(examples)
