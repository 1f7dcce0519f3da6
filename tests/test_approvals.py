"""`approval: always`: an action no setting can let run without a person, and approvals that adjust its
arguments. The stages run in memory (no broker adds anything to these checks); the refund goes to the
sample system of record's MCP server on loopback, through the official SDK."""

from __future__ import annotations

import asyncio
import itertools

import orjson
import pytest

from processors.dev.system_of_record import SystemOfRecordThread
from processors.kafka.topics import Role
from processors.records import (
    ActionRequest,
    ControlState,
    Execution,
    Mode,
    PromptRef,
    ReviewItem,
    ReviewReason,
    Verdict,
    VerdictKind,
    WorkItem,
    dumps,
)
from processors.runtime.stage import DeadLetter, Emit, Record
from processors.stages.execute import Execute
from processors.stages.review import Review
from processors.stages.route import Route
from processors.workflow.answers import verdict_errors
from processors.workflow.workflow import load_workflow
from tests.conftest import approved, signed

EVENT = {"event": "refund.requested", "event_id": "rf-1", "requested_at": "2026-02-01T10:00:00Z",
         "customer": {"id": "C-1069"}, "order": {"id": "O-5008", "total": 923.04, "currency": "EUR"},
         "refund": {"amount": 120.0, "reason": "arrived broken"}}
"""An order of the sample system of record (processors/dev/sample_records.py), 9 days old, nothing refunded yet."""
ANSWER = {"verdict": "approve", "amount": 120.0, "clause": "1.1", "category": "damaged", "policy_version": "2026-05.2",
          "rationale": "clause 1.1: damaged goods within 30 days, refunded in full", "confidence": 0.95}


@pytest.fixture(scope="module")
def payments(tmp_path_factory):
    with SystemOfRecordThread(tmp_path_factory.mktemp("sor") / "records.sqlite") as server:
        yield server


@pytest.fixture
def workflow(payments, monkeypatch):
    monkeypatch.setenv("HANDOFF_RECORDS_MCP_URL", payments.url)
    monkeypatch.setenv("HANDOFF_RECORDS_MCP_TOKEN", "test-token")
    return load_workflow("refund")


def control(**fields) -> ControlState:
    return ControlState(workflow="refund", version=1, changed_by="test", change="test", at_ms=0, **fields)


def record(role: Role, value, workflow, offset: int = 0) -> Record:
    return Record(topic=workflow.spec(role).name, partition=0, offset=offset, key=b"C-1001",
                  value=value.model_dump(), timestamp_ms=0)


async def run(stage, *records: Record) -> list[Emit]:
    """Every output of ``records`` through ``stage`` (started and closed like the runtime does)."""
    await stage.start()
    try:
        return [emit for r in records for emit in await stage.process(r)]
    finally:
        await stage.close()


def on(emits: list[Emit], workflow, role: Role) -> list:
    return [e.value for e in emits if e.topic == workflow.topic(role)]


SETTINGS = list(itertools.product(Mode, [None, 0.0, 0.95, 1.0], [False, True], [None, 0.0, 1.0], [False, True]))


@pytest.mark.parametrize("mode,approval_risk,kill_switch,threshold,reviewed", SETTINGS,
                         ids=[f"{m}-risk{a}-kill{k}-threshold{t}-{'reviewed' if r else 'model'}"
                              for m, a, k, t, r in SETTINGS])
def test_approval_always_waits_for_a_person_whatever_the_settings(workflow, payments, mode, approval_risk,
                                                                  kill_switch, threshold, reviewed):
    """Route in every rollout mode, on the model's answer and on a reviewer's (which no mode sends back to
    review), then execute on whatever route requested: nothing runs, and the request waits for a person."""
    state = control(mode=mode, approval_risk=approval_risk, kill_switch=kill_switch, review_threshold=threshold)
    before = dict(payments.service.calls)
    item = WorkItem(event_id="rf-1", workflow="refund", event=dumps(EVENT), prompt=PromptRef(name="p", version="1"),
                    model="m", answer=dumps(ANSWER), reviewed_by="ana" if reviewed else None)
    routed = asyncio.run(run(Route(workflow, state), record(Role.validated, item, workflow)))
    requests = on(routed, workflow, Role.actions)
    executed = asyncio.run(run(Execute(workflow, state),
                               *(record(Role.actions, r, workflow, n) for n, r in enumerate(requests))))
    assert on(executed, workflow, Role.executions) == []
    assert payments.service.calls == before, "no tool was called"
    waiting = [i for i in on(routed, workflow, Role.review) + on(executed, workflow, Role.review)]
    if mode == Mode.shadow:
        assert requests == [] and waiting == []  # shadow never requests an action at all
    else:
        assert len(waiting) == 1, "the item waits for a person"
    assert all(i.reason == ReviewReason.risky_action for i in on(executed, workflow, Role.review))
    assert len(on(executed, workflow, Role.review)) == len(requests)


