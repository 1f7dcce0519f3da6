"""Outcomes joined back to decisions, against the real broker: a join stage killed between a
decision and its outcome still writes the result once; an outcome that comes first waits for its
decision; one whose decision never comes is dead-lettered with its original bytes (the runtime's
tick, under both guarantees); duplicates and unknown types take their paths."""

from __future__ import annotations

import signal
import time

import pytest
from typer.testing import CliRunner

from processors.avro.serde import AvroSerde
from processors.cli.main import app
from processors.kafka.read import snapshot
from processors.offline.outputs import read
from processors.ops.outcomes import send_outcome
from processors.records import Decision, JoinState, Outcome, PromptRef, Result
from processors.runtime.options import Guarantee
from processors.stages.join import Join
from processors.workflow.workflow import Outcomes
from tests.conftest import Running, deployed
from tests.test_recovery import handoff_run


def decide(kafka, workflow, event_id: str, route: str = "billing", customer: str = "cus_1", at_ms: int = 1_000) -> None:
    """A decision on <wf>.decisions.<route>, keyed by customer like route writes it."""
    decision = Decision(event_id=event_id, workflow=workflow.name, route=route, rule="r", label=route, confidence=0.9,
                        answer="{}", event="{}", prompt=PromptRef(name="triage", version="v1"), model="m",
                        decided_at_ms=at_ms)
    spec = workflow.topics[workflow.topic(f"decisions.{route}")]
    producer = kafka.producer()
    producer.produce(spec.name, key=customer, value=AvroSerde(spec.value_schema).encode(decision.model_dump()))
    assert producer.flush(10) == 0


def report(kafka, workflow, event_id: str, kind: str, at_ms: int = 2_000, source: str = "crm") -> bytes:
    """An outcome on <wf>.outcomes; returns the bytes sent."""
    outcome = Outcome(event_id=event_id, workflow=workflow.name, outcome_type=kind, at_ms=at_ms, source=source)
    send_outcome(workflow, kafka, outcome)
    return AvroSerde("handoff/outcome").encode(outcome.model_dump())


def results(kafka, workflow) -> list[Result]:
    return read(workflow, kafka, "results", Result)


def state(kafka, workflow, event_id: str) -> JoinState | None:
    """The latest changelog entry of ``event_id``."""
    entries = [s for s in read(workflow, kafka, "joins", JoinState) if s.event_id == event_id]
    return entries[-1] if entries else None


def dead_letters(kafka, workflow):
    return snapshot(kafka, workflow.topics[workflow.topic("dlq")].name)


def wait_for(check, what: str, timeout: float = 60, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc is None or proc.poll() is None, f"the join process exited with {proc.returncode} waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_join_killed_between_decision_and_outcome_writes_the_result_once(kafka, receiver, tmp_path, guarantee):
    workflow = deployed("support_ticket", kafka)
    args = ["--stage", "join", "--guarantee", guarantee]
    with open(tmp_path / "join.log", "wb") as log:
        first = handoff_run(kafka, receiver, log, *args)
        decide(kafka, workflow, "e1", route="billing", customer="cus_9")
        wait_for(lambda: (s := state(kafka, workflow, "e1")) is not None and s.decision is not None,
                 "the decision in the join state", proc=first)
        first.send_signal(signal.SIGKILL)
        first.wait(10)

        runner = CliRunner()
        env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "HANDOFF_NAMESPACE": kafka.namespace}
        sent = runner.invoke(app, ["outcome", "e1", "reopened", "--source", "zendesk"], env=env)
        assert sent.exit_code == 0, sent.output  # reported while the joiner is down
        refused = runner.invoke(app, ["outcome", "e1", "teleported"], env=env)
        assert refused.exit_code == 1 and "teleported" in refused.output

        second = handoff_run(kafka, receiver, log, *args)
        wait_for(lambda: len(results(kafka, workflow)) >= 1, "the joined result", proc=second)
        # the same outcome delivered twice, then a later one of the same event (same key: behind it in order)
        report(kafka, workflow, "e1", "closed_won", at_ms=5_000)
        report(kafka, workflow, "e1", "closed_won", at_ms=5_000)
        report(kafka, workflow, "e1", "task_completed", at_ms=6_000)
        wait_for(lambda: any(r.outcome_type == "task_completed" for r in results(kafka, workflow)),
                 "the last outcome's result", proc=second)
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, (tmp_path / "join.log").read_text()[-3000:]

    joined = results(kafka, workflow)
    assert sorted(r.outcome_type for r in joined) == ["closed_won", "reopened", "task_completed"], \
        "one result per outcome, the duplicate joined once, nothing repeated across the kill"
    first_result = next(r for r in joined if r.outcome_type == "reopened")
    assert (first_result.event_id, first_result.route, first_result.label, first_result.outcome_source) == \
        ("e1", "billing", "billing", "zendesk")
    assert first_result.prompt == PromptRef(name="triage", version="v1") and first_result.decided_at_ms == 1_000
    assert all(o.status == "joined" and o.original is None for o in state(kafka, workflow, "e1").outcomes)


