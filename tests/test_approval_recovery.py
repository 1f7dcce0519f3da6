"""An approval that adjusts a refund's amount runs once, with the new amount, although the execute process
is killed with SIGKILL mid-stream and restarted: real broker, `handoff run --stage execute` processes, the
sample system of record's MCP server on loopback (which applies each idempotency key once)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import orjson

from processors.dev.system_of_record import SystemOfRecordThread
from processors.kafka.read import count, snapshot
from processors.kafka.topics import Role
from processors.ops.review_queue import ReviewQueue
from processors.records import PromptRef, VerdictKind, WorkItem, dumps
from processors.runtime.dead_letter import Header
from processors.stages.execute import Execute
from processors.stages.review import Review
from processors.stages.route import Route
from tests.conftest import Running, approved, deployed
from tests.test_approvals import ANSWER, EVENT, control, record, run
from tests.test_recovery import wait_for

REFUNDS = 10


def handoff_execute(kafka, payments, log) -> subprocess.Popen:
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "HANDOFF_NAMESPACE": kafka.namespace,
                        "HANDOFF_RECORDS_MCP_URL": payments.url, "HANDOFF_RECORDS_MCP_TOKEN": "test-token"}
    return subprocess.Popen([sys.executable, "-m", "processors.cli", "run", "--workflow", "refund", "--stage",
                             "execute", "--max-in-flight", "2"], env=env, stdout=log, stderr=subprocess.STDOUT)


def requests(workflow) -> list:
    """One refund request per event, as route writes it for an answer it decided."""
    out = []
    for n in range(REFUNDS):
        event = EVENT | {"event_id": f"rf-{n}", "refund": {"amount": 100.0 + n, "reason": "broken"}}
        work = WorkItem(event_id=f"rf-{n}", workflow="refund", event=dumps(event),
                        prompt=PromptRef(name="p", version="1"), model="m", answer=dumps(ANSWER | {"amount": 100.0 + n}))
        emits = asyncio.run(run(Route(workflow, control()), record(Role.validated, work, workflow)))
        out += [e.value for e in emits if e.topic == workflow.topic(Role.actions)]
    return out


def test_an_adjusted_approval_runs_once_with_the_new_amount_under_sigkill_of_execute(kafka, tmp_path, monkeypatch):
    workflow = deployed("refund", kafka)
    with SystemOfRecordThread(tmp_path / "records.sqlite") as payments, open(tmp_path / "execute.log", "wb") as log:
        monkeypatch.setenv("HANDOFF_RECORDS_MCP_URL", payments.url)
        monkeypatch.setenv("HANDOFF_RECORDS_MCP_TOKEN", "test-token")
        payments.service.delay_s = 0.4
        actions = workflow.spec(Role.actions)
        producer, serde = kafka.producer(), actions.serde(kafka)
        for req in requests(workflow):
            producer.produce(actions.name, key=req.idempotency_key, value=serde.encode(req.model_dump(), actions.name))
        assert producer.flush(10) == 0

        first = handoff_execute(kafka, payments, log)
        review_topic = workflow.spec(Role.review).name
        wait_for(lambda: count(kafka, review_topic) >= REFUNDS, 120, "every refund to wait for approval", first)
        assert payments.service.refunds_by_key() == {}, "nothing ran before a person approved"

        queue = ReviewQueue(workflow, kafka)
        for item in queue.open_items():
            n = int(item.event_id.removeprefix("rf-"))
            queue.decide(item.review_id, VerdictKind.approve, reviewer="lead", fields={"amount": str(50 + n)})
        with Running(Review(workflow), workflow, kafka):
            wait_for(lambda: len(payments.service.refunds_by_key()) >= 3, 120, "the first approved refunds", first)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed_at = len(payments.service.refunds_by_key())
            second = handoff_execute(kafka, payments, log)
            wait_for(lambda: len(payments.service.refunds_by_key()) == REFUNDS, 180, "every approved refund", second)
            executions = workflow.spec(Role.executions)
            done = lambda: {orjson.loads(e["arguments"])["amount"] for e in  # noqa: E731
                            (executions.serde(kafka).decode(m.value()) for m in snapshot(kafka, executions.name))
                            if e["action"] == "refund"}
            wait_for(lambda: len(done()) == REFUNDS, 60, "an execution record per refund", second)
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0, (tmp_path / "execute.log").read_text()[-3000:]

    assert killed_at < REFUNDS, "the kill should land mid-stream"
    applied = payments.service.refunds_by_key()
    assert len(payments.service.refunds_for(EVENT["order"]["id"])) == REFUNDS, "each refund took effect once"
    assert set(applied) == {f"rf-{n}:refund" for n in range(REFUNDS)}
    assert {key: effect["amount"] for key, effect in applied.items()} == {
        f"rf-{n}:refund": 50.0 + n for n in range(REFUNDS)}, "with the approver's amount"
    records = [executions.serde(kafka).decode(m.value()) for m in snapshot(kafka, executions.name)]
    assert {(r["approved_by"], orjson.loads(r["original_arguments"])["amount"] - orjson.loads(r["arguments"])["amount"])
            for r in records if r["status"] == "done" and r["action"] == "refund"} == {("lead", 50.0)}


def test_a_payment_server_that_is_down_is_retried_then_dead_lettered_with_the_headers(kafka, monkeypatch):
    monkeypatch.setenv("HANDOFF_RECORDS_MCP_URL", "http://127.0.0.1:9/mcp")  # nothing listens on port 9
    monkeypatch.setenv("HANDOFF_RECORDS_MCP_TOKEN", "test-token")
    workflow = deployed("refund", kafka)
    retries = workflow.tools["issue_refund"].retries
    retries.backoff_initial_s = retries.backoff_max_s = 0.01
    [req] = requests(workflow)[:1]
    actions = workflow.spec(Role.actions)
    raw = actions.serde(kafka).encode(approved(req, "lead").model_dump(), actions.name)
    producer = kafka.producer()
    producer.produce(actions.name, key=req.idempotency_key, value=raw)
    assert producer.flush(10) == 0
    dlq = workflow.spec(Role.dlq).name
    with Running(Execute(workflow), workflow, kafka):
        deadline = time.monotonic() + 60
        while count(kafka, dlq) < 1:
            assert time.monotonic() < deadline, "the refund should be dead-lettered"
            time.sleep(0.3)
    [letter] = snapshot(kafka, dlq)
    headers = {k: v.decode() for k, v in letter.headers()}
    assert (headers[Header.error_reason], headers[Header.attempts], headers[Header.stage]) == (
        "tool_unavailable_exhausted", "4", "execute")
    assert headers[Header.original_topic] == actions.name and letter.value() == raw
    assert Header.first_failure_ms in headers
