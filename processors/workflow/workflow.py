"""A workflow is files, not code: ``workflows/<name>/workflow.yaml`` declares it.

It names the trigger contract and its key, the prompt spec (a versioned file under
``prompts/``), the model provider, the business rules that check an answer, the review
threshold, the routes (first match wins) and the actions each route requests. Loading checks
everything a running stage would otherwise trip over later — unknown rule, route without a
topic, action without a granted scope — and names the file and field that is wrong.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from string import Template
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from processors import project
from processors.actions.mcp import ToolGrant, Tools, ToolServer
from processors.avro.contracts import UnknownContract, default_store
from processors.kafka.topics import Role, TopicSpec, Windows, keeps_less, span, topic_name, workflow_topics
from processors.paths import lookup
from processors.providers.base import Provider
from processors.providers.build import CascadeModel, EmbeddedModel, ModelConfig, build_provider
from processors.records import ActionRequest, Decision, Mode, Result, ReviewReason, dumps
from processors.redaction import Redaction
from processors.workflow import rules
from processors.workflow.checks import SchemaCheck
from processors.workflow.completions import COMPLETIONS
from processors.workflow.prompt import PromptSpec, load_prompt

_ROUTE_FIELD = re.compile(r"^\{(answer\.[\w.]+)\}$")


class WorkflowError(ValueError):
    """A workflow file is wrong; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Chain(Strict):
    """A workflow triggered by another's decisions: it reads ``<workflow>.decisions.<route>`` itself, with its own
    consumer groups — chaining happens on topics, with no orchestrator."""

    workflow: str = Field(description="The parent workflow.")
    route: str = Field(description="The parent's route whose decisions trigger this workflow.")


CHAIN_SCHEMA = "handoff/decision"
"""The contract of a chained trigger: the parent's decision."""


class Trigger(Strict):
    event: str = Field(description="The event type, e.g. support_ticket.created.")
    schema_: str = Field(alias="schema", description="Contract name under schemas/; read with its latest version.")
    key: str = Field(description="Dotted path of the record key, so one entity's events stay in order.")
    event_id: str = "event_id"
    chain: Chain | None = Field(None, description=(
        "Triggered by another workflow's decisions (schema handoff/decision). The event this workflow sees is "
        "{event_id, parent: {workflow, event_id, route, label, confidence, prompt, model, answer}, event: the "
        "parent's event}, so every record it writes carries the parent's event id, decision and prompt version."))

    def replay_of(self, value: dict) -> str | None:
        """A chained trigger's replay id: the parent's replayed decision carries it, so the child re-runs too."""
        return value.get("replay") if self.chain is not None else None

    def event_view(self, value: dict) -> dict:
        """The event as this workflow's stages see it: the trigger itself, or a parent's decision unpacked."""
        if self.chain is None:
            return value
        parent = {name: value[name] for name in ("workflow", "event_id", "route", "label", "confidence", "model")}
        return {"event_id": value["event_id"], "event": orjson.loads(value["event"]),
                "parent": parent | {"prompt": value["prompt"], "answer": orjson.loads(value["answer"])}}


class ModelRetries(Strict):
    """A retry hides a blip; too many hold a record (and its key) for a long time. For the HTTP
    kinds these re-run the whole call, whose own retries and deadline already cover HTTP failures."""

    attempts: int = Field(3, ge=1)
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 2.0
    timeout_s: float = Field(30.0, description=(
        "Per call; past it the call counts as a retryable failure. Not applied to the HTTP kinds, which "
        "bound themselves (timeout_s, deadline_s) and may wait for rate budget longer than this."))


class RouteRule(Strict):
    """``when`` is a list of alternatives, each a map of path → allowed value(s); the route
    matches when all paths of one alternative match. No ``when`` matches everything."""

    name: str = Field(description="A route name, or {answer.field} to route by that field's value.")
    when: list[dict[str, str | list[str]]] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)

    @cached_property
    def _alternatives(self) -> list[list[tuple[tuple[str, ...], frozenset[str]]]]:
        """``when`` with its paths split once: routing runs for every record."""
        return [[(tuple(path.split(".")), frozenset([want] if isinstance(want, str) else want))
                 for path, want in alternative.items()] for alternative in self.when]

    def matches(self, view: dict) -> bool:
        return not self.when or any(all(_member(lookup(view, path), allowed) for path, allowed in alternative)
                                    for alternative in self._alternatives)

    def resolve(self, view: dict) -> str:
        field = _ROUTE_FIELD.match(self.name)
        return str(lookup(view, field.group(1))) if field else self.name

    def rule_name(self, index: int) -> str:
        return f"routes[{index}]:{self.name}"


