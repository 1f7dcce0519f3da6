"""Where an event settles: the rules the views, the report, replay and the summary share.

An event *settles* where it leaves the automated path: a decision, or a review item or dead
letter written by classify, validate or route. Review items and dead letters of later stages
(execute, review, join) concern what happens after a decision.
"""

from __future__ import annotations

from processors.avro.serde import DecodeError
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.paths import dotted
from processors.records import StageName
from processors.runtime.dead_letter import Header
from processors.workflow.workflow import Workflow

SETTLING_STAGES = (StageName.ground, StageName.classify, StageName.validate, StageName.route)
"""Stages whose review items and dead letters settle a trigger; execute's concern actions of
triggers that were already decided."""


def decision_suffixes(workflow: Workflow, shadow: bool = False) -> list[str]:
    """The suffixes of the workflow's decision topics (``decisions.<route>``), ``shadow`` too when asked."""
    return [f"{Role.decisions}.{route}" for route in workflow.route_names] + ([Role.shadow] if shadow else [])


def dead_letter_id(workflow: Workflow, settings: KafkaSettings, headers: dict[str, str], value: bytes | None) -> str:
    """The event id inside a dead letter's original bytes, or where the bytes came from."""
    origin = headers.get(Header.original_topic, "")
    where = f"{origin}:{headers.get(Header.original_partition)}:{headers.get(Header.original_offset)}"
    spec = next((s for s in workflow.topics.values() if s.name == origin and s.value_schema), None)
    if spec is None:
        return where
    try:
        record = spec.serde(settings).decode(value)
    except DecodeError:
        return where
    is_trigger = spec.name == workflow.spec(Role.triggers).name
    return str(dotted(record, workflow.trigger.event_id) if is_trigger else record["event_id"])
