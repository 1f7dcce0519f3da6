"""Topics as code: ``topics/<workflow>.yaml`` declares every topic a workflow uses.

``apply`` compares the declaration with the cluster and only ever *adds*: it creates missing
topics and reports drift (another partition count, another config) without changing or
deleting anything, because shrinking partitions or rewriting retention on a live topic can
lose data or reorder keys. Fixing drift is an operator's deliberate act. A second ``apply``
on an unchanged cluster plans nothing.

A *namespace* prefixes every name (``t1.support_ticket.triggers``) so tests and parallel
environments share a broker without sharing topics.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processors import project


class CleanupPolicy(StrEnum):
    delete = "delete"
    compact = "compact"


class TopicSpec(BaseModel):
    """One topic. Compaction for keyed state (latest value per key), deletion for event streams."""

    model_config = ConfigDict(extra="forbid")

    name: str
    partitions: int = Field(6, ge=1)
    replication: int = Field(1, ge=1, description="Capped at the broker count when applied.")
    retention_ms: int = Field(7 * 24 * 3600 * 1000, ge=-1, description="-1 keeps forever.")
    cleanup_policy: CleanupPolicy = CleanupPolicy.delete
    value_schema: str | None = Field(None, description="Contract name in schemas/; None for raw bytes (dead letters).")
    key_field: str | None = Field(None, description="Dotted path of the value field producers key by, e.g. customer.id.")
    doc: str = ""

    def configs(self) -> dict[str, str]:
        return {"cleanup.policy": self.cleanup_policy.value, "retention.ms": str(self.retention_ms)}


class TopicFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow: str
    topics: list[TopicSpec]


def load_topics(workflow: str, namespace: str = "", root: Path | None = None) -> dict[str, TopicSpec]:
    """The workflow's topics keyed by their declared name, each ``name`` prefixed by ``namespace``;
    :class:`~processors.project.DataFileError` names the file, and the line or field, of a bad one."""
    path = (root or project.topics_dir()) / f"{workflow}.yaml"
    try:
        spec = TopicFile.model_validate(project.load_yaml(path))
    except ValidationError as exc:
        raise project.DataFileError(project.describe(path, exc)) from None
    prefix = f"{namespace}." if namespace else ""
    return {t.name: t.model_copy(update={"name": prefix + t.name}) for t in spec.topics}


class Change(BaseModel):
    """One line of a plan: ``create``, ``ok`` or ``drift`` (reported, never applied)."""

    topic: str
    action: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:<6} {self.topic}" + (f"  ({self.detail})" if self.detail else "")


def plan(admin: AdminClient, specs: list[TopicSpec]) -> list[Change]:
    metadata = admin.list_topics(timeout=10)
    brokers = max(1, len(metadata.brokers))
    existing = [s for s in specs if s.name in metadata.topics]
    configs = {}
    if existing:
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, s.name) for s in existing])
        configs = {res.name: fut.result(timeout=10) for res, fut in futures.items()}
    changes = []
    for spec in specs:
        if spec.name not in metadata.topics:
            rf = min(spec.replication, brokers)
            note = f"{spec.partitions} partitions, rf {rf}" + (f" (capped from {spec.replication})" if rf < spec.replication else "")
            changes.append(Change(topic=spec.name, action="create", detail=f"{note}, {spec.cleanup_policy}"))
            continue
        drift = []
        have = len(metadata.topics[spec.name].partitions)
        if have != spec.partitions:
            drift.append(f"partitions {have} != declared {spec.partitions}")
        for key, want in spec.configs().items():
            got = configs[spec.name][key].value
            if got != want:
                drift.append(f"{key} {got} != declared {want}")
        changes.append(Change(topic=spec.name, action="drift" if drift else "ok", detail="; ".join(drift)))
    return changes


def apply(admin: AdminClient, specs: list[TopicSpec], dry_run: bool = False) -> list[Change]:
    """Create what is missing; return the plan. Raises if a creation fails."""
    changes = plan(admin, specs)
    to_create = [s for s, c in zip(specs, changes) if c.action == "create"]
    if to_create and not dry_run:
        brokers = max(1, len(admin.list_topics(timeout=10).brokers))
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, min(s.replication, brokers), config=s.configs()) for s in to_create]
        )
        for fut in futures.values():
            try:
                fut.result(timeout=30)
            except KafkaException as exc:  # another apply won the race: fine, it exists
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        _wait_visible(admin, {s.name for s in to_create})
    return changes


def _all_led(topics: dict, names: set[str]) -> bool:
    return all(n in topics and topics[n].partitions and all(p.leader >= 0 for p in topics[n].partitions.values())
               for n in names)


def _wait_visible(admin: AdminClient, names: set[str], timeout: float = 15.0) -> None:
    """Creation returns once the controller commits; brokers learn of it a moment later.
    Waiting here means clients started right after ``apply`` find every topic."""
    deadline = time.monotonic() + timeout
    while not _all_led(admin.list_topics(timeout=10).topics, names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not visible {timeout:.0f}s after creation: {sorted(names)}")
        time.sleep(0.1)