class Escalation(Strict):
    """The route for what must not wait, so reports and evals can measure how much of it the model catches."""

    route: str = Field(description="The escalating route (support_ticket: escalation; banking77: security).")
    missed_outcomes: list[str] = Field(default_factory=list, description=(
        "Outcome types that, reported for a decision on another route, mean it should have been escalated "
        "(e.g. reopened). Empty: only reviewers' corrections reveal a missed escalation."))


OUTCOME_TYPES = ("qualified", "disqualified", "reply_received", "call_booked", "task_completed", "human_edited",
                 "approved", "rejected", "reopened", "closed_won", "closed_lost")


class Outcomes(Strict):
    """Business outcomes joined back to decisions (processors/stages/join.py)."""

    wait_for_decision_s: float = Field(86400.0, gt=0, description=(
        "How long an outcome that arrived before its decision waits for it before it goes to the dead letters "
        "(decision_never_came). Longer tolerates slower pipelines; shorter surfaces wrong event ids sooner."))
    types: list[str] = Field(default_factory=lambda: list(OUTCOME_TYPES), description=(
        "The outcome types this workflow accepts; any other goes to the dead letters (unknown_outcome_type)."))


class Evidence(StrEnum):
    """What a joined outcome says about the decided answer (``datasets.outcomes``)."""

    confirms = "confirms"
    """The decided answer was right (a qualified lead, a booked call): a row expecting it."""
    against = "against"
    """The decided label was wrong, and what is right is not known (a sales lead disqualified): a row against it."""
    corrects = "corrects"
    """The answer should have held ``expect``'s values (a ticket reopened after no escalation: urgency high)."""


class OutcomeRule(Strict):
    """Joined results that become dataset rows (``handoff dataset export --from outcomes``,
    processors/ops/evidence.py)."""

    outcomes: list[str] = Field(min_length=1, description="Outcome types it applies to (among outcomes.types).")
    labels: list[str] = Field(default_factory=list, description="Only decisions with one of these labels; empty: any.")
    not_routes: list[str] = Field(default_factory=list, description=(
        "Only decisions on another route: a ticket reopened after a decision off the escalation route was a missed "
        "escalation."))
    evidence: Evidence
    expect: dict[str, str] = Field(default_factory=dict, description="corrects: the answer fields it should have had.")

    @model_validator(mode="after")
    def _expect_with_corrects(self) -> OutcomeRule:
        if bool(self.expect) != (self.evidence == Evidence.corrects):
            raise ValueError("expect is what evidence corrects sets, and only it")
        return self

    def applies(self, result: Result) -> bool:
        return (result.outcome_type in self.outcomes and (not self.labels or result.label in self.labels)
                and result.route not in self.not_routes)


