"""Review: a person's verdict continues the item it decides, or closes it.

Input: ``<workflow>.verdicts``, keyed by review id, written by ``handoff review`` or the console
(:mod:`processors.ops.review_queue`), each signed for its reviewer (:mod:`processors.signing`).
A verdict not signed with a known key is dead-lettered as ``unsigned_verdict``; one whose
reviewer lacks the role it needs (an approver releases a risky action; a reviewer or an approver
decides anything else) as ``unauthorized_verdict`` (:func:`~processors.workflow.verdict_log.refusal`).
Neither claims the item: the first **accepted** verdict does. Only the first accepted verdict in
the log on a review id is applied; a later one gets a trace saying it was refused, nothing else. The stage knows which
verdict came first from its partition-local store (:class:`FirstVerdicts`, changelog
``<wf>.verdicts.first``): verdicts on one review id share a partition and are met in log order, so
the first one it meets on a review id it has no entry for is the first, and its place is stored.
An invalid first verdict (dead-lettered) still claims the review id: a later verdict is refused.

Applying the first verdict (the verdict carries its review item, so no lookup):

* approve or correct of an answer (low confidence, invalid output, or any other reason but a
  risky action) → a work item on ``<workflow>.validated`` with the reviewed answer and
  ``reviewed_by``, keyed like the trigger, stamped with the control version in force now; route
  decides it (``source="review"``; rollout modes never send it back to review) and requests its
  actions, which execute runs once (idempotency key ``<event id>:<action>``, as always);
* approve of a risky action → the stored action request with ``approved_by`` on
  ``<workflow>.actions``, keyed by its idempotency key, its ``approval`` signed by this stage for
  the approver (execute runs an approved request only with that signature); execute runs it. An approval that adjusts
  arguments (only those the action declares ``adjustable``, within its ``arguments_schema``:
  checked by :func:`verdict_errors`) sends the approved arguments, the requested ones kept as
  ``original_arguments``; the idempotency key stays the request's, so it still runs once;
* reject → closed: a trace with the reason, nothing continues.

A verdict that cannot apply (written by another client without the checks ``handoff review``
makes) goes to the dead letters as ``invalid_verdict``. Under ``at_least_once`` a crash before
the commit applies a verdict again: route then writes its decision twice, and execute's
idempotency ledger still runs each action once.
"""

from __future__ import annotations

import orjson

from processors.clock import now_ms
from processors.control.state import Control
from processors.kafka.topics import Role
from processors.paths import lookup
from processors.records import (
    ControlState,
    FirstVerdict,
    ReviewItem,
    ReviewReason,
    StageName,
    Verdict,
    VerdictKind,
    WorkItem,
)
from processors.runtime.stage import DeadLetter, Emit, Record, Table
from processors.signing import Keyring, Signer
from processors.stages.base import WorkflowStage
from processors.state.store import Store
from processors.workflow.answers import verdict_errors
from processors.workflow.verdict_log import refusal
from processors.workflow.workflow import Workflow


class FirstVerdicts(Store[FirstVerdict]):
    """Where the first verdict on each review id sits in the log, in the store of its verdicts partition
    (changelog ``<wf>.verdicts.first``). Kept forever: a pending item may be decided at any age."""

    def __init__(self, workflow: Workflow):
        super().__init__(workflow.topic(Role.verdicts_first), workflow.topic(Role.verdicts), FirstVerdict)


