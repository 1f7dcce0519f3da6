"""Refund adjudication (seed 002) end to end: the real broker, the sample system of record over MCP on
loopback, the workflow's own offline model (the policy engine and its reason classifier), and execute
as a `handoff run --stage execute` process that is killed with SIGKILL mid-refund.

Four requests of the sample: one the policy approves in full, one it denies (past the clause's window),
and two whose answers are scripted wrong — a refund over its clause's limit, a deny without a reason —
which fail validation twice and wait for a person. The approved one waits for an approver, who lowers
the amount; it is paid once however often it is asked (SIGKILL of execute mid-call, a redelivery of
the approved request, a live replay of its trigger): the payment ledger shows one refund. The CRM gets
a note and a verdict event closes each decided case with its whole audit record."""

from __future__ import annotations

import re
import shutil
import signal
import threading
import time

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from processors.cli.main import app
from processors.dev.sample_records import POLICY
from processors.dev.system_of_record import SystemOfRecordThread
from processors.kafka.read import count, snapshot
from processors.kafka.topics import Role
from processors.offline.evals import EvalReport
from processors.ops.review_queue import InvalidVerdict, ReviewQueue
from processors.pipeline import Pipeline
from processors.providers.base import ModelAnswer, ModelRequest, Provider
from processors.records import ReviewReason, StageName, VerdictKind, dumps
from processors.workflow import rules
from processors.workflow.workflow import WorkflowError, load_workflow
from tests.conftest import ROOT, deployed, produce
from tests.test_approval_recovery import handoff_execute
from tests.test_recovery import wait_for

ROWS = {row["event_id"]: row for row in map(orjson.loads, (ROOT / "workflows/refund/datasets/requests.jsonl")
                                            .read_bytes().splitlines())}
APPROVE, DENY, OVER, NO_REASON = "rf-0214", "rf-0116", "rf-0158", "rf-0228"
"""An office chair that does not switch on (clause 1.1, in full), a blender past 1.1's 30 days, a late
delivery (clause 2.2: at most 20%) answered with a full refund, a late delivery denied without a reason."""
SCRIPTED = {
    OVER: {"verdict": "approve", "amount": 140.96, "clause": "2.2", "category": "late_delivery",
           "policy_version": POLICY.version, "rationale": "Late delivery: refund in full.", "confidence": 0.95},
    NO_REASON: {"verdict": "deny", "amount": 0, "clause": "2.2", "category": "late_delivery",
                "policy_version": POLICY.version, "rationale": "", "confidence": 0.95},
}
STAGES = [StageName.ground, StageName.classify, StageName.validate, StageName.route, StageName.review]
"""Everything but execute, which runs as a process of its own (to be killed)."""


class Answering(Provider):
    """The workflow's own model, except for the events given a scripted answer (every attempt)."""

    def __init__(self, real: Provider, answers: dict[str, dict]):
        self.real = real
        self.answers = answers

    async def complete(self, request: ModelRequest) -> ModelAnswer:
        answer = self.answers.get(request.event_id)
        if answer is None:
            return await self.real.complete(request)
        return ModelAnswer(text=dumps(answer), model="scripted:test")

    async def close(self) -> None:
        await self.real.close()


@pytest.fixture
def sor(tmp_path, monkeypatch):
    with SystemOfRecordThread(tmp_path / "records.sqlite") as server:
        monkeypatch.setenv("HANDOFF_RECORDS_MCP_URL", server.url)
        monkeypatch.setenv("HANDOFF_RECORDS_MCP_TOKEN", "test-token")
        yield server


def decoded(kafka, workflow, role: Role) -> list[dict]:
    spec = workflow.spec(role)
    serde = spec.serde(kafka)
    return [serde.decode(m.value()) for m in snapshot(kafka, spec.name)]


def executions(kafka, workflow, key: str) -> list[dict]:
    return [e for e in decoded(kafka, workflow, Role.executions) if e["idempotency_key"] == key]


def closed(kafka, workflow) -> dict[str, dict]:
    """The verdict events by event id: close_case notifications, their audit record parsed."""
    return {n["event_id"]: orjson.loads(n["arguments"]) for n in decoded(kafka, workflow, Role.notifications)
            if n["action"] == "close_case"}


