"""What a workflow's stages wrote, read back from its topics: decisions, review items, dead letters."""

from __future__ import annotations

from typing import TypeVar

from confluent_kafka import Message
from pydantic import BaseModel

from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.views.settling import SETTLING_STAGES, dead_letter_id, decision_suffixes  # noqa: F401  re-exported: what the offline tools and ops read by
from processors.workflow.workflow import Workflow

Model = TypeVar("Model", bound=BaseModel)


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