def request(workflow, **fields) -> ActionRequest:
    item = WorkItem(event_id="rf-1", workflow="refund", event=dumps(EVENT), prompt=PromptRef(name="p", version="1"),
                    model="m", answer=dumps(ANSWER))
    [emit] = [e for e in asyncio.run(run(Route(workflow, control()), record(Role.validated, item, workflow)))
              if e.topic == workflow.topic(Role.actions)]
    return emit.value.model_copy(update=fields)


def approval(workflow, arguments: dict | None, reviewer: str = "lead@support") -> Verdict:
    req = request(workflow)
    item = ReviewItem(review_id="rf-1:risky_action:refund", event_id="rf-1", workflow="refund",
                      reason=ReviewReason.risky_action, stage="execute", event=dumps(EVENT), action=req,
                      prompt=PromptRef(name="p", version="1"), model="m", created_at_ms=1)
    return signed(Verdict(verdict_id="v1", review_id=item.review_id, event_id="rf-1", workflow="refund",
                          reviewer=reviewer, verdict=VerdictKind.approve, at_ms=2, item=item,
                          arguments=None if arguments is None else dumps(orjson.loads(req.arguments) | arguments)))


def test_an_approval_that_adjusts_the_amount_runs_once_with_it_and_records_both(workflow, payments):
    verdict = approval(workflow, {"amount": 45.5})
    assert verdict_errors(workflow, verdict) == []
    [approved] = on(asyncio.run(run(Review(workflow), record(Role.verdicts, verdict, workflow))), workflow,
                    Role.actions)
    assert approved.approved_by == "lead@support"
    assert orjson.loads(approved.arguments)["amount"] == 45.5
    assert orjson.loads(approved.original_arguments)["amount"] == 120.0
    assert approved.idempotency_key == "rf-1:refund"
    execute = Execute(workflow, control())
    outputs = asyncio.run(run(execute, record(Role.actions, approved, workflow)))
    [execution] = on(outputs, workflow, Role.executions)
    assert isinstance(execution, Execution) and execution.status == "done"
    assert (execution.approved_by, orjson.loads(execution.arguments)["amount"],
            orjson.loads(execution.original_arguments)["amount"]) == ("lead@support", 45.5, 120.0)
    refund = payments.service.refunds_by_key()["rf-1:refund"]
    assert orjson.loads(execution.response)["refund_id"] == refund["refund_id"]
    assert refund["amount"] == 45.5
    [tool_trace] = [t for t in on(outputs, workflow, Role.traces) if t.tool]
    assert tool_trace.tool == "issue_refund" and "45.5" in tool_trace.action_request
    assert refund["refund_id"] in tool_trace.action_response and tool_trace.latency_ms > 0

    # a live replay re-requests the action (same key, no approval): the ledger answers, no person, no second refund
    calls = payments.service.calls["issue_refund"]
    replayed = asyncio.run(run(execute, record(Role.actions, request(workflow), workflow, offset=1)))
    assert [e.status for e in on(replayed, workflow, Role.executions)] == ["already_done"]
    assert on(replayed, workflow, Role.review) == [] and payments.service.calls["issue_refund"] == calls
    assert [r["amount"] for r in payments.service.refunds_for("O-5008")] == [45.5]


@pytest.mark.parametrize("adjusted,why", [({"currency": "USD"}, "currency cannot be adjusted"),
                                          ({"amount": 9000}, "maximum"), ({"amount": 0}, "exclusiveMinimum|less")])
def test_an_adjustment_outside_the_adjustable_fields_or_the_schema_is_refused(workflow, adjusted, why):
    errors = verdict_errors(workflow, approval(workflow, adjusted))
    assert errors and any(part in e for e in errors for part in why.split("|")), errors


def test_an_invalid_adjustment_written_anyway_is_dead_lettered_by_the_review_stage(workflow):
    with pytest.raises(DeadLetter) as dead:
        asyncio.run(run(Review(workflow), record(Role.verdicts, approval(workflow, {"currency": "USD"}), workflow)))
    assert dead.value.reason == "invalid_verdict"


def test_a_payment_server_that_is_down_is_retried_then_dead_lettered_with_the_call_traced(workflow, monkeypatch):
    monkeypatch.setenv("HANDOFF_RECORDS_MCP_URL", "http://127.0.0.1:9/mcp")  # nothing listens on port 9
    workflow = load_workflow("refund")
    workflow.tools["issue_refund"].retries.backoff_initial_s = workflow.tools["issue_refund"].retries.backoff_max_s = 0.01
    with pytest.raises(DeadLetter) as dead:
        asyncio.run(run(Execute(workflow, control()), record(Role.actions, approved(request(workflow), "ana"),
                                                             workflow)))
    assert (dead.value.reason, dead.value.attempts) == ("tool_unavailable_exhausted", 4)
    [trace] = [e.value for e in dead.value.keep]
    assert trace.tool == "issue_refund" and "not reachable" in trace.error