def test_outcome_first_waits_for_its_decision_and_bad_outcomes_are_dead_lettered(kafka):
    workflow = deployed("support_ticket", kafka)
    outcomes_topic = workflow.topics[workflow.topic("outcomes")].name
    unknown = Outcome(event_id="e3", workflow=workflow.name, outcome_type="teleported", at_ms=1, source="crm")
    unknown_bytes = AvroSerde("handoff/outcome").encode(unknown.model_dump())
    with Running(Join(workflow), workflow, kafka):
        sent = report(kafka, workflow, "e2", "reply_received")
        producer = kafka.producer()
        producer.produce(outcomes_topic, key="e3", value=unknown_bytes)
        producer.produce(outcomes_topic, key="e4", value=b"not avro")
        assert producer.flush(10) == 0
        wait_for(lambda: (s := state(kafka, workflow, "e2")) is not None, "the outcome waiting in the join state")
        waiting = state(kafka, workflow, "e2")
        assert waiting.decision is None and [o.status for o in waiting.outcomes] == ["waiting"]
        assert waiting.outcomes[0].original.value == sent, "the original bytes are kept while it waits"
        assert results(kafka, workflow) == []

        decide(kafka, workflow, "e2", route="escalation", customer="cus_2", at_ms=3_000)
        wait_for(lambda: results(kafka, workflow), "the result once the decision came")
        wait_for(lambda: len(dead_letters(kafka, workflow)) >= 2, "the bad outcomes' dead letters")

    [result] = results(kafka, workflow)
    assert (result.event_id, result.route, result.outcome_type, result.decided_at_ms) == \
        ("e2", "escalation", "reply_received", 3_000)
    letters = {m.key(): m for m in dead_letters(kafka, workflow)}
    assert set(letters) == {b"e3", b"e4"}
    reasons = {k: dict(m.headers())["handoff.error.reason"].decode() for k, m in letters.items()}
    assert reasons == {b"e3": "unknown_outcome_type", b"e4": "not_avro"}
    assert letters[b"e3"].value() == unknown_bytes and letters[b"e4"].value() == b"not avro"


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_outcome_whose_decision_never_comes_is_dead_lettered_then_redriven(kafka, guarantee):
    workflow = deployed("support_ticket", kafka).model_copy(update={"outcomes": Outcomes(wait_for_decision_s=1)})
    with Running(Join(workflow), workflow, kafka, Guarantee(guarantee)):
        sent = report(kafka, workflow, "e5", "reopened")
        wait_for(lambda: dead_letters(kafka, workflow), "the expired outcome's dead letter")
        [letter] = dead_letters(kafka, workflow)
        headers = {k: v.decode() for k, v in letter.headers()}
        assert letter.value() == sent and letter.key() == b"e5", "the original key and bytes"
        assert headers["handoff.error.reason"] == "decision_never_came" and headers["handoff.stage"] == "join"
        assert headers["handoff.original.topic"] == workflow.topics[workflow.topic("outcomes")].name
        assert {"handoff.original.partition", "handoff.original.offset", "handoff.original.timestamp"} <= set(headers)
        wait_for(lambda: [o.status for o in state(kafka, workflow, "e5").outcomes] == ["expired"],
                 "the outcome marked expired")

        # the decision comes late: the expired outcome is not joined; sent again from the dead letters, it is
        decide(kafka, workflow, "e5", customer="cus_5")
        wait_for(lambda: state(kafka, workflow, "e5").decision is not None, "the late decision in the state")
        assert results(kafka, workflow) == []
        producer = kafka.producer()
        producer.produce(headers["handoff.original.topic"], key=letter.key(), value=letter.value())
        assert producer.flush(10) == 0
        wait_for(lambda: results(kafka, workflow), "the re-driven outcome's result")

    assert [(r.event_id, r.outcome_type) for r in results(kafka, workflow)] == [("e5", "reopened")]
    assert len(dead_letters(kafka, workflow)) == 1


def test_two_joiners_share_the_work_and_join_every_outcome_once(kafka):
    workflow = deployed("support_ticket", kafka)
    events = [f"m{i}" for i in range(24)]

    def send(i: int, side: str) -> None:
        """Odd events: the outcome comes first; even ones: the decision."""
        if (side == "first") == bool(i % 2):
            report(kafka, workflow, events[i], "qualified")
        else:
            decide(kafka, workflow, events[i], customer=f"c{i}")

    with Running(Join(workflow), workflow, kafka, instance="a"):
        for i in range(12):
            send(i, "first")
        with Running(Join(workflow), workflow, kafka, instance="b") as second:  # joins the group: partitions move mid-stream
            wait_for(lambda: second.runtime._partitions, "the second joiner to own partitions")
            for i in range(12, 24):
                send(i, "first")
            for i in range(24):
                send(i, "second")
            wait_for(lambda: len(results(kafka, workflow)) >= len(events), "a result for every event")

    joined = [r.event_id for r in results(kafka, workflow)]
    assert sorted(joined) == sorted(events), "every outcome joined exactly once across two instances"
