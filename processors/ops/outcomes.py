"""Business outcomes reported by hand (``handoff outcome``) or by a test, as any system reports them."""

from __future__ import annotations

from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.kafka.write import write
from processors.records import Outcome
from processors.workflow.workflow import Workflow


def send_outcome(workflow: Workflow, settings: KafkaSettings, outcome: Outcome) -> None:
    """Report an outcome by hand (``handoff outcome``) or from a test: keyed by event id, like any system's."""
    if outcome.outcome_type not in workflow.outcomes.types:
        raise ValueError(f"outcome type {outcome.outcome_type!r} is not one of {workflow.outcomes.types}")
    spec = workflow.spec(Role.outcomes)
    value = spec.serde(settings).encode(outcome.model_dump(), spec.name)
    write(settings.producer(), spec.name, [(outcome.event_id, value)], what=f"outcome for {outcome.event_id}",
          timeout_s=30)