class Datasets(Strict):
    """Datasets that build themselves: which joined outcomes are evidence about the decided answer."""

    outcomes: list[OutcomeRule] = Field(default_factory=list, description="First match wins, per result.")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: Any) -> Any:
    """``30d``, ``12h``, ``90m``, ``45s`` or a number of seconds → seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration: write it as 30d, 12h, 90m or 45s")
        return float(match[1]) * _UNIT_S[match[2]]
    return value


Duration = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]
"""Seconds, written in a workflow as ``30d``, ``12h``, ``90m`` or ``45s``."""


class Retention(Strict):
    """How far back each kind of memory reaches, and why the bounds must agree (checked at load).

    A replay re-reads triggers, so it reaches back as far as the trigger topic keeps them
    (``replay_reach``). An effect it re-requests must be found in the effects ledger, so the ledger
    keeps every entry at least that long (``effects_kept``). A duplicate trigger is dropped by the
    duplicate check within ``dedupe_window``; a later one reaches execute, where the effects ledger
    still stops its actions while ``effects_kept`` lasts. So no replay and no duplicate within
    ``effects_kept`` runs an effect twice. A topic file may keep the triggers longer than
    ``replay_reach``; a replay then reaches that far, so :meth:`Workflow.check` holds the trigger
    topic's retention to ``effects_kept`` too.

    The topics follow (processors/kafka/topics.py, :meth:`windows`): the triggers keep
    ``replay_reach``; what the report reads keeps ``report_window``, and the decisions and dead
    letters, which a replay also asks where each event ended, the longer of the two; review items
    and verdicts never expire, since an item may wait for a person however long.
    """

    dedupe_window: Duration = Field(30 * 86400.0, description=(
        "How long an event id is remembered by the duplicate check; older entries are removed and tombstoned."))
    replay_reach: Duration = Field(30 * 86400.0, description=(
        "How far back a replay can reach: the trigger topic keeps its records this long."))
    effects_kept: Duration | None = Field(None, description=(
        "How long the effects ledger remembers an action done; at least replay_reach and dedupe_window "
        "(the default: the larger of the two)."))
    report_window: Duration = Field(90 * 86400.0, description=(
        "How far back `handoff report` looks: decisions and results are kept this long."))

    @model_validator(mode="after")
    def _effects_outlive_replays(self) -> Retention:
        reach = max(self.replay_reach, self.dedupe_window)
        if self.effects_kept is None:
            self.effects_kept = reach
        elif self.effects_kept < reach:
            raise ValueError(f"effects_kept ({self.effects_kept:.0f}s) is shorter than replay_reach or "
                             f"dedupe_window ({reach:.0f}s): a replay or a late duplicate could run an action "
                             f"again; raise effects_kept or shorten the others")
        return self

    def windows(self) -> Windows:
        """What the topics must keep (processors/kafka/topics.py): the triggers ``replay_reach``, what the
        report reads ``report_window``."""
        return Windows(replay_reach_ms=round(self.replay_reach * 1000),
                       report_window_ms=round(self.report_window * 1000))


class DeadlineDefault(StrEnum):
    """What an item gets when nobody decided it in time: fail closed, never open."""

    reject = "reject"
    """Closed by ``system`` with the reason "deadline passed": nothing continues."""
    escalate = "escalate"
    """Closed by ``system``, and the same item opened again on the ``escalate_to`` queue, with the
    same deadline once more; past that one it is rejected."""


class ReviewDeadline(Strict):
    """How long an item of one review reason waits for a person, on which queue, and what it gets then."""

    deadline: Duration = Field(86400.0, description="How long a person has (24h by default).")
    on_deadline: DeadlineDefault = Field(DeadlineDefault.reject, description=(
        "reject, or escalate to the escalate_to queue; both fail closed: no action runs unapproved."))
    queue: str = Field("reviewers", description="The queue (team) the item is assigned to.")
    escalate_to: str = Field("escalations", description="escalate: the queue the item goes to next.")


class ActionKind(StrEnum):
    webhook = "webhook"
    emit = "emit"
    mcp_tool = "mcp_tool"


class Approval(StrEnum):
    """When an action waits for a person."""

    risk = "risk"
    """When its risk is above the approval risk in force (the control topic may move it)."""
    always = "always"
    """Every time, whatever the rollout mode, thresholds, approval risk or kill switch say (money, closing an
    account): execute refuses to run it without ``approved_by``."""


IDEMPOTENCY_PARTS = ("event_id", "action")
"""What an idempotency key may be made of besides ``arguments.<name>`` and ``decision.<route|label>``."""


class Action(Strict):
    kind: ActionKind
    scope: str = Field(description="The permission this action needs; the workflow must grant it.")
    risk: float = Field(0.0, ge=0, le=1, description="Above the workflow's approval_risk a person approves first.")
    arguments: dict[str, str] = Field(description="Argument name → dotted path into answer./event./decision.")
    arguments_schema: dict = Field(description="JSON Schema the arguments must satisfy before anything runs.")
    url: str | None = Field(None, description="webhook: ${ENV} references are expanded when the stage starts.")
    secret_env: str | None = Field(None, description="webhook: env var holding the HMAC-SHA256 signing secret.")
    timeout_s: float = 5.0
    max_attempts: int = 4
    topic: str | None = Field(None, description="emit: the declared topic the notification goes to.")
    tool: str | None = Field(None, description="mcp_tool: the tool it calls, by its name on the allow-list (tools).")
    approval: Approval = Field(Approval.risk, description="always: a person approves every run, whatever any "
                                                          "setting says.")
    adjustable: list[str] = Field(default_factory=list, description=(
        "Arguments an approver may change (a refund amount), within arguments_schema."))
    idempotency: list[str] = Field(default_factory=lambda: list(IDEMPOTENCY_PARTS), description=(
        "What makes it once: event_id, action, arguments.<name>, decision.route, decision.label, joined in this order "
        "into the idempotency key. [event_id, action, arguments.team] lets a replay that reroutes notify the new team."))
    then: list[str] = Field(default_factory=list, description=(
        "Actions requested once this one has run (a CRM note after a refund, the verdict event that closes the case); "
        "their arguments may also name execution.approved_by, execution.arguments.<name>, "
        "execution.original_arguments.<name> and execution.response.<field> of this one."))

    @model_validator(mode="after")
    def _kind_fields(self) -> Action:
        if self.kind == ActionKind.webhook and not self.url:
            raise ValueError("a webhook action needs url")
        if self.kind == ActionKind.emit and not self.topic:
            raise ValueError("an emit action needs topic")
        if self.kind == ActionKind.mcp_tool and not self.tool:
            raise ValueError("an mcp_tool action needs tool")
        unknown = set(self.adjustable) - set(self.arguments)
        if unknown:
            raise ValueError(f"adjustable names arguments the action does not have: {sorted(unknown)}")
        bad = [part for part in self.idempotency if part not in IDEMPOTENCY_PARTS
               and part not in ("decision.route", "decision.label")
               and part.removeprefix("arguments.") not in self.arguments]
        if bad or not self.idempotency:
            raise ValueError(f"idempotency: {bad or 'empty'}: use event_id, action, arguments.<an argument>, "
                             "decision.route or decision.label")
        return self

    def idempotency_key(self, event_id: str, action: str, arguments: dict[str, Any], decision: dict) -> str:
        """The key that makes this action once, from the parts ``idempotency`` names (default ``<event id>:<action>``)."""
        view = {"event_id": event_id, "action": action, "arguments": arguments, "decision": decision}
        return ":".join(str(lookup(view, part)) for part in self.idempotency)

    @cached_property
    def arguments_check(self) -> SchemaCheck:
        """``arguments_schema`` compiled once: execute checks every request, review every adjusted approval."""
        return SchemaCheck(self.arguments_schema, "(arguments)")

    def resolved_url(self) -> str:
        try:
            return Template(self.url or "").substitute(os.environ)
        except KeyError as exc:
            raise WorkflowError(f"action url {self.url!r} needs environment variable {exc.args[0]}") from None

    def build_arguments(self, view: dict) -> dict[str, Any]:
        return {name: lookup(view, path) for name, path in self.arguments.items()}


def action_view(decision: Decision, answer: dict, event: dict, **more: Any) -> dict[str, Any]:
    """What an action's arguments are taken from: ``answer.``, ``event.`` (the decision's, parsed),
    ``decision.`` (route, label, confidence, prompt, model) and, for an action run after another
    (``then``), ``execution.``."""
    return {"answer": answer, "event": event,
            "decision": {"route": decision.route, "label": decision.label, "confidence": decision.confidence,
                         "prompt": decision.prompt.model_dump(), "model": decision.model}, **more}


class LookupFailure(StrEnum):
    """Where an event goes when one of its lookups failed after its retries."""

    review = "review"
    """A person decides without that context (``lookup_failed``), from the event."""
    dead_letter = "dead_letter"
    """The dead letters, to be replayed once the system of record is back."""


class Lookup(Strict):
    """Context fetched before the model (processors/stages/ground.py): an allow-listed MCP tool or an HTTP GET,
    with arguments taken from the event. Its result is the input ``lookups.<name>``, which reaches the model
    only where the prompt spec declares it."""

    tool: str | None = Field(None, description="An MCP tool on the allow-list (tools); its retries are the tool's.")
    url: str | None = Field(None, description=(
        "HTTP GET instead: ${ENV} expanded at start, {argument} placeholders filled (URL-encoded) per event."))
    arguments: dict[str, str] = Field(default_factory=dict, description="Argument name -> dotted path into the event.")
    timeout_s: float = Field(5.0, gt=0, description="HTTP GET: per attempt.")
    attempts: int = Field(3, ge=1, description="HTTP GET: on timeouts, connection errors and 5xx.")
    on_failure: LookupFailure = LookupFailure.review
    cache_for: Duration | None = Field(None, description=(
        "Reuse a result for the same arguments this long (e.g. 10m); none: look up every event."))

    @model_validator(mode="after")
    def _one_source(self) -> Lookup:
        if (self.tool is None) == (self.url is None):
            raise ValueError("a lookup has either tool (MCP) or url (HTTP GET)")
        return self

    def build_arguments(self, event: dict) -> dict[str, Any]:
        return {name: lookup(event, path) for name, path in self.arguments.items()}


LOOKUPS_INPUT = "lookups"
"""The prompt inputs that render lookup results start with ``lookups.<name>``."""


class Workflow(Strict):
    name: str
    description: str = ""
    trigger: Trigger
    prompt: str = Field(description="<prompt name>@<version>: prompts/<name>/<version>.yaml.")
    label: str = Field(description="The answer field that names the decision (category, intent…).")
    model: Annotated[ModelConfig,
                     Field(discriminator="kind")]
    retries: ModelRetries = ModelRetries()
    rules: list[str] = Field(default_factory=list, description="Business rules from processors/workflow/rules.py.")
    review_threshold: float = Field(0.75, ge=0, le=1, description="Answers less confident than this go to review.")
    review_flag: str | None = Field(None, description=(
        "A boolean answer field: an answer that sets it true goes to review (flagged), however confident."))
    approval_risk: float = Field(0.7, ge=0, le=1, description="Actions riskier than this wait for a person.")
    mode: Mode = Field(Mode.full, description=(
        "The rollout mode until the control topic says otherwise (processors/stages/route.py): shadow decides "
        "and writes to <wf>.shadow, never acts; suggest sends every answer to review; partial acts only on "
        "confident answers whose actions are all low-risk; full acts on every validated answer."))
    partial_max_risk: float = Field(0.2, ge=0, le=1, description=(
        "partial mode: the highest action risk still run without a person."))
    redaction: Redaction = Redaction()
    grants: list[str] = Field(default_factory=list, description="Permission scopes this workflow's actions may use.")
    routes: list[RouteRule]
    actions: dict[str, Action] = Field(default_factory=dict)
    tool_servers: dict[str, ToolServer] = Field(default_factory=dict, description=(
        "MCP servers by name: url (streamable HTTP) or command (stdio); address and credentials from ${ENV}."))
    tools: dict[str, ToolGrant] = Field(default_factory=dict, description=(
        "The allow-list: the only tools the workflow may call, each with its server, scope, timeout and retries."))
    lookups: dict[str, Lookup] = Field(default_factory=dict, description=(
        "Context looked up before the model (a ground stage runs when any is declared)."))
    escalation: Escalation | None = Field(None, description="Which route escalates; none: no escalation recall.")
    outcomes: Outcomes = Outcomes()
    datasets: Datasets = Datasets()
    retention: Retention = Retention()
    review_deadlines: dict[ReviewReason, ReviewDeadline] = Field(default_factory=dict, description=(
        "Per review reason: its deadline, queue and fail-closed default (24h, reviewers, reject when absent)."))

    folder: Path = Field(Path("."), exclude=True)
    namespace: str = Field("", exclude=True)

    def deadline_for(self, reason: ReviewReason) -> ReviewDeadline:
        """The review deadline of ``reason``: the workflow's, else 24h on the reviewers' queue, then reject."""
        return self.review_deadlines.get(reason) or ReviewDeadline()

    @property
    def prompt_path(self) -> Path:
        name, _, version = self.prompt.partition("@")
        return self.folder / "prompts" / name / f"{version}.yaml"

    @cached_property
    def prompt_spec(self) -> PromptSpec:
        return load_prompt(self.prompt_path)

    @property
    def prompt_dir(self) -> Path:
        return self.prompt_path.parent

    def prompt_versions(self) -> list[str]:
        """Every version of the workflow's prompt on disk, oldest first (versions sort by date)."""
        return sorted(p.stem for p in self.prompt_dir.glob("*.yaml"))

    @cached_property
    def loaded_prompt_specs(self) -> dict[str, PromptSpec]:
        """Prompt specs read so far, by version: a stage asks for one per record."""
        return {self.prompt_spec.version: self.prompt_spec}

    def prompt_spec_for(self, version: str) -> PromptSpec:
        """The spec of another version of the same prompt (a label on the control topic may point to
        it), read from disk once."""
        spec = self.loaded_prompt_specs.get(version)
        if spec is None:
            path = self.prompt_dir / f"{version}.yaml"
            if not path.exists():
                raise WorkflowError(f"no version {version!r} of prompt {self.prompt_spec.name} "
                                    f"(known: {self.prompt_versions()})")
            spec = self.loaded_prompt_specs[version] = load_prompt(path)
        return spec

    def action_request(self, name: str, decision: Decision, view: dict, at_ms: int,
                       lookups: str | None) -> ActionRequest:
        """The request of action ``name`` for ``decision``, its arguments and idempotency key taken from ``view``
        (:func:`action_view`); ``lookups``: what the decision was grounded in, for the approver to read."""
        action = self.actions[name]
        arguments = action.build_arguments(view)
        key = action.idempotency_key(decision.event_id, name, arguments, view["decision"])
        return ActionRequest(event_id=decision.event_id, workflow=self.name, action=name, idempotency_key=key,
                             arguments=dumps(arguments), route=decision.route, decision=decision, requested_at_ms=at_ms,
                             lookups=lookups)

    def tool_client(self) -> Tools:
        """The workflow's allow-listed tools on its servers (connections open on first use)."""
        return Tools(self.tool_servers, self.tools)

    def provider(self) -> Provider:
        """The provider ``model`` declares, built now (HTTP kinds read their API keys from the environment)."""
        return build_provider(self.model, self.folder, self.redaction, self.name, COMPLETIONS)

    def with_prompt(self, version: str) -> Workflow:
        """This workflow running ``version`` of its prompt (evals, replay, promotion)."""
        spec = self.prompt_spec_for(version)
        copy = self.model_copy(update={"prompt": f"{spec.name}@{spec.version}"})
        copy.__dict__["prompt_spec"] = spec
        copy.__dict__["loaded_prompt_specs"] = {**self.loaded_prompt_specs, version: spec}
        return copy

    @cached_property
    def topics(self) -> dict[str, TopicSpec]:
        """Every topic by declared name: the engine's, one per route, the trigger (processors/kafka/topics.py; for a
        chained workflow the parent's decisions topic, under the name ``<wf>.triggers``), and
        ``<wf>.grounded`` when lookups are declared (partitioned like the triggers, so classify's store follows it)."""
        topics = workflow_topics(self.name, self.route_names, self.retention.windows(), self.namespace)
        chain = self.trigger.chain
        if chain is not None:  # the parent's decisions topic stands where the trigger topic would
            parent = load_workflow(chain.workflow, self.namespace, self.folder.parent)
            if chain.route not in parent.route_names:
                raise WorkflowError(f"{self.folder / 'workflow.yaml'}:\n  trigger.chain.route: {chain.route!r} is not a "
                                    f"route of {chain.workflow} (routes: {parent.route_names})")
            parent = parent.spec(Role.decisions, chain.route)
            topics[self.topic(Role.triggers)] = parent.model_copy(update={"key_field": None})
        if self.lookups:
            triggers = topics[self.topic(Role.triggers)]
            name = self.topic(Role.grounded)
            topics[name] = TopicSpec(name=triggers.name.removesuffix(Role.triggers) + Role.grounded,
                                     partitions=triggers.partitions, replication=triggers.replication,
                                     value_schema="handoff/grounded_event",
                                     doc="Triggers with what their lookups returned, on their way to classify.")
        return topics

    def topic(self, role: Role | str, route: str | None = None) -> str:
        """The declared topic name ``<workflow>.<role>`` (``<workflow>.decisions.<route>``)."""
        return topic_name(self.name, role, route)

    def spec(self, role: Role, route: str | None = None) -> TopicSpec:
        """The workflow's ``role`` topic (a route's decisions topic)."""
        return self.topics[self.topic(role, route)]

    @cached_property
    def route_names(self) -> list[str]:
        """Every route a decision can take, in order; a ``{answer.field}`` route stands for each value of
        the field's enum in the prompt's output schema. Each has its decisions topic."""
        properties = self.prompt_spec.output_schema.get("properties", {})
        return list(dict.fromkeys(name for route in self.routes for name in self._route_names(route, properties)))

    def decide(self, answer: dict, event: dict) -> tuple[RouteRule, str, str]:
        """The first route whose conditions hold: (route, resolved route name, rule label)."""
        view = {"answer": answer, "event": event}
        for index, route in enumerate(self.routes):
            if route.matches(view):
                return route, route.resolve(view), route.rule_name(index)
        raise LookupError("no route matched; the last route should have no conditions")

    def check(self) -> None:
        """Cross-file checks: prompt, rules, routes → topics, actions → scopes and topics."""
        problems = []
        triggers = self.spec(Role.triggers)
        if self.trigger.chain is not None and self.trigger.schema_ != CHAIN_SCHEMA:
            problems.append(f"trigger.schema: a chained trigger reads the parent's decisions: schema {CHAIN_SCHEMA}")
        elif triggers.value_schema != self.trigger.schema_:
            problems.append(f"trigger.schema: topics/{self.name}.yaml must declare the trigger topic "
                            f"with value_schema {self.trigger.schema_}")
        problems += self._event_paths_problems()
        effects_ms = round(self.retention.effects_kept * 1000)
        if keeps_less(effects_ms, triggers.retention_ms):
            problems.append(f"retention.effects_kept: {span(effects_ms)} is shorter than topics/{self.name}.yaml keeps "
                            f"the triggers ({span(triggers.retention_ms)}): a replay could reach triggers whose "
                            f"effects the ledger has forgotten and run them again; raise effects_kept, or the "
                            f"trigger's retention_ms down to replay_reach")
        spec = self.prompt_spec
        properties = spec.output_schema.get("properties", {})
        if self.label not in properties:
            problems.append(f"label: {self.label!r} is not a property of the prompt's output_schema")
        problems += [f"rules: unknown rule {r!r} (known: {sorted(rules.RULES)})" for r in self.rules
                     if r not in rules.RULES]
        for index, route in enumerate(self.routes):
            problems += [f"routes[{index}].actions: unknown action {a!r}" for a in route.actions
                         if a not in self.actions]
        if self.escalation and self.escalation.route not in self.route_names:
            problems.append(f"escalation.route: {self.escalation.route!r} is not a route of this workflow")
        problems += [f"escalation.missed_outcomes: {t!r} is not in outcomes.types" for t in
                     (self.escalation.missed_outcomes if self.escalation else []) if t not in self.outcomes.types]
        problems += self._datasets_problems(properties)
        if self.review_flag and properties.get(self.review_flag, {}).get("type") != "boolean":
            problems.append(f"review_flag: {self.review_flag!r} is not a boolean property of the prompt's "
                            f"output_schema")
        embedded = self.model.first if isinstance(self.model, CascadeModel) else self.model
        if isinstance(embedded, EmbeddedModel) and embedded.complete and embedded.complete not in COMPLETIONS:
            problems.append(f"model.complete: unknown completion {embedded.complete!r} (known: {sorted(COMPLETIONS)})")
        if self.routes and self.routes[-1].when:
            problems.append("routes: the last route must have no conditions, so every answer has a route")
        for name, action in self.actions.items():
            if action.scope not in self.grants:
                problems.append(f"actions.{name}.scope: {action.scope!r} is not granted (grants: {self.grants})")
            if action.topic and action.topic not in self.topics:
                problems.append(f"actions.{name}.topic: {action.topic!r} is not a topic of this workflow")
            if action.tool and action.tool not in self.tools:
                problems.append(f"actions.{name}.tool: {action.tool!r} is not on the allow-list (tools)")
            problems += [f"actions.{name}.then: unknown action {a!r}" for a in action.then if a not in self.actions]
            if name in self._followed_by(name):
                problems.append(f"actions.{name}.then: it follows itself, so it would never stop")
        for name, declared in self.lookups.items():
            if declared.tool and declared.tool not in self.tools:
                problems.append(f"lookups.{name}.tool: {declared.tool!r} is not on the allow-list (tools)")
        for path in spec.inputs:
            head, _, rest = path.partition(".")
            if head == LOOKUPS_INPUT and rest.partition(".")[0] not in self.lookups:
                problems.append(f"prompt inputs: {path!r} names no declared lookup (lookups: {sorted(self.lookups)})")
        for name, grant in self.tools.items():
            if grant.server not in self.tool_servers:
                problems.append(f"tools.{name}.server: {grant.server!r} is not declared (tool_servers)")
            if grant.scope not in self.grants:
                problems.append(f"tools.{name}.scope: {grant.scope!r} is not granted (grants: {self.grants})")
        if problems:
            raise WorkflowError(f"{self.folder / 'workflow.yaml'}:\n  " + "\n  ".join(problems))

    def _datasets_problems(self, properties: dict) -> list[str]:
        """Each outcome rule's outcome types are the workflow's, and what it expects is an allowed answer."""
        problems = []
        for index, rule in enumerate(self.datasets.outcomes):
            where = f"datasets.outcomes[{index}]"
            problems += [f"{where}.outcomes: {t!r} is not in outcomes.types" for t in rule.outcomes
                         if t not in self.outcomes.types]
            for name, value in rule.expect.items():
                allowed = properties.get(name, {}).get("enum")
                if name not in properties or (allowed is not None and value not in allowed):
                    problems.append(f"{where}.expect.{name}: {value!r} is not an allowed value of the answer's {name}")
        return problems

    def _followed_by(self, name: str) -> set[str]:
        """Every action run after ``name``, through ``then``, however far down."""
        found, todo = set(), list(self.actions[name].then)
        while todo:
            step = todo.pop()
            if step not in found and step in self.actions:
                found.add(step)
                todo += self.actions[step].then
        return found

    def _event_paths_problems(self) -> list[str]:
        """Every path into the trigger event — its key, its event id, the topic's key field, the prompt's
        inputs, ``event.`` paths of routes and action arguments — checked against the trigger schema,
        so a misspelt one fails here and not on the first record. A chained workflow's event is the
        parent's decision unpacked (``parent``, ``event``), not its topic's contract: not checked here."""
        if self.trigger.chain is not None:
            return []
        try:
            contract = default_store().get(self.trigger.schema_)
        except UnknownContract:
            return [f"trigger.schema: no schema {self.trigger.schema_!r} in {project.schemas_dir()}"]
        paths = {"trigger.key": [self.trigger.key], "trigger.event_id": [self.trigger.event_id],
                 f"(topics/{self.name}.yaml) trigger.key_field": [self.spec(Role.triggers).key_field],
                 f"prompt ({self.prompt_path.name}) inputs": [path for path in self.prompt_spec.inputs
                                                              if path.partition(".")[0] != LOOKUPS_INPUT]}
        for index, route in enumerate(self.routes):
            paths[f"routes[{index}].when"] = _in_event(path for alternative in route.when for path in alternative)
        for name, action in self.actions.items():
            paths[f"actions.{name}.arguments"] = _in_event(action.arguments.values())
        return [f"{field}: {path!r} is not a field of {contract.name}"
                for field, found in paths.items() for path in found if path and not contract.has_field(path)]

    @staticmethod
    def _route_names(route: RouteRule, properties: dict) -> list[str]:
        field = _ROUTE_FIELD.match(route.name)
        if not field:
            return [route.name]
        return list(properties.get(field.group(1).removeprefix("answer."), {}).get("enum", []))


