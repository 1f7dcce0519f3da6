"""Topics as code: a workflow's topics are derived from what it is, not copied into each file.

Every workflow runs on the same engine, so the engine's topics — work in flight, ledgers,
review, traces, control, dead letters — are the same for each (name, partitions, schema,
cleanup policy, retention, doc: :data:`ENGINE_TOPICS`), and there is one decisions topic per
route, ``<workflow>.decisions.<route>``, derived from the routes of ``workflow.yaml``.
``topics/<workflow>.yaml`` declares only what differs: the trigger topic (its contract and the
field producers key by) and any overrides (partitions, replication, retention) per topic.
A topic is named for its :class:`Role`; a :class:`TopicSpec` also owns its serde
(:meth:`TopicSpec.serde`), so no caller pairs a topic with a schema by hand.

``apply`` compares the topics with the cluster and only ever *adds*: it creates missing
topics and reports drift (another partition count, another config) without changing or
deleting anything, because shrinking partitions or rewriting retention on a live topic can
lose data or reorder keys. Fixing drift is an operator's deliberate act. A second ``apply``
on an unchanged cluster plans nothing.

A *namespace* prefixes every name (``t1.support_ticket.triggers``) so tests and parallel
environments share a broker without sharing topics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from enum import StrEnum
from functools import cache
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processors import project
from processors.avro.serde import AvroSerde
from processors.kafka.settings import KafkaSettings


class CleanupPolicy(StrEnum):
    delete = "delete"
    compact = "compact"


class Role(StrEnum):
    """What a topic does in a workflow; the value is its name after ``<workflow>.``.
    ``decisions`` is one topic per route: ``<workflow>.decisions.<route>``."""

    triggers = "triggers"
    grounded = "grounded"
    classified = "classified"
    repair = "repair"
    validated = "validated"
    decisions = "decisions"
    shadow = "shadow"
    actions = "actions"
    executions = "executions"
    actions_done = "actions.done"
    notifications = "notifications"
    seen = "seen"
    taken = "taken"
    review = "review"
    traces = "traces"
    outcomes = "outcomes"
    verdicts = "verdicts"
    verdicts_first = "verdicts.first"
    results = "results"
    joins = "joins"
    joins_inbox = "joins.inbox"
    control = "control"
    replay = "replay"
    dlq = "dlq"


def topic_name(workflow: str, role: Role | str, route: str | None = None) -> str:
    """The declared name of a workflow's topic: ``<workflow>.<role>``, ``<workflow>.decisions.<route>``."""
    if (role == Role.decisions) != (route is not None):
        raise ValueError(f"{workflow}: a route names a decisions topic and only that ({role}, route {route!r})")
    return f"{workflow}.{role}" + (f".{route}" if route is not None else "")


class TopicSettings(BaseModel):
    """How a topic is made. Compaction for keyed state (latest value per key), deletion for event streams."""

    model_config = ConfigDict(extra="forbid")

    partitions: int = Field(6, ge=1)
    replication: int = Field(1, ge=1, description="Capped at the broker count when applied.")
    retention_ms: int = Field(7 * 24 * 3600 * 1000, ge=-1, description="-1 keeps forever.")
    cleanup_policy: CleanupPolicy = CleanupPolicy.delete
    value_schema: str | None = Field(None, description="Contract name in schemas/; None for raw bytes (dead letters).")
    key_field: str | None = Field(None, description="Dotted path of the value field producers key by, e.g. customer.id.")
    max_message_bytes: int | None = Field(None, ge=1024, description=(
        "The topic's max.message.bytes, when declared; else the broker's default. Stages dead-letter an "
        "output over it (output_too_large) instead of producing it."))
    doc: str = ""


