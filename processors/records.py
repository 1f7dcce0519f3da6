"""The records handoff writes, as pydantic models mirroring ``schemas/handoff/*.avsc``.

Stages build and read these models; the runtime encodes them with the topic's Avro contract.
``tests/test_records.py`` round-trips every model through its schema, so the two cannot drift.
A record that carries another carries it as a nested Avro record (``ActionRequest.decision``,
``ReviewItem.action``, ``Verdict.item``). Answers and events travel as JSON text: their shape
belongs to each workflow, not to handoff.

A field with a fixed set of values is a ``StrEnum`` here and a ``string`` in Avro, not an Avro
``enum``: a reader's Avro enum must know every symbol a writer uses, so a new member (a new
review reason) would make every consumer built before it fail on the records that carry it —
downstream teams read decisions and review items with their own code. As strings, old readers
read the new value; these models reject one they do not know where handoff itself reads.
(``JoinedOutcome.status`` is an Avro enum: the joiner's own state, read by nobody else.)
"""

from __future__ import annotations

from enum import StrEnum

import orjson
from pydantic import BaseModel, Field

LABELS_FIELD = "expected"
"""Sample files may carry the expected labels for evals on each line; they are not sent."""


REPLAY_HEADER = "handoff-replay"
"""A trigger carrying this header (the replay id) is a deliberate re-run: see classify and validate.
The runtime keeps it on a dead letter, so a replay's failures are told apart (the views, replay)."""


class StageName(StrEnum):
    """The stages a workflow runs: each names its consumer group, its traces (``Trace.step``), its
    review items (``ReviewItem.stage``) and its dead letters (the ``handoff.stage`` header)."""

    ground = "ground"
    """Only in a workflow that declares lookups: it runs before classify."""
    classify = "classify"
    validate = "validate"
    route = "route"
    execute = "execute"
    review = "review"
    join = "join"
    views = "views"
    """Keeps the read models for people up to date (processors/views/); writes no topic."""


class ReviewReason(StrEnum):
    """Why a person must decide an item (``ReviewItem.reason``, the ``handoff_reviews_total`` label)."""

    low_confidence = "low_confidence"
    """A valid answer whose confidence is below the review threshold in force (validate)."""
    invalid_output = "invalid_output"
    """The answer broke its output schema or a rule, again after the one repair (validate)."""
    event_rule = "event_rule"
    """A rule on the event itself failed (it tries to instruct the model): no answer can pass (validate)."""
    risky_action = "risky_action"
    """An action above the approval risk awaits approval; the only reason whose item holds an action
    request (``ReviewItem.action``) rather than an answer to decide (execute)."""
    kill_switch = "kill_switch"
    """The kill switch is on: no model was asked, so there is no answer (classify)."""
    suggest = "suggest"
    """Rollout mode ``suggest``: every answer is a suggestion a person decides (route)."""
    partial = "partial"
    """Rollout mode ``partial``: not confident enough, or an action above the low-risk bound (route)."""
    lookup_failed = "lookup_failed"
    """A lookup declared ``on_failure: review`` failed after its retries: a person decides without that
    context, from the event (ground)."""
    flagged = "flagged"
    """A valid answer that asks for a person itself (its ``review_flag`` field is true: validate)."""


class DecisionSource(StrEnum):
    """Who produced a decided answer."""

    model = "model"
    """The model's answer, as validate let it through."""
    review = "review"
    """A reviewer's answer, approved or corrected, sent on by the review stage."""


class ExecutionStatus(StrEnum):
    """What execute did with an action request (a request that could not run is dead-lettered)."""

    done = "done"
    """The effect was applied (the webhook answered, the notification was written); the ledger has its key."""
    already_done = "already_done"
    """The idempotency ledger already held the key: nothing ran this time."""


class VerdictKind(StrEnum):
    """A person's verdict on a review item."""

    approve = "approve"
    """The answer as it is, or the risky action as requested."""
    correct = "correct"
    """The answer with the reviewer's fields set (never a risky action)."""
    reject = "reject"
    """Closed with a reason; nothing continues."""


class JoinStatus(StrEnum):
    """Where an outcome stands in the joiner's state."""

    waiting = "waiting"
    """Its decision has not been seen; the outcome record is kept to dead-letter it if none comes."""
    joined = "joined"
    """Written out as a result with its decision."""
    expired = "expired"
    """No decision came within the wait: dead-lettered."""


