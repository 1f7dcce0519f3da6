"""The records handoff writes, as pydantic models mirroring ``schemas/handoff/*.avsc``.

Stages build and read these models; the runtime encodes them with the topic's Avro contract.
``tests/test_records.py`` round-trips every model through its schema, so the two cannot drift.
Answers and events travel as JSON text: their shape belongs to each workflow, not to handoff.
"""

from __future__ import annotations

from typing import Literal

import orjson
from pydantic import BaseModel, Field

LABELS_FIELD = "expected"
"""Sample files may carry the expected labels for evals on each line; they are not sent."""


class PromptRef(BaseModel):
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

    def event_dict(self) -> dict:
        return orjson.loads(self.event)

    def answer_dict(self) -> dict | None:
        return None if self.answer is None else orjson.loads(self.answer)


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
    source: str = "model"
    decided_at_ms: int
    trigger_timestamp_ms: int = 0
    control_version: int = 0
    replay: str | None = None


class ReviewItem(BaseModel):
    """``handoff/review_item``: something a person must decide, with its whole context."""

    review_id: str
    event_id: str
    workflow: str
    reason: str
    stage: str
    event: str
    answer: str | None = None
    raw_answer: str | None = None
    validation_errors: list[str] = Field(default_factory=list)
    action: str | None = None
    prompt: PromptRef
    model: str
    created_at_ms: int
    control_version: int = 0
    replay: str | None = None


class ActionRequest(BaseModel):
    """``handoff/action_request``."""

    event_id: str
    workflow: str
    action: str
    idempotency_key: str
    arguments: str
    route: str
    decision: str
    approved_by: str | None = None
    requested_at_ms: int

    def decision_record(self) -> Decision:
        return Decision.model_validate_json(self.decision)


class Execution(BaseModel):
    """``handoff/execution``."""

    event_id: str
    workflow: str
    action: str
    idempotency_key: str
    status: str
    attempts: int
    http_status: int | None = None
    response: str | None = None
    latency_ms: float
    executed_at_ms: int


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
    step: str
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


class Outcome(BaseModel):
    """``handoff/outcome``: a business result reported for a decision."""

    event_id: str
    workflow: str
    outcome_type: str
    value: str | None = None
    at_ms: int
    source: str


VerdictKind = Literal["approve", "correct", "reject"]


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
    item: str = ""

    def review_item(self) -> ReviewItem:
        return ReviewItem.model_validate_json(self.item)


class Result(BaseModel):
    """``handoff/result``: a decision joined with one outcome reported for it."""

    event_id: str
    workflow: str
    route: str
    label: str
    confidence: float
    source: str
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
    source: str
    prompt: PromptRef
    decided_at_ms: int


class JoinedOutcome(BaseModel):
    outcome_id: str
    status: Literal["waiting", "joined", "expired"]
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


Mode = Literal["shadow", "suggest", "partial", "full"]
"""Rollout modes, least to most autonomous (applied in processors/stages/route.py)."""


class ControlState(BaseModel):
    """``handoff/control_state``: what a workflow's running stages obey; the latest version wins."""

    workflow: str
    version: int
    labels: dict[str, str] = Field(default_factory=dict)
    mode: Mode = "full"
    kill_switch: bool = False
    review_threshold: float | None = None
    approval_risk: float | None = None
    changed_by: str
    change: str
    reason: str | None = None
    forced: bool = False
    at_ms: int


def dumps(value) -> str:
    """JSON text for the string fields above (sorted keys: stable across runs)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