class TopicSpec(TopicSettings):
    """One topic, named (namespace included once loaded)."""

    name: str

    def configs(self) -> dict[str, str]:
        configs = {"cleanup.policy": self.cleanup_policy.value, "retention.ms": str(self.retention_ms)}
        if self.max_message_bytes is not None:
            configs["max.message.bytes"] = str(self.max_message_bytes)
        return configs

    def serde(self, settings: KafkaSettings) -> AvroSerde:
        """The serde of this topic's values, framed as ``settings`` say (the Confluent wire format
        when a Schema Registry URL is set). One per schema and registry for the process, so a hot
        path may ask for it per record."""
        if self.value_schema is None:
            raise ValueError(f"{self.name} carries raw bytes (no value_schema): there is no serde for it")
        return _serde(self.value_schema, settings.schema_registry_url)


@cache
def _serde(value_schema: str, registry_url: str | None) -> AvroSerde:
    return AvroSerde(value_schema, registry_url=registry_url)


FOREVER = -1
THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000


def _compacted(**fields) -> TopicSettings:
    """Keyed state (a ledger, the joiner's changelog, control): the latest value per key, kept forever."""
    return TopicSettings(cleanup_policy=CleanupPolicy.compact, retention_ms=FOREVER, **fields)


ENGINE_TOPICS: dict[Role, TopicSettings] = {
    Role.classified: TopicSettings(value_schema="handoff/work_item",
                                   doc="Model answers, parsed, on their way to validation."),
    Role.repair: TopicSettings(value_schema="handoff/work_item",
                               doc="Invalid answers sent back to classify once, with the validation errors."),
    Role.validated: TopicSettings(value_schema="handoff/work_item",
                                  doc="Answers that passed schema, allowed values, business rules and the threshold."),
    Role.decisions: TopicSettings(value_schema="handoff/decision", doc="Decisions routed to {route}."),
    Role.shadow: TopicSettings(value_schema="handoff/decision",
                               doc="Decisions made in shadow mode: written, never acted on."),
    Role.actions: TopicSettings(value_schema="handoff/action_request",
                                doc="Action requests for the execute stage, keyed by idempotency key."),
    Role.executions: TopicSettings(value_schema="handoff/execution", doc="Results of executed actions."),
    Role.actions_done: _compacted(value_schema="handoff/action_done", doc=(
        "Idempotency ledger (changelog of execute's store, co-partitioned with actions): one entry per effect "
        "applied, tombstoned past the workflow's effects_kept.")),
    Role.notifications: TopicSettings(value_schema="handoff/notification",
                                      doc="What emit actions write: team notifications, keyed by event id."),
    Role.seen: _compacted(value_schema="handoff/seen_event", doc=(
        "Validate's duplicate check (changelog of its store, co-partitioned with classified): one entry per "
        "settled event id, tombstoned past the workflow's dedupe_window.")),
    Role.taken: _compacted(value_schema="handoff/seen_event", doc=(
        "Classify's duplicate check (changelog of its store, co-partitioned with the triggers): one entry per "
        "event id sent to the model, tombstoned past the workflow's dedupe_window.")),
    Role.verdicts_first: _compacted(value_schema="handoff/first_verdict", doc=(
        "The review stage's index (changelog of its store, co-partitioned with verdicts): where the first "
        "verdict on each review id sits. Kept forever: a pending item may be decided at any age.")),
    Role.review: TopicSettings(value_schema="handoff/review_item", retention_ms=THIRTY_DAYS_MS,
                               doc="Items a person must decide: low confidence, invalid output, risky actions."),
    Role.traces: TopicSettings(value_schema="handoff/trace", doc="One record per step of every run."),
    Role.outcomes: TopicSettings(value_schema="handoff/outcome",
                                 doc="Business outcomes reported by downstream systems, keyed by event id."),
    Role.verdicts: TopicSettings(value_schema="handoff/verdict", retention_ms=FOREVER, doc=(
        "Reviewers' verdicts, keyed by review id: the first verdict on an item wins. "
        "Kept forever (corrections are data).")),
    Role.results: TopicSettings(value_schema="handoff/result",
                                doc="Decisions joined with their business outcomes, keyed by event id."),
    Role.joins: _compacted(value_schema="handoff/join_state", doc=(
        "The outcome joiner's state (changelog): decisions and outcomes waiting for each other, "
        "keyed by event id.")),
    Role.joins_inbox: TopicSettings(value_schema="handoff/join_state", doc=(
        "Decisions and outcomes re-keyed by event id by the joiner, so one joiner instance sees both "
        "sides of an event.")),
    Role.control: _compacted(partitions=1, value_schema="handoff/control_state", doc=(
        "Prompt labels, rollout mode, kill switch and thresholds, keyed by workflow: the latest record "
        "is in force.")),
    Role.replay: TopicSettings(value_schema="handoff/decision", doc=(
        "Decisions made by a shadow replay: compared with the originals, never acted on.")),
    Role.dlq: TopicSettings(retention_ms=THIRTY_DAYS_MS, doc=(
        "Dead letters: the original key and value bytes, with headers saying where from and why.")),
}
"""Every topic the engine runs a workflow on, the same for each workflow; all but the trigger."""


