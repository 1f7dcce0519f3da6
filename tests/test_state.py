"""Partition-local state stores against the real broker (processors/state/store.py).

A restart reads only the changelog tail its local files lack; a moved partition is restored by its
new owner, and nowhere else; an entry deep in a long history is found (a duplicate, an action done,
a decision) where a read with a deadline would have stopped short; a restore that cannot reach the
end stops the stage with an error instead of running on part of its state; entries past their
window are tombstoned.
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter

import orjson
import pytest
from confluent_kafka import TopicPartition

from processors.clock import now_ms
from processors.dev.bench_state import BULK
from processors.kafka.read import IncompleteRead, reader, snapshot, watermarks
from processors.kafka.topics import Role, apply
from processors.kafka.write import load
from processors.offline.outputs import read
from processors.ops.outcomes import send_outcome
from processors.records import (
    ActionDone,
    ActionRequest,
    Decision,
    Execution,
    JoinedDecision,
    JoinState,
    Notification,
    Outcome,
    PromptRef,
    Result,
    ReviewItem,
    SeenEvent,
    WorkItem,
)
from processors.runtime.dead_letter import Header
from processors.runtime.options import RuntimeOptions
from processors.runtime.runtime import StageRuntime
from processors.stages.execute import Execute
from processors.stages.join import Join
from processors.stages.validate import Validate
from processors.workflow.workflow import Retention
from tests.conftest import Running, deployed
from tests.test_recovery import handoff_run, wait_for

HISTORY = 30_000  # changelog records before the one that matters: more than a hurried restore reads


def item(workflow, kafka, event_id: str, customer: str = "cus_1") -> bytes:
    """A work item validate settles at once: attempt 2 with no answer goes to review (invalid_output)."""
    event = {"event_id": event_id, "customer": {"id": customer, "plan": "pro"}, "ticket": {"subject": "s", "body": "b"}}
    spec = workflow.prompt_spec
    work = WorkItem(event_id=event_id, workflow=workflow.name, event=orjson.dumps(event).decode(), attempt=2,
                    prompt=PromptRef(name=spec.name, version=spec.version), model="m")
    return encoded(workflow, kafka, Role.classified, work)


def encoded(workflow, kafka, role: Role, record) -> bytes:
    return workflow.spec(role).serde(kafka).encode(record.model_dump())


def until(check, what: str, timeout: float = 120, running: Running | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert running is None or running.failure is None, running.failure
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def restored(log_text: str, topic: str) -> int:
    """Changelog records the process says it restored from ``topic``."""
    return sum(int(n) for n in re.findall(rf"restored {re.escape(topic)} partitions \[[\d, ]*\]: (\d+) changelog",
                                          log_text))


def write(kafka, topic: str, records, partition: int | None = None) -> int:
    """Produce ``records`` (key, value bytes) to ``topic``; the highest partition they landed on."""
    landed = load(kafka.producer(**BULK), topic, ((key, value, partition) for key, value in records))
    return max(landed)


def size(kafka, topic: str, partitions) -> int:
    consumer = reader(kafka)
    try:
        return sum(high - low for low, high in (watermarks(consumer, TopicPartition(topic, p)) for p in partitions))
    finally:
        consumer.close()


def reviews(kafka, workflow) -> Counter:
    return Counter(r.event_id for r in read(workflow, kafka, "review", ReviewItem))


def test_a_sigkilled_stage_restores_only_the_changelog_tail_on_restart(kafka, receiver, tmp_path):
    workflow = deployed("support_ticket", kafka)
    classified = workflow.spec(Role.classified).name
    write(kafka, classified, [(f"cus_{i % 20}".encode(), item(workflow, kafka, f"e{i}", f"cus_{i % 20}"))
                              for i in range(300)])
    args = ("--stage", "validate", "--instance", "one")
    with open(tmp_path / "first.log", "wb") as log:
        first = handoff_run(kafka, receiver, log, *args)
        wait_for(lambda: len(reviews(kafka, workflow)) == 300, 120, "300 settled items", first)
        time.sleep(2)  # a commit, and the checkpoint after it
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    history = size(kafka, workflow.spec(Role.seen).name, range(6))
    write(kafka, classified, [(f"cus_{i % 20}".encode(), item(workflow, kafka, f"e{i}", f"cus_{i % 20}"))
                              for i in range(300, 350)] + [(b"cus_0", item(workflow, kafka, "e0", "cus_0"))])
    with open(tmp_path / "second.log", "wb") as log:
        second = handoff_run(kafka, receiver, log, *args)
        wait_for(lambda: len(reviews(kafka, workflow)) == 350, 120, "the 50 new items settled", second)
        time.sleep(1)
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, (tmp_path / "second.log").read_text()[-3000:]

    seen = workflow.spec(Role.seen).name
    assert restored((tmp_path / "first.log").read_text(), seen) == 0, "a first start has nothing to restore"
    tail = restored((tmp_path / "second.log").read_text(), seen)
    assert history >= 300 and tail < history, f"the restart read {tail} of {history} changelog records"
    assert reviews(kafka, workflow)["e0"] == 1, "the duplicate after the restart was recognised"


def test_a_moved_partition_is_restored_by_its_new_owner_and_nowhere_else(kafka, tmp_path):
    workflow = deployed("support_ticket", kafka)
    classified, seen = workflow.spec(Role.classified).name, workflow.spec(Role.seen).name
    for p in range(6):
        write(kafka, classified, [(b"k", item(workflow, kafka, f"p{p}e{i}")) for i in range(20)], partition=p)
    with Running(Validate(workflow), workflow, kafka, instance="a", state_dir=tmp_path / "a") as a:
        until(lambda: len(reviews(kafka, workflow)) == 120, "120 settled items", running=a)
        with Running(Validate(workflow), workflow, kafka, instance="b", state_dir=tmp_path / "b") as b:
            until(lambda: b.owned() and a.owned() and len(a.owned() | b.owned()) == 6, "the partitions shared",
                  running=b)
            assert not a.owned() & b.owned()
            assert b.stage.seen.restored == size(kafka, seen, b.owned()), "b read the whole of its new partitions"
            assert a.stage.seen.restored == 0, "a read nothing again: its own partitions were checkpointed"
            moved = min(b.owned())
            write(kafka, classified, [(b"k", item(workflow, kafka, f"p{moved}e0")),
                                      (b"k", item(workflow, kafka, f"p{moved}fresh"))], partition=moved)
            until(lambda: reviews(kafka, workflow)[f"p{moved}fresh"] == 1, "the fresh item settled", running=b)
    assert reviews(kafka, workflow)[f"p{moved}e0"] == 1, "the new owner knew the event from the moved partition"


def test_a_duplicate_deep_in_history_is_recognised_and_a_partial_restore_stops_the_stage(kafka, tmp_path):
    workflow = deployed("support_ticket", kafka)
    seen, classified = workflow.spec(Role.seen).name, workflow.spec(Role.classified).name
    filler = (SeenEvent(event_id=f"old{i}", partition=0, offset=i, at_ms=now_ms()) for i in range(HISTORY))
    first_copy = SeenEvent(event_id="deep", partition=0, offset=HISTORY, at_ms=now_ms())
    write(kafka, seen, [(e.event_id.encode(), encoded(workflow, kafka, Role.seen, e)) for e in (*filler, first_copy)],
          partition=0)
    write(kafka, classified, [(b"k", item(workflow, kafka, "deep"))], partition=0)

    hurried = Validate(workflow)
    hurried.seen.restore_timeout_s = 0.01
    runtime = StageRuntime(hurried, workflow.name, workflow.topics, kafka,
                           RuntimeOptions(instance="hurried", state_dir=tmp_path / "hurried"))
    with pytest.raises(IncompleteRead, match=re.escape(seen)):
        runtime.run()
    assert not reviews(kafka, workflow), "nothing was processed on part of the state"

    with Running(Validate(workflow), workflow, kafka, state_dir=tmp_path / "v") as running:
        write(kafka, classified, [(b"k", item(workflow, kafka, "fresh"))], partition=0)
        until(lambda: reviews(kafka, workflow)["fresh"] == 1, "the fresh item behind the duplicate", running=running)
    assert reviews(kafka, workflow)["deep"] == 0, f"a duplicate {HISTORY:,} entries deep was dropped"


def executed(workflow, kafka, tmp_path, event_id: str) -> list[Execution]:
    """Execute's answer to a notify_team request of ``event_id`` at offset 0 of the actions' partition 0."""
    key = f"{event_id}:notify_team"
    decision = Decision(event_id=event_id, workflow=workflow.name, route="billing", rule="r", label="billing",
                        confidence=0.9, answer="{}", event="{}", prompt=PromptRef(name="p", version="v"), model="m",
                        decided_at_ms=now_ms())
    request = ActionRequest(event_id=event_id, workflow=workflow.name, action="notify_team", idempotency_key=key,
                            arguments=orjson.dumps({"team": "billing", "ticket_id": "t"}).decode(), route="billing",
                            decision=decision, requested_at_ms=now_ms())
    write(kafka, workflow.spec(Role.actions).name, [(key.encode(), encoded(workflow, kafka, Role.actions, request))],
          partition=0)
    with Running(Execute(workflow), workflow, kafka, state_dir=tmp_path / "x") as running:
        until(lambda: read(workflow, kafka, "executions", Execution), "the execution record", running=running)
    return read(workflow, kafka, "executions", Execution)


def test_an_action_done_deep_in_history_is_not_done_again(kafka, receiver, tmp_path):
    workflow = deployed("support_ticket", kafka)
    done = workflow.spec(Role.actions_done).name
    key = "deep:notify_team"
    entries = [ActionDone(idempotency_key=f"old{i}:notify_team", event_id=f"old{i}", action="notify_team",
                          executed_at_ms=now_ms()) for i in range(HISTORY)]
    entries.append(ActionDone(idempotency_key=key, event_id="deep", action="notify_team", executed_at_ms=now_ms()))
    write(kafka, done, [(e.idempotency_key.encode(), encoded(workflow, kafka, Role.actions_done, e)) for e in entries],
          partition=0)
    [execution] = executed(workflow, kafka, tmp_path, "deep")
    assert execution.status == "already_done"
    assert not read(workflow, kafka, "notifications", Notification), "the action did not run again"
    assert not receiver.applied


def test_a_ledger_entry_of_an_uncommitted_request_is_redone_under_at_least_once(kafka, receiver, tmp_path):
    """A crash under at_least_once can leave a record's ledger entry in the changelog and its notification
    nowhere (each output is acknowledged on its own). The record was not committed, so it runs again: the
    restore must skip the entry written for it, or the action answers already_done and never notifies."""
    workflow = deployed("support_ticket", kafka)
    done = workflow.spec(Role.actions_done).name
    key = "crashed:notify_team"
    entry = ActionDone(idempotency_key=key, event_id="crashed", action="notify_team", executed_at_ms=now_ms())
    producer = kafka.producer()
    producer.produce(done, key=key.encode(), value=encoded(workflow, kafka, Role.actions_done, entry), partition=0,
                     headers=[(Header.source_offset, b"0")])  # written for the request at offset 0 below
    producer.flush(30)
    [execution] = executed(workflow, kafka, tmp_path, "crashed")
    assert execution.status == "done", "the entry of the uncommitted request was skipped on restore"
    assert [n.idempotency_key for n in read(workflow, kafka, "notifications", Notification)] == [key]


def test_an_outcome_whose_decision_is_deep_in_history_is_joined(kafka, tmp_path):
    workflow = deployed("support_ticket", kafka)
    joins = workflow.spec(Role.joins).name
    decided = JoinedDecision(route="billing", label="billing", confidence=0.9, source="model",
                             prompt=PromptRef(name="p", version="v"), decided_at_ms=now_ms())
    deep = JoinState(event_id="deep", decision=decided, updated_at_ms=now_ms())
    partition = write(kafka, joins, [(b"deep", encoded(workflow, kafka, Role.joins, deep))])  # where the inbox puts it
    filler = (JoinState(event_id=f"old{i}", decision=decided, updated_at_ms=now_ms()) for i in range(HISTORY))
    write(kafka, joins, [(s.event_id.encode(), encoded(workflow, kafka, Role.joins, s)) for s in filler],
          partition=partition)
    with Running(Join(workflow), workflow, kafka, state_dir=tmp_path / "j") as running:
        send_outcome(workflow, kafka, Outcome(event_id="deep", workflow=workflow.name, outcome_type="reopened",
                                              at_ms=now_ms(), source="crm"))
        until(lambda: read(workflow, kafka, "results", Result), "the joined result", running=running)
    [result] = read(workflow, kafka, "results", Result)
    assert (result.event_id, result.route, result.outcome_type) == ("deep", "billing", "reopened")


def test_an_event_id_past_the_dedupe_window_is_forgotten_and_tombstoned(kafka, tmp_path):
    workflow = deployed("support_ticket", kafka)
    workflow = workflow.model_copy(update={"retention": Retention(dedupe_window="2s")})
    classified, seen = workflow.spec(Role.classified).name, workflow.spec(Role.seen).name
    with Running(Validate(workflow), workflow, kafka, state_dir=tmp_path / "v") as running:
        write(kafka, classified, [(b"k", item(workflow, kafka, "once"))], partition=0)
        until(lambda: any(m.key() == b"once" and m.value() is None for m in snapshot(kafka, seen)),
              "the tombstone of the expired entry", running=running)
        write(kafka, classified, [(b"k", item(workflow, kafka, "once"))], partition=0)
        until(lambda: reviews(kafka, workflow)["once"] == 2, "the same event id, settled again", running=running)


def test_local_files_of_a_recreated_changelog_are_not_trusted(kafka, tmp_path):
    """A store's files checkpointed against a changelog that was since deleted and created again (or
    belong to another cluster) are wiped: the new log is the truth."""
    workflow = deployed("support_ticket", kafka)
    classified, seen = workflow.spec(Role.classified), workflow.spec(Role.seen)
    with Running(Validate(workflow), workflow, kafka, state_dir=tmp_path / "v") as running:
        write(kafka, classified.name, [(b"k", item(workflow, kafka, f"e{i}")) for i in range(5)], partition=0)
        until(lambda: len(reviews(kafka, workflow)) == 5, "5 settled items", running=running)
    admin = kafka.admin()
    admin.delete_topics([seen.name], operation_timeout=30)[seen.name].result()
    until(lambda: seen.name not in admin.list_topics(timeout=10).topics, "the changelog deleted")
    apply(admin, [seen])
    with Running(Validate(workflow), workflow, kafka, state_dir=tmp_path / "v") as running:
        write(kafka, classified.name, [(b"k", item(workflow, kafka, "e0"))], partition=0)
        until(lambda: reviews(kafka, workflow)["e0"] == 2, "e0 settled again", running=running)