def test_a_refund_waits_for_an_approver_and_is_paid_once_with_the_adjusted_amount(kafka, sor, tmp_path, monkeypatch):
    workflow = deployed("refund", kafka)
    pipeline = Pipeline(workflow, kafka, stages=STAGES, provider=Answering(workflow.provider(), SCRIPTED))
    running = threading.Thread(target=pipeline.run, name="refund-pipeline")
    running.start()
    log = open(tmp_path / "execute.log", "wb")
    execute = handoff_execute(kafka, sor, log)
    try:
        produce(kafka, workflow, [ROWS[e] for e in (APPROVE, DENY, OVER, NO_REASON)])
        queue = ReviewQueue(workflow, kafka)
        waiting = lambda: {i.event_id: i for i in queue.open_items()}  # noqa: E731
        wait_for(lambda: len(waiting()) == 3 and DENY in closed(kafka, workflow), 120,
                 "three requests waiting for a person and the deny closed", execute)

        # never paid without an approval; invalid answers wait for a person, with why
        assert sor.service.refunds_by_key() == {} and sor.service.calls["issue_refund"] == 0
        items = waiting()
        assert items[APPROVE].reason == ReviewReason.risky_action and items[APPROVE].action.action == "refund"
        trail = orjson.loads(items[APPROVE].answer)
        assert (trail["verdict"], trail["clause"], trail["amount"]) == ("approve", "1.1", 154.32)
        assert "clause 1.1" in trail["rationale"] and "154.32" in trail["rationale"]
        grounded = items[APPROVE].lookups_dict()  # the approver reads what the answer was grounded in
        assert (grounded["order"]["order_id"], grounded["payment"]["status"]) == (ROWS[APPROVE]["order"]["id"],
                                                                                  "captured")
        assert grounded["policy"]["version"] == POLICY.version
        assert (items[OVER].reason, items[NO_REASON].reason) == (ReviewReason.invalid_output,) * 2
        assert any("refund_within_policy: amount 140.96 is above clause 2.2's limit of 28.19 EUR" in e
                   for e in items[OVER].validation_errors), items[OVER].validation_errors
        assert any(e.startswith("deny_needs_a_reason") for e in items[NO_REASON].validation_errors)
        # a reviewer's correction meets the same rules against the same lookups
        with pytest.raises(InvalidVerdict, match="above clause 2.2's limit"):
            queue.verdict(items[OVER].review_id, VerdictKind.correct, reviewer="ana", fields={"clause": "2.2"})
        fixed = queue.verdict(items[OVER].review_id, VerdictKind.correct, reviewer="ana",
                              fields={"verdict": "partial", "amount": "28.19"})
        assert orjson.loads(fixed.answer)["amount"] == 28.19

        # approved with a lower amount; execute is killed while the payment call is in flight
        sor.service.delay_s = 2.0
        queue.decide(items[APPROVE].review_id, VerdictKind.approve, reviewer="lead@support", fields={"amount": "100"})
        wait_for(lambda: sor.service.calls["issue_refund"] >= 1, 60, "the refund call", execute)
        execute.send_signal(signal.SIGKILL)
        execute.wait(10)
        sor.service.delay_s = 0.0
        execute = handoff_execute(kafka, sor, log)
        key = f"{APPROVE}:refund"
        wait_for(lambda: APPROVE in closed(kafka, workflow), 90, "the refund paid and its case closed", execute)

        # a redelivery of the approved request, and a live replay of the trigger
        [approved] = [r for r in decoded(kafka, workflow, Role.actions)
                      if r["idempotency_key"] == key and r["approved_by"]]
        actions = workflow.spec(Role.actions)
        producer = kafka.producer()
        producer.produce(actions.name, key=key, value=actions.serde(kafka).encode(approved, actions.name))
        assert producer.flush(10) == 0
        triggers = workflow.spec(Role.triggers)
        [(partition, offset)] = [(m.partition(), m.offset()) for m in snapshot(kafka, triggers.name)
                                 if triggers.serde(kafka).decode(m.value())["event_id"] == APPROVE]
        monkeypatch.setenv("HANDOFF_NAMESPACE", kafka.namespace)
        replay = CliRunner().invoke(app, ["replay", "--workflow", "refund", "--offsets",
                                          f"{partition}:{offset}-{offset}", "--mode", "live", "--id", "r-live",
                                          "--bootstrap", kafka.bootstrap_servers])
        assert replay.exit_code == 0, replay.output
        wait_for(lambda: [e["status"] for e in executions(kafka, workflow, key)].count("already_done") >= 2, 90,
                 "the redelivery and the replay answered already_done", execute)
        time.sleep(1)  # anything still in flight would land now
    finally:
        pipeline.stop()
        running.join(60)
        execute.send_signal(signal.SIGTERM)
        execute.wait(60)
        log.close()
    assert not pipeline.errors, pipeline.errors

    assert sor.service.calls["issue_refund"] >= 2, "the killed run never recorded its call: the restart called again"
    [refund] = sor.service.refunds_for(ROWS[APPROVE]["order"]["id"])
    assert (refund["amount"], refund["idempotency_key"]) == (100.0, key), "one refund, the approver's amount"
    runs = executions(kafka, workflow, key)
    [done] = [e for e in runs if e["status"] == "done"]
    assert {e["status"] for e in runs} == {"done", "already_done"}
    assert (done["approved_by"], orjson.loads(done["arguments"])["amount"],
            orjson.loads(done["original_arguments"])["amount"]) == ("lead@support", 100.0, 154.32)

    cases = closed(kafka, workflow)
    assert set(cases) == {APPROVE, DENY}, "one verdict event per decided case"
    audit = cases[APPROVE]
    assert {k: audit[k] for k in ("verdict", "clause", "requested_amount", "proposed_amount", "approved_amount",
                                  "approved_by", "refund_id", "policy_version", "prompt", "currency")} == {
        "verdict": "approve", "clause": "1.1", "requested_amount": 154.32, "proposed_amount": 154.32,
        "approved_amount": 100.0, "approved_by": "lead@support", "refund_id": refund["refund_id"],
        "policy_version": POLICY.version, "prompt": "refund_adjudicator", "currency": "EUR"}
    assert audit["prompt_version"] == workflow.prompt_spec.version and audit["model"].startswith("refund_policy")
    denied = cases[DENY]
    assert (denied["verdict"], denied["clause"], denied["approved_by"], denied["refund_id"]) == ("deny", "1.1", None,
                                                                                                 None)
    assert "30 days" in denied["rationale"]
    [note] = sor.service.notes_for(ROWS[APPROVE]["customer"]["id"])
    assert note["about"] == ROWS[APPROVE]["order"]["id"] and orjson.loads(note["details"])["amount"] == 100.0
    assert [n["about"] for n in sor.service.notes_for(ROWS[DENY]["customer"]["id"])] == [ROWS[DENY]["order"]["id"]]
    assert count(kafka, workflow.spec(Role.dlq).name) == 0


