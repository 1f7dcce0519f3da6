"""Review: a person's verdict continues the item it decides, or closes it.

Input: ``<workflow>.verdicts``, keyed by review id, written by ``handoff review`` or the console
(:mod:`processors.ops.review_queue`), each signed for its reviewer (:mod:`processors.signing`).
A verdict not signed with a known key is dead-lettered as ``unsigned_verdict``; one whose
reviewer lacks the role it needs (an approver releases a risky action; a reviewer or an approver
decides anything else) as ``unauthorized_verdict`` (:func:`~processors.workflow.verdict_log.refusal`).
Neither claims the item: the first **accepted** verdict does. Only the first accepted verdict in
the log on a review id is applied; a later one gets a trace saying it was refused, nothing else.
The stage knows which verdict came first from its partition-local store (:class:`FirstVerdicts`, changelog
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
  the approver; execute runs it (an approved request only with that signature). An approval that
  adjusts arguments (only those the action declares ``adjustable``, within its ``arguments_schema``:
  checked by :func:`verdict_errors`) sends the approved arguments, the requested ones kept as
  ``original_arguments``; the idempotency key stays the request's, so it still runs once;
* reject → closed: a trace with the reason, nothing continues.

A verdict that cannot apply (written by another client without the checks ``handoff review``
makes) goes to the dead letters as ``invalid_verdict``.

**Deadlines.** The stage also reads ``<workflow>.review``: each item waits in :class:`OpenItems` (a
store of the review topic's partition, changelog ``<wf>.review.open``) until its ``deadline_ms``
(the workflow's ``review_deadlines``; an item without one, written before deadlines existed, only
waits for a person). Then, on a tick, whether or not anyone is signed in, the
stage writes the item's fail-closed default onto ``<workflow>.verdicts`` as a verdict signed by
``system``: a reject ("deadline passed"), and for ``escalate`` the same item again on the
``escalate_to`` queue with a new deadline (past which it is rejected). That verdict goes through
the log like any other, so a person's verdict that came first still wins, and one that comes
later is refused. An item whose first verdict this instance already holds is not defaulted; one
decided on a verdicts partition another instance owns gets a void system verdict (harmless: the
log keeps the first).

Under ``at_least_once`` a crash before the commit applies a verdict again: route then writes its
decision twice, and execute's idempotency ledger still runs each action once.
"""

from __future__ import annotations

import logging
import uuid

import orjson

from processors.clock import now_ms
from processors.control.state import Control
from processors.kafka.topics import Role
from processors.paths import lookup
from processors.records import (
    ControlState,
    FirstVerdict,
    PersonRole,
    ReviewItem,
    ReviewReason,
    StageName,
    Verdict,
    VerdictKind,
    WorkItem,
)
from processors.runtime import metrics
from processors.runtime.stage import DeadLetter, Emit, Record, Table
from processors.signing import SIGNING_KEY_ENV, SYSTEM, Keyring, Signer
from processors.stages.base import WorkflowStage
from processors.state.store import Store
from processors.workflow.answers import verdict_errors
from processors.workflow.verdict_log import refusal
from processors.workflow.workflow import DeadlineDefault, Workflow

log = logging.getLogger("handoff.review")


class FirstVerdicts(Store[FirstVerdict]):
    """Where the first verdict on each review id sits in the log, in the store of its verdicts partition
    (changelog ``<wf>.verdicts.first``). Kept forever: a pending item may be decided at any age."""

    def __init__(self, workflow: Workflow):
        super().__init__(workflow.topic(Role.verdicts_first), workflow.topic(Role.verdicts), FirstVerdict)


class OpenItems(Store[ReviewItem]):
    """Each review item of a review partition until its deadline (changelog ``<wf>.review.open``)."""

    def __init__(self, workflow: Workflow):
        super().__init__(workflow.topic(Role.review_open), workflow.topic(Role.review), ReviewItem)

    def due_ms(self, entry: ReviewItem) -> int:
        return entry.deadline_ms