class Mode(StrEnum):
    """Rollout modes, least to most autonomous (applied in processors/stages/route.py)."""

    shadow = "shadow"
    """Decisions go to ``<workflow>.shadow``; no action is ever requested."""
    suggest = "suggest"
    """Every answer goes to review, the model's answer as the suggestion."""
    partial = "partial"
    """An answer acts on its own only when confident enough and every action of its route is low-risk."""
    full = "full"
    """Every validated answer is decided and its actions requested."""


class PersonRole(StrEnum):
    """What a signed-in person may do; a signature names the roles its signer holds (processors/signing.py)."""

    reviewer = "reviewer"
    """Approves, corrects and rejects answers; rejects a risky action."""
    approver = "approver"
    """Releases risky actions, ``approval: always`` ones too (and does what a reviewer does)."""
    prompt_owner = "prompt_owner"
    """Promotes and rolls back prompt labels, sets the rollout mode."""
    operator = "operator"
    """Kill switch, thresholds, approval risk, replay."""


class Signature(BaseModel):
    """``handoff/signature``: who vouches for a record, an HMAC-SHA256 over its canonical form with a key
    the stages know by id (processors/signing.py)."""

    key_id: str
    signer: str
    roles: list[PersonRole] = Field(default_factory=list)
    mac: str


def _lookups(text: str | None) -> dict:
    """A record's grounding results (JSON text) by lookup name; ``{}`` without grounding."""
    return {} if text is None else orjson.loads(text)


class PromptRef(BaseModel):
    """``handoff/prompt_ref``: the prompt spec version that produced an answer."""

    name: str
    version: str


class Usage(BaseModel):
    latency_ms: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0


class WorkItem(Usage):
    """A trigger on its way through classify and validate (``handoff/work_item``)."""

    event_id: str
    workflow: str
    event: str
    attempt: int = 1
    prompt: PromptRef
    model: str
    raw_answer: str | None = None
    answer: str | None = None
    validation_errors: list[str] = Field(default_factory=list)
    trigger_timestamp_ms: int = 0
    control_version: int = 0
    replay: str | None = None
    reviewed_by: str | None = None
    lookups: str | None = None

    def event_dict(self) -> dict:
        return orjson.loads(self.event)

    def lookups_dict(self) -> dict:
        return _lookups(self.lookups)

    def answer_dict(self) -> dict | None:
        return None if self.answer is None else orjson.loads(self.answer)


class GroundedEvent(BaseModel):
    """``handoff/grounded_event``: a trigger with what its lookups returned, on ``<wf>.grounded`` to classify."""

    event_id: str
    workflow: str
    event: str
    lookups: str
    trigger_timestamp_ms: int


class Decision(Usage):
    """``handoff/decision``: what downstream teams consume, one topic per route."""

    event_id: str
    workflow: str
    route: str
    rule: str
    label: str
    confidence: float
    answer: str
    event: str
    prompt: PromptRef
    model: str
    shadow: bool = False
    source: DecisionSource = DecisionSource.model
    decided_at_ms: int
    trigger_timestamp_ms: int = 0
    control_version: int = 0
    replay: str | None = None


class ActionRequest(BaseModel):
    """``handoff/action_request``: an action route asks execute to run, with the decision that asked."""

    event_id: str
    workflow: str
    action: str
    idempotency_key: str
    arguments: str
    route: str
    decision: Decision
    approved_by: str | None = None
    requested_at_ms: int
    original_arguments: str | None = None
    lookups: str | None = None
    approval: Signature | None = None
    """Set with ``approved_by`` by the review stage only: execute runs an approved request only when this
    signs it for an approver."""


class ReviewItem(BaseModel):
    """``handoff/review_item``: something a person must decide, with its whole context."""

    review_id: str
    event_id: str
    workflow: str
    reason: ReviewReason
    stage: StageName
    event: str
    answer: str | None = None
    raw_answer: str | None = None
    validation_errors: list[str] = Field(default_factory=list)
    action: ActionRequest | None = None
    prompt: PromptRef
    model: str
    created_at_ms: int
    control_version: int = 0
    replay: str | None = None
    lookups: str | None = None
    queue: str | None = None
    """Who it is assigned to (a team), from the workflow's ``review_deadlines``."""
    deadline_ms: int | None = None
    """When the review stage decides it by its fail-closed default, if nobody did (epoch ms)."""

    def lookups_dict(self) -> dict:
        """What the answer was checked against."""
        return _lookups(self.lookups)


