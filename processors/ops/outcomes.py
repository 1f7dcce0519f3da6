"""Business outcomes reported by hand (``handoff outcome``) or by a test, as any system reports them."""

from __future__ import annotations

from processors.avro.serde import AvroSerde
from processors.kafka.settings import KafkaSettings
from processors.records import Outcome
from processors.workflow.workflow import Workflow


def send_outcome(workflow: Workflow, settings: KafkaSettings, outcome: Outcome) -> None:
    """Report an outcome by hand (``handoff outcome``) or from a test: keyed by event id, like any system's."""
    if outcome.outcome_type not in workflow.outcomes.types:
        raise ValueError(f"outcome type {outcome.outcome_type!r} is not one of {workflow.outcomes.types}")
    spec = workflow.topics[workflow.topic("outcomes")]
    producer = settings.producer()
    producer.produce(spec.name, key=outcome.event_id,
                     value=AvroSerde(spec.value_schema, registry_url=settings.schema_registry_url)
                     .encode(outcome.model_dump(), spec.name))
    if producer.flush(30):
        raise RuntimeError(f"outcome for {outcome.event_id} not delivered to {spec.name}")
