"""Crashes: a stage process killed with SIGKILL mid-stream and restarted loses no input; under
exactly_once a read_committed reader sees no duplicate decision, and no action takes effect twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from processors.avro.serde import AvroSerde
from processors.kafka.read import count, snapshot
from processors.kafka.topics import Role
from processors.offline.outputs import read
from processors.ops.summary import collect
from processors.records import Execution
from tests.conftest import SECRET, deployed, produce, tickets


def handoff_run(kafka, receiver, log, *args) -> subprocess.Popen:
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "HANDOFF_NAMESPACE": kafka.namespace,
                        "HANDOFF_WEBHOOK_URL": receiver.url, "HANDOFF_WEBHOOK_SECRET": SECRET}
    return subprocess.Popen([sys.executable, "-m", "processors.cli", "run", "--workflow", "support_ticket", *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"the stage process exited with {proc.returncode} while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def decisions(workflow) -> list[str]:
    """The workflow's decision topics (one per route)."""
    return [s.name for n, s in workflow.topics.items() if n.startswith(f"{workflow.name}.decisions.")]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_sigkill_mid_stream_then_restart_loses_nothing(kafka, receiver, tmp_path, guarantee):
    workflow = deployed("support_ticket", kafka)
    sample = tickets(injected=True)
    produce(kafka, workflow, sample)
    decision_topics = decisions(workflow)
    args = ["--guarantee", guarantee, "--max-in-flight", "8"]

    with open(tmp_path / "run.log", "wb") as log:
        first = handoff_run(kafka, receiver, log, *args)
        wait_for(lambda: count(kafka, *decision_topics) >= 40, 120, "the first decisions", first)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = count(kafka, *decision_topics)

        second = handoff_run(kafka, receiver, log, *args)
        run_to_the_end(second, kafka, workflow, len(sample), tmp_path / "run.log")

    assert killed_at < len(sample), "the kill should land mid-stream"
    assert_placed_once(kafka, receiver, workflow, guarantee, len(sample))


def run_to_the_end(proc: subprocess.Popen, kafka, workflow, triggers: int, log: Path) -> None:
    """Wait until every trigger is placed and every decision's actions were executed (execute may be
    the last stage to resume after an outage), let what is still in flight land (so duplicates would
    show), then SIGTERM: the process drains and exits cleanly."""
    wait_for(lambda: executed_all(kafka, workflow, collect(workflow, kafka), triggers), 240,
             "every ticket to be placed and its actions executed", proc)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]


def executed_all(kafka, workflow, summary, triggers: int) -> bool:
    """Every trigger placed, and every decision's actions executed (support_ticket: notify_team for each,
    open_escalation for each escalation), by idempotency key: repeats under at_least_once count once."""
    keys = {execution.idempotency_key for execution in read(workflow, kafka, "executions", Execution)}
    wanted = {f"{e}:notify_team" for e in summary.decided} | {
        f"{e}:open_escalation" for e, route in summary.decided.items() if route == "escalation"}
    return summary.placed == triggers and wanted <= keys


def assert_placed_once(kafka, receiver, workflow, guarantee: str, triggers: int) -> None:
    """Every trigger placed once, each escalation applied once (the receiver counts by Idempotency-Key),
    one team notification per decided event once deduped by its idempotency key (the README's promise
    for emit consumers under at_least_once), and under exactly_once a read_committed reader sees every
    decision and every notification once."""
    summary = collect(workflow, kafka)
    assert summary.placed == summary.triggers == triggers and not summary.in_two_places()
    escalated = {e for e, route in summary.decided.items() if route == "escalation"}
    assert set(receiver.applied) == {f"{e}:open_escalation" for e in escalated}, "each escalation took effect once"
    notes = workflow.spec(Role.notifications)
    per_key = Counter(notes.serde(kafka).decode(m.value())["idempotency_key"] for m in snapshot(kafka, notes.name))
    assert set(per_key) == {f"{e}:notify_team" for e in summary.decided}, "deduped by key: one notification per decision"
    if guarantee == "exactly_once":
        assert max(per_key.values()) == 1, "read_committed sees every notification once"
        serde = AvroSerde("handoff/decision")
        per_event = Counter(serde.decode(m.value())["event_id"] for t in decisions(workflow) for m in snapshot(kafka, t))
        assert per_event and max(per_event.values()) == 1, "read_committed sees every decision once"