class Review(WorkflowStage):
    name = StageName.review
    input_roles = [Role.verdicts]
    output_roles = [Role.validated, Role.actions, Role.traces]
    inline = True

    def __init__(self, workflow: Workflow, control: Control | ControlState | None = None):
        super().__init__(workflow, control)
        self.verdicts = FirstVerdicts(workflow)
        self.keyring = Keyring.from_env()
        self.signer = Signer.from_env()  # signs the approvals it hands to execute

    def tables(self) -> list[Table]:
        return [self.verdicts]

    async def process(self, record: Record) -> list[Emit]:
        verdict = Verdict.model_validate(record.value)
        refused = refusal(verdict, self.keyring)
        if refused is not None:  # claims nothing: a forged verdict cannot block the item
            raise DeadLetter(refused.reason, refused.message)
        first = self.verdicts.get(record.partition, verdict.review_id)
        if first is not None and (first.partition, first.offset) != (record.partition, record.offset):
            return [self.trace(verdict.event_id, error=f"verdict {verdict.verdict_id} ({verdict.verdict} by "
                               f"{verdict.reviewer}) refused: {verdict.review_id} was decided first by the verdict "
                               f"at partition {first.partition} offset {first.offset}")]
        claimed = [] if first is not None else [self.verdicts.put(record.partition, verdict.review_id, FirstVerdict(
            review_id=verdict.review_id, partition=record.partition, offset=record.offset, at_ms=now_ms()))]
        errors = verdict_errors(self.workflow, verdict)
        if errors:  # it is still the first in the log: a later verdict on the item is refused
            raise DeadLetter("invalid_verdict", "; ".join(errors), keep=claimed)
        item = verdict.item
        self._count(verdict)
        said = {"review_id": verdict.review_id, "verdict": verdict.verdict, "reviewer": verdict.reviewer,
                "reason": verdict.reason}
        if verdict.verdict == VerdictKind.reject:
            return [*claimed, self.trace(verdict.event_id, decision=said | {"closed": item.reason})]
        if item.reason == ReviewReason.risky_action:
            adjusted = {} if verdict.arguments is None else {"arguments": verdict.arguments,
                                                              "original_arguments": item.action.arguments}
            request = item.action.model_copy(update={"approved_by": verdict.reviewer, **adjusted})
            request = self.signer.acting_as(verdict.reviewer, verdict.signature.roles).sign(request, "approval")
            return [*claimed, Emit(self.workflow.topic(Role.actions), request, key=request.idempotency_key),
                    self.trace(verdict.event_id, decision=said, action_request=request.arguments)]
        return [*claimed,
                Emit(self.workflow.topic(Role.validated), self._reviewed(item, verdict), key=self._trigger_key(item)),
                self.trace(verdict.event_id, decision=said, answer=verdict.answer)]

    def _count(self, verdict: Verdict) -> None:
        """The verdict's part of the live override and escalation-recall rates (:class:`metrics.Quality`),
        by the evidence rules of :mod:`processors.ops.report`; a risky-action approval judges an action,
        not the route, and an invalid or absent answer escalates nothing."""
        item = verdict.item
        if item.reason == ReviewReason.risky_action:
            self.quality.verdict(item.prompt.version, verdict.verdict, None, None)
            return
        answer_route = (None if item.reason in (ReviewReason.invalid_output, ReviewReason.kill_switch)
                        else self._route(item.answer, item.event))
        needed_route = {VerdictKind.approve: answer_route, VerdictKind.reject: None}.get(
            verdict.verdict, self._route(verdict.answer, item.event))
        self.quality.verdict(item.prompt.version, verdict.verdict, answer_route, needed_route)

    def _route(self, answer: str | None, event: str) -> str | None:
        return self.workflow.decide(orjson.loads(answer), orjson.loads(event))[1] if answer else None

    def _reviewed(self, item: ReviewItem, verdict: Verdict) -> WorkItem:
        return WorkItem(event_id=item.event_id, workflow=item.workflow, event=item.event, prompt=item.prompt,
                        model=item.model, raw_answer=item.raw_answer, answer=verdict.answer,
                        control_version=self.control.state.version, replay=item.replay, reviewed_by=verdict.reviewer)

    def _trigger_key(self, item: ReviewItem) -> str | None:
        """The trigger's key, so the reviewed item keeps its entity's order downstream."""
        key = lookup(orjson.loads(item.event), self.workflow.trigger.key)
        return None if key is None else str(key)