def test_the_shipped_version_passes_its_suite_grounded_in_the_system_of_record(sor, tmp_path):
    """`handoff eval --workflow refund` makes its lookups for real; the eval rows are held out from training."""
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["eval", "--workflow", "refund", "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    report = EvalReport.model_validate_json(report_path.read_text())
    assert report.passed and {d.dataset for d in report.datasets} == {"golden", "edge", "adversarial"}
    assert {r.metric for r in report.rows if r.target} == {"verdict_accuracy", "category_accuracy", "valid_json_rate",
                                                           "adversarial_fail_closed_rate", "p95_latency_ms"}
    assert sor.service.calls["lookup_order"] >= sum(d.rows for d in report.datasets), "grounded, not guessed"
    assert sor.service.refunds_by_key() == {}, "an eval never acts"
    trained = {e.row["event_id"] for e in load_workflow("refund").provider().classifier.split()[0]}
    evaluated = {orjson.loads(line)["event_id"] for name in ("golden", "edge")
                 for line in (ROOT / f"workflows/refund/datasets/evals/{name}.jsonl").read_bytes().splitlines()}
    assert evaluated and not evaluated & trained


@pytest.mark.parametrize("answer, lookups, problem", [
    ({"verdict": "approve", "amount": 10.0}, {}, "refund_within_policy: the order and the policy were not looked up"),
    ({"verdict": "partial", "amount": 10.0, "clause": "9.9"}, None, "clause '9.9' is not in policy"),
    ({"verdict": "partial", "amount": 10.0, "clause": "3.1"}, None, "applies up to 14 days after the order"),
    ({"verdict": "partial", "amount": 140.0, "clause": "1.1"}, None, "is more than the 130.0 left"),
    ({"verdict": "approve", "amount": 50.0, "clause": "1.1"}, None,
     "verdict_matches_the_amount: approve refunds the 60.0"),
    ({"verdict": "deny", "amount": 0.0, "rationale": "no"}, None, "deny_needs_a_reason"),
    ({"verdict": "partial", "amount": 30.0, "clause": "1.1"}, None, None),
])
def test_the_refund_rules_read_the_lookups(answer, lookups, problem):
    order = {"found": True, "order_id": "O-1", "total": 150.0, "currency": "EUR", "kind": "physical",
             "placed_at": "2026-06-01T00:00:00Z", "refunded": 20.0}
    grounded = {"order": order, "payment": {"status": "captured"}, "policy": POLICY.model_dump(mode="json")}
    event = {"requested_at": "2026-06-20T00:00:00Z", "refund": {"amount": 60.0}}
    names = ["refund_within_policy", "verdict_matches_the_amount", "deny_needs_a_reason"]
    errors = [str(e) for e in rules.check(names, {"policy_version": POLICY.version} | answer, event,
                                          grounded if lookups is None else lookups)]
    assert errors == [] if problem is None else any(problem in e for e in errors), errors


@pytest.mark.parametrize("then, problem", [(["nosuch"], "actions.crm_note.then: unknown action 'nosuch'"),
                                           (["refund"], "actions.refund.then: it follows itself")])
def test_then_names_declared_actions_and_never_comes_back(tmp_path, then, problem):
    shutil.copytree(ROOT / "workflows/refund", tmp_path / "refund")
    path = tmp_path / "refund/workflow.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["actions"]["crm_note"]["then"] = then
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(WorkflowError, match=re.escape(problem)):
        load_workflow("refund", root=tmp_path)
