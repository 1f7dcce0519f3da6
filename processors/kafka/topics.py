"""Topics as code: a workflow's topics are derived from what it is, not copied into each file.

Every workflow runs on the same engine, so the engine's topics — work in flight, ledgers,
review, traces, control, dead letters — are the same for each (name, partitions, schema,
cleanup policy, what decides their retention, doc: :data:`ENGINE_TOPICS`), and there is one
decisions topic per route, ``<workflow>.decisions.<route>``, derived from the routes of
``workflow.yaml``. ``topics/<workflow>.yaml`` declares only what differs: the trigger topic (its
contract and the field producers key by) and any overrides (partitions, replication, retention)
per topic. A topic is named for its :class:`Role`; a :class:`TopicSpec` also owns its serde
(:meth:`TopicSpec.serde`), so no caller pairs a topic with a schema by hand.

**Retention follows the workflow.** What a topic must keep is said by its :class:`Keep`: the
triggers as far back as a replay reaches, what ``handoff report`` reads as far back as its
window, review items and verdicts for as long as an item may wait for a person (forever),
ledgers and changelogs compacted. The workflow's ``retention:`` gives the spans
(:class:`Windows`); a file that declares a topic shorter than its workflow needs fails to load,
naming the file, the field and both numbers.

``apply`` compares the topics with the cluster and only ever *adds*: it creates missing
topics, raises a retention shorter than declared (keeping more loses nothing), and reports any
other drift (another partition count or cleanup policy, a retention *longer* than declared)
without changing or deleting anything, because shrinking partitions or shortening retention on
a live topic can lose data or reorder keys. Fixing that drift is an operator's deliberate act. A
second ``apply`` on an unchanged cluster plans nothing.

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
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processors import project
from processors.avro.registry import Registry
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
    review_open = "review.open"
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


FOREVER = -1
IN_FLIGHT_MS = 7 * 24 * 3600 * 1000
"""Work between stages is kept a week (Kafka's default): a stage may be down that long and catch up."""


def span(ms: int) -> str:
    """A retention as people write it: ``forever``, ``30d``, ``12h``, ``90m``, ``45s`` (else ms)."""
    if ms == FOREVER:
        return "forever"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def keeps_less(retention_ms: int, than_ms: int) -> bool:
    """Does a topic kept ``retention_ms`` lose records one kept ``than_ms`` would still hold?"""
    return retention_ms != FOREVER and (than_ms == FOREVER or retention_ms < than_ms)


class Keep(StrEnum):
    """What decides how long a topic keeps its records; the value says it in the plan."""

    in_flight = "in flight"
    """Work between stages: the topic's own retention (:data:`IN_FLIGHT_MS` unless overridden)."""
    replay_reach = "replay reach"
    """The triggers: a replay reads them, so they reach back ``retention.replay_reach``."""
    report_window = "report window"
    """What ``handoff report`` reads (and the executions, which say which approved actions ran): kept
    ``retention.report_window``."""
    report_and_replay = "report window, replay reach"
    """Decisions and dead letters: the report reads them, and a replay asks them where each event it
    reaches ended; kept the longer of the two."""
    until_decided = "until decided"
    """Review items and verdicts: an item waits for a person however long that takes, and the first
    verdict must still be found when a second one comes, so nothing expires by time."""
    state = "state"
    """Ledgers and changelogs: compacted (latest value per key); an entry leaves when its stage writes
    a tombstone for it (past ``dedupe_window``, ``effects_kept``, a join done), never by time."""


class Windows(BaseModel):
    """How far back a workflow reaches, in ms: its ``retention:`` (processors/workflow/workflow.py)
    as the topics need it."""

    replay_reach_ms: int = Field(gt=0)
    report_window_ms: int = Field(gt=0)

    def needs(self, keep: Keep) -> tuple[int, str] | None:
        """The retention a topic kept for ``keep`` needs, and the workflow setting that says so;
        None for work in flight, which keeps its own."""
        return {
            Keep.replay_reach: (self.replay_reach_ms, "retention.replay_reach"),
            Keep.report_window: (self.report_window_ms, "retention.report_window"),
            Keep.report_and_replay: (max(self.report_window_ms, self.replay_reach_ms),
                                     "the longer of retention.report_window and retention.replay_reach"),
            Keep.until_decided: (FOREVER, "a pending item may wait however long"),
            Keep.state: (FOREVER, "a ledger or changelog is compacted: entries leave by tombstone, never by time"),
        }.get(keep)


class TopicSettings(BaseModel):
    """How a topic is made. Compaction for keyed state (latest value per key), deletion for event streams."""

    model_config = ConfigDict(extra="forbid")

    partitions: int = Field(6, ge=1)
    replication: int = Field(1, ge=1, description="Capped at the broker count when applied.")
    retention_ms: int = Field(IN_FLIGHT_MS, ge=-1, description="-1 keeps forever.")
    cleanup_policy: CleanupPolicy = CleanupPolicy.delete
    value_schema: str | None = Field(None, description="Contract name in schemas/; None for raw bytes (dead letters).")
    key_field: str | None = Field(None, description="Dotted path of the value field producers key by, e.g. customer.id.")
    max_message_bytes: int | None = Field(None, ge=1024, description=(
        "The topic's max.message.bytes, when declared; else the broker's default. Stages dead-letter an "
        "output over it (output_too_large) instead of producing it."))
    doc: str = ""


class EngineTopic(TopicSettings):
    """A topic as the engine derives it: what decides its retention comes with it, not from a file."""

    keep: Keep = Keep.in_flight


class TopicSpec(EngineTopic):
    """One topic, named (namespace included once loaded), its retention derived from its workflow's."""

    name: str

    @property
    def retention(self) -> str:
        """The retention and why, as the plan shows it: ``30d (replay reach)``."""
        kept = "compacted" if self.cleanup_policy == CleanupPolicy.compact else span(self.retention_ms)
        return f"{kept} ({self.keep})"

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
        return _serde(self.value_schema, settings.registry)


@cache
def _serde(value_schema: str, registry: Registry | None) -> AvroSerde:
    return AvroSerde(value_schema, registry=registry)


def _compacted(**fields) -> EngineTopic:
    """Keyed state (a ledger, the joiner's changelog, control): the latest value per key, kept until tombstoned."""
    return EngineTopic(cleanup_policy=CleanupPolicy.compact, keep=Keep.state, **fields)


ENGINE_TOPICS: dict[Role, EngineTopic] = {
    Role.classified: EngineTopic(value_schema="handoff/work_item",
                                 doc="Model answers, parsed, on their way to validation."),
    Role.repair: EngineTopic(value_schema="handoff/work_item", keep=Keep.report_window,
                             doc="Invalid answers sent back to classify once, with the validation errors."),
    Role.validated: EngineTopic(value_schema="handoff/work_item",
                                doc="Answers that passed schema, allowed values, business rules and the threshold."),
    Role.decisions: EngineTopic(value_schema="handoff/decision", keep=Keep.report_and_replay,
                                doc="Decisions routed to {route}."),
    Role.shadow: EngineTopic(value_schema="handoff/decision", keep=Keep.report_window,
                             doc="Decisions made in shadow mode: written, never acted on."),
    Role.actions: EngineTopic(value_schema="handoff/action_request",
                              doc="Action requests for the execute stage, keyed by idempotency key."),
    Role.executions: EngineTopic(value_schema="handoff/execution", keep=Keep.report_window,
                                 doc="Results of executed actions."),
    Role.actions_done: _compacted(value_schema="handoff/action_done", doc=(
        "Idempotency ledger (changelog of execute's store, co-partitioned with actions): one entry per effect "
        "applied, tombstoned past the workflow's effects_kept.")),
    Role.notifications: EngineTopic(value_schema="handoff/notification",
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
    Role.review_open: _compacted(value_schema="handoff/review_item", doc=(
        "The review stage's deadline timers (changelog of its store, co-partitioned with review): each item "
        "until its deadline passes, then tombstoned.")),
    Role.review: EngineTopic(value_schema="handoff/review_item", keep=Keep.until_decided,
                             doc="Items a person must decide: low confidence, invalid output, risky actions."),
    Role.traces: EngineTopic(value_schema="handoff/trace", keep=Keep.report_window,
                             doc="One record per step of every run."),
    Role.outcomes: EngineTopic(value_schema="handoff/outcome",
                               doc="Business outcomes reported by downstream systems, keyed by event id."),
    Role.verdicts: EngineTopic(value_schema="handoff/verdict", keep=Keep.until_decided, doc=(
        "Reviewers' verdicts, keyed by review id: the first verdict on an item wins. "
        "Kept forever (corrections are data).")),
    Role.results: EngineTopic(value_schema="handoff/result", keep=Keep.report_window,
                              doc="Decisions joined with their business outcomes, keyed by event id."),
    Role.joins: _compacted(value_schema="handoff/join_state", doc=(
        "The outcome joiner's state (changelog): decisions and outcomes waiting for each other, "
        "keyed by event id.")),
    Role.joins_inbox: EngineTopic(value_schema="handoff/join_state", doc=(
        "Decisions and outcomes re-keyed by event id by the joiner, so one joiner instance sees both "
        "sides of an event.")),
    Role.control: _compacted(partitions=1, value_schema="handoff/control_state", doc=(
        "Prompt labels, rollout mode, kill switch and thresholds, keyed by workflow: the latest record "
        "is in force.")),
    Role.replay: EngineTopic(value_schema="handoff/decision", doc=(
        "Decisions made by a shadow replay: compared with the originals, never acted on.")),
    Role.dlq: EngineTopic(keep=Keep.report_and_replay, doc=(
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


def workflow_topics(workflow: str, routes: Iterable[str], windows: Windows, namespace: str = "",
                    root: Path | None = None) -> dict[str, TopicSpec]:
    """The workflow's topics keyed by their declared name, each ``name`` prefixed by ``namespace``:
    the trigger topic and overrides from ``<root>/<workflow>.yaml`` (``root``: the project's
    ``topics/``), the engine's topics, and one decisions topic per route, in that order. Each keeps
    what its :class:`Keep` needs of ``windows``, or longer where the file says so.
    :class:`~processors.project.DataFileError` names the file, and the line or field, of a bad one,
    and of a retention shorter than the workflow needs."""
    path = (root or project.topics_dir()) / f"{workflow}.yaml"
    try:
        declared = TopicFile.model_validate(project.load_yaml(path))
    except ValidationError as exc:
        raise project.DataFileError(project.describe(path, exc)) from None
    if declared.workflow != workflow:
        raise project.DataFileError(f"{path}: workflow: {declared.workflow!r}, expected {workflow!r}")
    trigger = EngineTopic(**declared.trigger.model_dump(), keep=Keep.replay_reach)
    derived = {topic_name(workflow, Role.triggers): trigger}
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
        suffix = name.removeprefix(f"{workflow}.")
        override = declared.overrides.get(suffix)
        changes = override.model_dump(exclude_none=True) if override else {}
        field = f"overrides.{suffix}.retention_ms"
        if suffix == Role.triggers and "retention_ms" in declared.trigger.model_fields_set:
            changes["retention_ms"], field = declared.trigger.retention_ms, "trigger.retention_ms"
        need = windows.needs(settings.keep)
        if need is not None:
            changes["retention_ms"] = _retention(path, field, name, changes.get("retention_ms"), *need)
        topics[name] = TopicSpec(**{**settings.model_dump(), **changes}, name=prefix + name)
    return topics


def _retention(path: Path, field: str, topic: str, declared_ms: int | None, need_ms: int, why: str) -> int:
    """What the file declares, unless that keeps less than the workflow needs (then it fails to load)."""
    if declared_ms is None:
        return need_ms
    if keeps_less(declared_ms, need_ms):
        raise project.DataFileError(
            f"{path}: {field}: {declared_ms} ({span(declared_ms)}) keeps {topic} shorter than its workflow needs: "
            f"{need_ms} ({span(need_ms)}; {why}); raise it or remove it")
    return declared_ms


class Action(StrEnum):
    """What ``apply`` does with a topic: ``drift`` is reported, never applied."""

    create = "create"
    alter = "alter"
    ok = "ok"
    drift = "drift"


class Change(BaseModel):
    """One line of a plan: what happens to a topic, the configs ``apply`` sets on it (a retention
    raised to what is declared), and what drifted, left as it is."""

    topic: str
    action: Action
    detail: str = ""
    retention: str = ""
    alter: dict[str, str] = Field(default_factory=dict)

    def __str__(self) -> str:
        return (f"{self.action:<6} {self.topic}" + (f"  retention {self.retention}" if self.retention else "")
                + (f"  ({self.detail})" if self.detail else ""))


def plan(admin: AdminClient, specs: list[TopicSpec]) -> list[Change]:
    metadata = admin.list_topics(timeout=10)
    brokers = max(1, len(metadata.brokers))
    configs = _configs(admin, [s.name for s in specs if s.name in metadata.topics])
    changes = []
    for spec in specs:
        if spec.name not in metadata.topics:
            rf = min(spec.replication, brokers)
            note = f"{spec.partitions} partitions, rf {rf}" + (f" (capped from {spec.replication})" if rf < spec.replication else "")
            changes.append(Change(topic=spec.name, action=Action.create, retention=spec.retention,
                                  detail=f"{note}, {spec.cleanup_policy}"))
            continue
        alter, raised, drift = {}, [], []
        have = len(metadata.topics[spec.name].partitions)
        if have != spec.partitions:
            drift.append(f"partitions {have} != declared {spec.partitions}")
        for key, want in spec.configs().items():
            got = configs[spec.name][key]
            if got == want:
                continue
            if key == "retention.ms" and keeps_less(int(got), int(want)):
                alter[key] = want
                raised.append(f"retention.ms {got} ({span(int(got))}) raised to {want}")
            elif key == "retention.ms":
                drift.append(f"retention.ms {got} ({span(int(got))}) keeps more than declared {want}: not "
                             f"shortened, that would delete records")
            else:
                drift.append(f"{key} {got} != declared {want}")
        action = Action.drift if drift else Action.alter if alter else Action.ok
        changes.append(Change(topic=spec.name, action=action, detail="; ".join(raised + drift),
                              retention=spec.retention, alter=alter))
    return changes


def apply(admin: AdminClient, specs: list[TopicSpec], dry_run: bool = False) -> list[Change]:
    """Create what is missing and raise retentions to what is declared; return the plan. Raises if a
    creation or a change fails."""
    changes = plan(admin, specs)
    if dry_run:
        return changes
    to_create = [s for s, c in zip(specs, changes) if c.action == Action.create]
    if to_create:
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
    to_alter = {c.topic: c.alter for c in changes if c.alter}
    if to_alter:
        resources = [ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in alter.items()])
            for topic, alter in to_alter.items()]
        for fut in admin.incremental_alter_configs(resources).values():
            fut.result(timeout=30)
        _wait_applied(admin, to_alter)
    return changes


def _configs(admin: AdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """The configs in force on existing topics, by topic and key."""
    if not names:
        return {}
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name) for name in names])
    return {res.name: {key: entry.value for key, entry in fut.result(timeout=10).items()}
            for res, fut in futures.items()}


def _wait_applied(admin: AdminClient, altered: dict[str, dict[str, str]], timeout: float = 15.0) -> None:
    """The controller accepts a config change before every broker applies it: waiting here means the
    next plan sees what ``apply`` set."""
    deadline = time.monotonic() + timeout
    while True:
        now = _configs(admin, list(altered))
        if all(now[topic].get(key) == value for topic, alter in altered.items() for key, value in alter.items()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"config changes not in force {timeout:.0f}s after they were made: {sorted(altered)}")
        time.sleep(0.1)


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