class Review(WorkflowStage):
    name = StageName.review
    input_roles = [Role.verdicts, Role.review]
    output_roles = [Role.validated, Role.actions, Role.verdicts, Role.review, Role.traces]
    inline = True

    def __init__(self, workflow: Workflow, control: Control | ControlState | None = None):
        super().__init__(workflow, control)
        self.verdicts = FirstVerdicts(workflow)
        self.open = OpenItems(workflow)
        self.keyring = Keyring.from_env()
        self.signer = Signer.from_env(required=False)  # signs the approvals it hands to execute, and the defaults
        """None: no key is set, so this stage accepts no verdict and writes no deadline default (fail closed)."""
        self.system = None if self.signer is None else self.signer.acting_as(SYSTEM, [PersonRole.reviewer])

    async def start(self) -> None:
        if self.signer is None:
            log.warning("review %s: no signing key (%s): every verdict is dead-lettered as no_signing_key and no "
                        "deadline default is written until one is set", self.workflow.name, SIGNING_KEY_ENV)

    def tables(self) -> list[Table]:
        return [self.verdicts, self.open]

    def tick(self, now_ms: int, partitions: list[tuple[str, int]]) -> list[Emit]:
        """The fail-closed default of every open item of the owned review partitions past its deadline."""
        if self.system is None:  # nobody can sign the default: the items wait for a key and a person
            return []
        decided = self.owned(partitions, Role.verdicts)
        out = []
        for partition in self.owned(partitions, Role.review):
            for review_id, item in self.open.due(partition, now_ms):
                out.append(self.open.delete(partition, review_id))
                if not any(self.verdicts.get(p, review_id) for p in decided):
                    out += self._default(item, now_ms)
        return out

    def _default(self, item: ReviewItem, now: int) -> list[Emit]:
        policy = self.workflow.deadline_for(item.reason)
        escalate = policy.on_deadline == DeadlineDefault.escalate and item.queue != policy.escalate_to
        metrics.DEADLINE_BREACHES.labels(self.workflow.name, item.reason,
                                         DeadlineDefault.escalate if escalate else DeadlineDefault.reject).inc()
        why = f"deadline passed ({item.queue or 'review'} queue): " + (
            f"escalated to {policy.escalate_to}" if escalate else "rejected, fail closed")
        verdict = self.system.sign(Verdict(
            verdict_id=uuid.uuid4().hex, review_id=item.review_id, event_id=item.event_id,
            workflow=self.workflow.name, reviewer=SYSTEM, verdict=VerdictKind.reject, reason=why, at_ms=now,
            item=item), "signature")
        out = [Emit(self.workflow.topic(Role.verdicts), verdict, key=item.review_id)]
        if escalate:
            again = item.model_copy(update={"review_id": f"{item.review_id}:{policy.escalate_to}",
                                            "queue": policy.escalate_to, "created_at_ms": now,
                                            "deadline_ms": now + round(policy.deadline * 1000)})
            out.append(Emit(self.workflow.topic(Role.review), again, key=item.event_id))
        return out

    async def process(self, record: Record) -> list[Emit]:
        if self.is_from(record.topic, Role.review):
            item = ReviewItem.model_validate(record.value)
            if item.deadline_ms is None:  # written before deadlines (or by hand): it waits for a person
                return []
            return [self.open.put(record.partition, item.review_id, item)]
        verdict = Verdict.model_validate(record.value)
        if self.signer is None:  # claims nothing: replay the dead letter once a key is set
            raise DeadLetter("no_signing_key", f"the review stage has no {SIGNING_KEY_ENV}: it can neither check "
                             "this verdict's signature nor sign what it releases")
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
        metrics.TIME_TO_VERDICT.labels(self.workflow.name, item.reason, "system" if verdict.reviewer == SYSTEM
                                       else "person").observe(max(verdict.at_ms - item.created_at_ms, 0) / 1000)
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
                        control_version=self.control.state.version, replay=item.replay, reviewed_by=verdict.reviewer,
                        lookups=item.lookups)

    def _trigger_key(self, item: ReviewItem) -> str | None:
        """The trigger's key, so the reviewed item keeps its entity's order downstream."""
        key = lookup(orjson.loads(item.event), self.workflow.trigger.key)
        return None if key is None else str(key)