class TopicOverride(BaseModel):
    """What ``topics/<workflow>.yaml`` may change on an engine topic. Its schema, cleanup policy
    and key are the engine's contract with its stages, so they are not for a file to change."""

    model_config = ConfigDict(extra="forbid")

    partitions: int | None = Field(None, ge=1)
    replication: int | None = Field(None, ge=1)
    retention_ms: int | None = Field(None, ge=-1)
    max_message_bytes: int | None = Field(None, ge=1024)


class TopicFile(BaseModel):
    """``topics/<workflow>.yaml``: the trigger topic, and overrides keyed by the topic's name after
    ``<workflow>.`` (``review``, ``decisions.security``)."""

    model_config = ConfigDict(extra="forbid")

    workflow: str
    trigger: TopicSettings
    overrides: dict[str, TopicOverride] = Field(default_factory=dict)


def workflow_topics(workflow: str, routes: Iterable[str], namespace: str = "",
                    root: Path | None = None) -> dict[str, TopicSpec]:
    """The workflow's topics keyed by their declared name, each ``name`` prefixed by ``namespace``:
    the trigger topic and overrides from ``<root>/<workflow>.yaml`` (``root``: the project's
    ``topics/``), the engine's topics, and one decisions topic per route, in that order.
    :class:`~processors.project.DataFileError` names the file, and the line or field, of a bad one."""
    path = (root or project.topics_dir()) / f"{workflow}.yaml"
    try:
        declared = TopicFile.model_validate(project.load_yaml(path))
    except ValidationError as exc:
        raise project.DataFileError(project.describe(path, exc)) from None
    if declared.workflow != workflow:
        raise project.DataFileError(f"{path}: workflow: {declared.workflow!r}, expected {workflow!r}")
    derived = {topic_name(workflow, Role.triggers): declared.trigger}
    for role, settings in ENGINE_TOPICS.items():
        if role != Role.decisions:
            derived[topic_name(workflow, role)] = settings
            continue
        for route in dict.fromkeys(routes):
            derived[topic_name(workflow, role, route)] = settings.model_copy(
                update={"doc": settings.doc.format(route=route)})
    unknown = sorted(set(declared.overrides) - {name.removeprefix(f"{workflow}.") for name in derived})
    if unknown:
        raise project.DataFileError(f"{path}: overrides: {', '.join(unknown)}: no such topic of {workflow} "
                                    f"(a role: {', '.join(Role)}; or decisions.<route>)")
    prefix = f"{namespace}." if namespace else ""
    topics = {}
    for name, settings in derived.items():
        override = declared.overrides.get(name.removeprefix(f"{workflow}."))
        changes = override.model_dump(exclude_none=True) if override else {}
        topics[name] = TopicSpec(**{**settings.model_dump(), **changes}, name=prefix + name)
    return topics


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