class Execution(BaseModel):
    """``handoff/execution``."""

    event_id: str
    workflow: str
    action: str
    idempotency_key: str
    status: ExecutionStatus
    attempts: int
    http_status: int | None = None
    response: str | None = None
    latency_ms: float
    executed_at_ms: int
    arguments: str | None = None
    original_arguments: str | None = None
    approved_by: str | None = None


class ActionDone(BaseModel):
    """``handoff/action_done``: the idempotency ledger, compacted by key."""

    idempotency_key: str
    event_id: str
    action: str
    executed_at_ms: int


class SeenEvent(BaseModel):
    """``handoff/seen_event``: the duplicate-event ledger, compacted by event id."""

    event_id: str
    partition: int
    offset: int
    at_ms: int


class FirstVerdict(BaseModel):
    """``handoff/first_verdict``: the review stage's index, where the first verdict on a review id sits."""

    review_id: str
    partition: int
    offset: int
    at_ms: int


class Notification(BaseModel):
    """``handoff/notification``: what an ``emit`` action writes to its topic."""

    event_id: str
    workflow: str
    action: str
    idempotency_key: str
    arguments: str
    at_ms: int


class Trace(Usage):
    """``handoff/trace``: one step of one run; inputs are redacted before this is built."""

    run_id: str
    workflow: str
    step: StageName
    at_ms: int
    prompt: PromptRef | None = None
    model: str | None = None
    inputs: str | None = None
    raw_answer: str | None = None
    answer: str | None = None
    validation: str | None = None
    action_request: str | None = None
    action_response: str | None = None
    decision: str | None = None
    error: str | None = None
    tool: str | None = None


class Outcome(BaseModel):
    """``handoff/outcome``: a business result reported for a decision."""

    event_id: str
    workflow: str
    outcome_type: str
    value: str | None = None
    at_ms: int
    source: str


class Verdict(BaseModel):
    """``handoff/verdict``: a person's verdict on a review item; the first one per review id wins."""

    verdict_id: str
    review_id: str
    event_id: str
    workflow: str
    reviewer: str
    verdict: VerdictKind
    answer: str | None = None
    reason: str | None = None
    at_ms: int
    item: ReviewItem
    arguments: str | None = None
    signature: Signature | None = None
    """Who wrote the verdict (``reviewer``) and the roles they hold; the review stage refuses a verdict without it."""


class Result(BaseModel):
    """``handoff/result``: a decision joined with one outcome reported for it."""

    event_id: str
    workflow: str
    route: str
    label: str
    confidence: float
    source: DecisionSource
    prompt: PromptRef
    decided_at_ms: int
    outcome_type: str
    outcome_value: str | None = None
    outcome_source: str
    outcome_at_ms: int
    joined_at_ms: int


class Original(BaseModel):
    """An input record as consumed, byte for byte: what a dead letter keeps. The joiner stores one per
    waiting outcome, so an outcome whose decision never comes is dead-lettered like any other input."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None = None
    value: bytes
    headers: dict[str, bytes | None] = Field(default_factory=dict)


class JoinedDecision(BaseModel):
    """What a result needs of a decision (the event text stays out of a state kept forever)."""

    route: str
    label: str
    confidence: float
    source: DecisionSource
    prompt: PromptRef
    decided_at_ms: int


class JoinedOutcome(BaseModel):
    outcome_id: str
    status: JoinStatus
    outcome: Outcome
    received_at_ms: int
    original: Original | None = None


class JoinState(BaseModel):
    """``handoff/join_state``: the joiner's state per event id (``<wf>.joins``), and the partial states
    decisions and outcomes are re-keyed into (``<wf>.joins.inbox``); see processors/stages/join.py."""

    event_id: str
    owner_partition: int | None = None
    decision: JoinedDecision | None = None
    outcomes: list[JoinedOutcome] = Field(default_factory=list)
    updated_at_ms: int


class ControlState(BaseModel):
    """``handoff/control_state``: what a workflow's running stages obey; the latest version wins."""

    workflow: str
    version: int
    labels: dict[str, str] = Field(default_factory=dict)
    mode: Mode = Mode.full
    kill_switch: bool = False
    review_threshold: float | None = None
    approval_risk: float | None = None
    changed_by: str
    change: str
    reason: str | None = None
    forced: bool = False
    at_ms: int
    signature: Signature | None = None
    """Who made the change (``changed_by``) and their roles; a running stage ignores a state without it."""


def dumps(value) -> str:
    """JSON text for the string fields above (sorted keys: stable across runs)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
