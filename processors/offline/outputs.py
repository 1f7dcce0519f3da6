"""What a workflow's stages wrote, read back from its topics: decisions, review items, dead letters."""

from __future__ import annotations

from typing import TypeVar

from confluent_kafka import Message
from pydantic import BaseModel

from processors.avro.serde import DecodeError
from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.paths import dotted
from processors.records import StageName
from processors.runtime.dead_letter import Header
from processors.workflow.workflow import Workflow

Model = TypeVar("Model", bound=BaseModel)

SETTLING_STAGES = (StageName.ground, StageName.classify, StageName.validate, StageName.route)
"""Stages whose review items and dead letters settle a trigger; execute's concern actions of
triggers that were already decided."""


def decision_suffixes(workflow: Workflow, shadow: bool = False) -> list[str]:
    """The suffixes of the workflow's decision topics (``decisions.<route>``), ``shadow`` too when asked."""
    return [f"{Role.decisions}.{route}" for route in workflow.route_names] + ([Role.shadow] if shadow else [])


def read(workflow: Workflow, settings: KafkaSettings, suffix: str, model: type[Model]) -> list[Model]:
    """Every record of ``<workflow>.<suffix>`` so far, decoded into ``model``; a changelog's tombstones
    (a store forgot the key) are left out."""
    spec = workflow.topics[workflow.topic(suffix)]
    serde = spec.serde(settings)
    return [model.model_validate(serde.decode(msg.value())) for msg in snapshot(settings, spec.name)
            if msg.value() is not None]


def dead_letters(workflow: Workflow, settings: KafkaSettings) -> list[tuple[Message, dict[str, str]]]:
    """Every record of ``<workflow>.dlq`` so far, with its headers as text."""
    return [(msg, {k: v.decode(errors="replace") for k, v in msg.headers() or [] if v is not None})
            for msg in snapshot(settings, workflow.spec(Role.dlq).name)]


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