def _in_event(paths: Iterable[str]) -> list[str]:
    """The ``event.`` paths among ``paths``, as paths into the event."""
    return [path.removeprefix("event.") for path in paths if path.startswith("event.")]


def _member(value: Any, allowed: frozenset[str]) -> bool:
    try:
        return value in allowed
    except TypeError:  # a list or an object where a value was expected: no match
        return False


def load_workflow(name: str, namespace: str = "", root: Path | None = None) -> Workflow:
    """Load and check ``<root>/<name>/workflow.yaml`` (``root``: the project's ``workflows/``); every
    error names the file and field (or line and column, for a file that is not YAML)."""
    try:
        return _load(name, namespace, root or project.workflows_dir())
    except project.DataFileError as exc:  # workflow, prompt or topics file
        raise WorkflowError(str(exc)) from None


def _load(name: str, namespace: str, root: Path) -> Workflow:
    path = root / name / "workflow.yaml"
    try:
        raw = project.load_yaml(path)
    except FileNotFoundError:
        known = sorted(p.name for p in root.iterdir() if (p / "workflow.yaml").exists()) if root.is_dir() else []
        raise WorkflowError(f"no workflow {name!r}: {path} does not exist (known: {known})") from None
    if not isinstance(raw, dict):
        raise WorkflowError(f"{path}: expected the workflow's fields (a mapping), got {type(raw).__name__}")
    try:
        workflow = Workflow.model_validate({**raw, "folder": path.parent, "namespace": namespace})
    except ValidationError as exc:
        raise WorkflowError(project.describe(path, exc)) from None
    try:
        workflow.prompt_spec  # noqa: B018 - load it now, so a bad prompt file fails here
    except FileNotFoundError as exc:
        raise WorkflowError(f"{path}:\n  prompt: {exc.filename} does not exist") from None
    except ValidationError as exc:
        raise WorkflowError(project.describe(workflow.prompt_path, exc)) from None
    try:
        workflow.check()  # reads topics/<name>.yaml too
    except FileNotFoundError as exc:
        raise WorkflowError(f"{path}:\n  topics: {exc.filename} does not exist") from None
    return workflow


def load_topics(name: str, namespace: str = "") -> dict[str, TopicSpec]:
    """A workflow's topics by declared name. They are derived from the workflow (its routes), so it is
    loaded and checked first."""
    return load_workflow(name, namespace).topics
