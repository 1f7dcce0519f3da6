"""Where every trigger of a workflow ended up, read back from its topics.

A trigger ends in exactly one place: a route topic (a decision), review (a person decides),
or the dead letters. An item a reviewer approved or corrected has moved on to its route: its
decision (``source=review``) is where it ended, so it no longer counts as waiting in review.
:func:`collect` reads those topics (read committed, no consumer group) and identifies each
record by event id — or, for a dead letter whose bytes cannot be decoded, by its original
topic, partition and offset — so the demo can print the counts and tests can check that they
add up and that no event is in two places.
"""

from __future__ import annotations

from collections import Counter
from typing import TypeVar

import numpy as np
from pydantic import BaseModel

from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.offline.outputs import SETTLING_STAGES, dead_letter_id, dead_letters, decision_suffixes, read
from processors.records import Decision, DecisionSource, Execution, ReviewItem, ReviewReason, StageName
from processors.runtime.dead_letter import Header
from processors.workflow.workflow import Workflow

Model = TypeVar("Model", bound=BaseModel)


class Summary(BaseModel):
    workflow: str
    triggers: int
    decided: dict[str, str]                   # event id -> route
    by_reviewers: int                         # of those, decided with a reviewer's answer
    labels: dict[str, str]                    # event id -> decided label
    reviewed: dict[str, str]                  # event id -> reason (settling stages)
    dead: dict[str, str]                      # event id or topic:partition:offset -> reason (settling stages)
    approvals: list[str]                      # event id:action awaiting approval (risky actions)
    action_failures: dict[str, str]           # idempotency key -> reason (execute's dead letters)
    executions: dict[str, int]                # "action status" -> count
    latency_ms: list[float]                   # trigger to decision, per decision
    model_ms: list[float]                     # the model call, per decision
    samples: list[Decision]

    @property
    def placed(self) -> int:
        return len(self.decided) + len(self.reviewed) + len(self.dead)

    def in_two_places(self) -> set[str]:
        return (self.decided.keys() & self.reviewed.keys()) | (self.decided.keys() & self.dead.keys()) \
            | (self.reviewed.keys() & self.dead.keys())

    def percentile(self, q: float) -> float:
        return _p(self.latency_ms, q)

    def agreement(self, expected: dict[str, str]) -> tuple[int, int]:
        """(decisions whose label equals ``expected[event id]``, decisions with an expected label)."""
        known = [(label, expected[e]) for e, label in self.labels.items() if e in expected]
        return sum(a == b for a, b in known), len(known)

    def render(self) -> str:
        routes = Counter(self.decided.values())
        lines = [f"== {self.workflow}: {self.triggers} triggers -> {len(self.decided)} decided, "
                 f"{len(self.reviewed)} to review, {len(self.dead)} dead-lettered "
                 f"({'all accounted for' if self.placed == self.triggers and not self.in_two_places() else 'MISMATCH'})",
                 "routes:        " + _counts(routes),
                 "review:        " + _counts(Counter(self.reviewed.values()))
                 + (f"; {self.by_reviewers} more decided by reviewers" if self.by_reviewers else ""),
                 "dead letters:  " + _counts(Counter(self.dead.values())),
                 "approvals:     " + (f"{len(self.approvals)} risky actions await a person" if self.approvals else "-"),
                 "actions:       " + _counts(Counter(self.executions)),
                 "action errors: " + _counts(Counter(self.action_failures.values())),
                 f"latency:       p50 {self.percentile(50):.0f} ms, p95 {self.percentile(95):.0f} ms from trigger to "
                 f"decision (queueing included); model call p50 {_p(self.model_ms, 50):.1f} ms, "
                 f"p95 {_p(self.model_ms, 95):.1f} ms"]
        for d in self.samples:
            lines.append(f"  {d.event_id}: {d.label} ({d.confidence:.2f}) -> {d.route} by {d.rule}, "
                         f"prompt {d.prompt.name}@{d.prompt.version}, {d.model}")
        return "\n".join(lines)


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1])) or "-"


def collect(workflow: Workflow, settings: KafkaSettings, samples: int = 3) -> Summary:
    decisions = [d for suffix in decision_suffixes(workflow) for d in read(workflow, settings, suffix, Decision)]
    reviews = read(workflow, settings, Role.review, ReviewItem)
    reviewed = {d.event_id for d in decisions if d.source == DecisionSource.review}
    executions = read(workflow, settings, Role.executions, Execution)
    executed = {e.idempotency_key for e in executions}
    dead, action_failures = {}, {}
    for msg, headers in dead_letters(workflow, settings):
        reason = headers.get(Header.error_reason, "unknown")
        if headers.get(Header.stage) == StageName.execute:
            action_failures[msg.key().decode() if msg.key() else str(msg.offset())] = reason
        elif headers.get(Header.stage) in SETTLING_STAGES:
            dead[dead_letter_id(workflow, settings, headers, msg.value())] = reason
    triggers = workflow.spec(Role.triggers).name
    return Summary(
        workflow=workflow.name, triggers=sum(1 for _ in snapshot(settings, triggers)),
        decided={d.event_id: d.route for d in decisions},
        by_reviewers=len(reviewed),
        labels={d.event_id: d.label for d in decisions},
        reviewed={r.event_id: r.reason for r in reviews if r.stage in SETTLING_STAGES and r.event_id not in reviewed},
        dead=dead,
        approvals=[r.review_id for r in reviews if r.reason == ReviewReason.risky_action
                   and r.action.idempotency_key not in executed],
        action_failures=action_failures,
        executions=dict(Counter(f"{e.action} {e.status}" for e in executions)),
        latency_ms=[float(d.decided_at_ms - d.trigger_timestamp_ms) for d in decisions if d.trigger_timestamp_ms],
        model_ms=[d.latency_ms for d in decisions],
        samples=decisions[:samples])
