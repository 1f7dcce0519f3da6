"""Review deadlines, offline: the review stage's timer gives an undecided item its fail-closed default by ``system``."""

from __future__ import annotations

import asyncio

import orjson
from prometheus_client import REGISTRY

from processors.kafka.topics import Role
from processors.records import PersonRole, ReviewItem, ReviewReason, Verdict, VerdictKind
from processors.runtime.stage import Record
from processors.signing import Keyring
from processors.stages.review import Review
from processors.workflow.verdict_log import refusal
from processors.workflow.workflow import DeadlineDefault, ReviewDeadline, load_workflow
from tests.conftest import WORKFLOWS, signed

POLICY = {ReviewReason.low_confidence: ReviewDeadline(deadline="10m", on_deadline=DeadlineDefault.escalate,
                                                      escalate_to="leads")}


def workflow():
    return load_workflow("support_ticket", "", WORKFLOWS).model_copy(update={"review_deadlines": POLICY})


def item(review_id: str, deadline_ms: int, queue: str = "reviewers") -> ReviewItem:
    return ReviewItem(review_id=review_id, event_id=review_id.split(":")[0], workflow="support_ticket",
                      reason=ReviewReason.low_confidence, stage="validate", event=orjson.dumps({"x": 1}).decode(),
                      answer=orjson.dumps({"category": "bug"}).decode(), prompt={"name": "p", "version": "1"},
                      model="m", created_at_ms=0, queue=queue, deadline_ms=deadline_ms)


def feed(stage: Review, role: Role, value, offset: int) -> list:
    record = Record(topic=stage.workflow.spec(role).name, partition=0, offset=offset, key=b"k",
                    value=value.model_dump(), timestamp_ms=0)
    return asyncio.run(stage.process(record))


def test_an_undecided_item_is_escalated_once_then_rejected_and_a_decided_one_is_left_alone():
    flow = workflow()
    assert flow.deadline_for(ReviewReason.risky_action) == ReviewDeadline()  # 24h, reviewers, reject
    stage = Review(flow)
    for n, open_item in enumerate([item("e1:low_confidence", 1000), item("e2:low_confidence", 1000),
                                   item("e3:low_confidence", 9_000_000)]):
        feed(stage, Role.review, open_item, n)
    decided = signed(Verdict(verdict_id="v", review_id="e2:low_confidence", event_id="e2", workflow="support_ticket",
                             reviewer="ana", verdict=VerdictKind.reject, reason="spam", at_ms=1,
                             item=item("e2:low_confidence", 1000)))
    feed(stage, Role.verdicts, decided, 0)
    owned = [(flow.spec(Role.review).name, 0), (flow.spec(Role.verdicts).name, 0)]
    labels = {"workflow": "support_ticket", "reason": "low_confidence", "default": "escalate"}
    breaches = REGISTRY.get_sample_value("handoff_review_deadline_breaches_total", labels) or 0
    outputs = stage.tick(5000, owned)
    assert REGISTRY.get_sample_value("handoff_review_deadline_breaches_total", labels) == breaches + 1
    verdicts = [e.value for e in outputs if e.topic == flow.topic(Role.verdicts)]
    again = [e.value for e in outputs if e.topic == flow.topic(Role.review)]
    assert [(v.review_id, v.reviewer, v.verdict) for v in verdicts] == [("e1:low_confidence", "system", "reject")]
    assert verdicts[0].reason == "deadline passed (reviewers queue): escalated to leads"
    assert refusal(verdicts[0], Keyring.from_env()) is None and verdicts[0].signature.roles == [PersonRole.reviewer]
    assert [(i.review_id, i.queue, i.deadline_ms) for i in again] == [("e1:low_confidence:leads", "leads", 605_000)]
    assert stage.tick(5000, owned) == [], "each item gets its default once; e3 is not due"
    feed(stage, Role.review, again[0], 3)
    [final] = [e.value for e in stage.tick(700_000, owned) if e.topic == flow.topic(Role.verdicts)]
    assert (final.review_id, final.reason) == ("e1:low_confidence:leads",
                                              "deadline passed (leads queue): rejected, fail closed")
