"""The control topic: prompt labels, rollout modes, thresholds and the kill switch.

The first test runs the whole pipeline against the real broker and changes its control while
it runs: a rollback and then the kill switch must be obeyed without a restart, and every
output must say which control version it was made under. The others drive one stage at a
time with a pinned control state, the way offline runs (evals, shadow replays) use them.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time

import orjson
import pytest

from processors.avro.serde import AvroSerde
from processors.control.store import ControlStore
from processors.control.watcher import ControlWatcher
from processors.kafka.settings import KafkaSettings
from processors.offline.outputs import read
from processors.offline.promote import rollback
from processors.pipeline import Pipeline
from processors.providers.base import ModelRequest
from processors.providers.scripted import ScriptedProvider
from processors.records import ControlState, Decision, PromptRef, ReviewItem, SeenEvent, WorkItem, dumps
from processors.runtime.stage import Record
from processors.stages.classify import Classify
from processors.stages.execute import Execute
from processors.stages.route import Route
from processors.stages.validate import Validate
from processors.workflow.workflow import load_workflow
from tests.conftest import deployed, produce, tickets

NEW, OLD = "2026-05-29.1", "2026-05-20.3"  # support_ticket's production version and its rollback version
BILLING = {"category": "billing", "urgency": "low", "confidence": 0.95, "reason": "A question about an invoice."}
HOW_TO = {"category": "how_to", "urgency": "low", "confidence": 0.95, "reason": "Asks how to do something."}
ESCALATE = {"category": "billing", "urgency": "high", "confidence": 0.9, "reason": "Charged twice; payroll blocked."}


def by_version(request: ModelRequest) -> dict:
    """The model answers differently per prompt version, so an output shows which version asked."""
    return BILLING if request.prompt_version == NEW else HOW_TO


def wait_for(what: str, condition, timeout: float = 90.0):
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def batch(prefix: str, n: int, offset: int) -> list[dict]:
    return [copy.deepcopy(t) | {"event_id": f"{prefix}{i}"} for i, t in enumerate(tickets()[offset:offset + n])]


def produce_replay(kafka: KafkaSettings, workflow, event: dict, replay_id: str, version: str) -> None:
    spec = workflow.topics[workflow.topic("triggers")]
    producer = kafka.producer()
    producer.produce(spec.name, key=event["customer"]["id"], value=AvroSerde(spec.value_schema).encode(
        {k: v for k, v in event.items() if k != "expected"}),
        headers=[("handoff-replay", replay_id.encode()), ("handoff-prompt-version", version.encode())])
    assert producer.flush(10) == 0


def test_a_running_pipeline_obeys_a_rollback_then_the_kill_switch_without_a_restart(kafka, receiver):
    workflow = deployed("support_ticket", kafka)
    store = ControlStore(kafka, workflow)
    first = store.publish("set production", labels={"production": NEW}, changed_by="test")
    provider = ScriptedProvider(default=by_version)
    pipeline = Pipeline(workflow, kafka, ["classify", "validate", "route", "execute"], provider=provider)
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    try:
        # 1. Under the state published before the start: production is NEW. The same ticket again,
        #    marked as a replay through OLD, is decided again rather than dropped as a duplicate.
        a = batch("a", 3, 0)
        produce(kafka, workflow, a)
        produce_replay(kafka, workflow, a[0], "r1", OLD)
        decided = wait_for("batch a and its replay", lambda: _decisions(workflow, kafka, {"a0", "a1", "a2"}, 4))
        originals = [d for d in decided if d.replay is None]
        assert {(d.event_id, d.label, d.prompt.version, d.control_version) for d in originals} == {
            (e["event_id"], "billing", NEW, first.version) for e in a}
        replayed = [d for d in decided if d.replay is not None]
        assert [(d.event_id, d.replay, d.label, d.prompt.version) for d in replayed] == [("a0", "r1", "how_to", OLD)]

        # 2. A rollback on the control topic, while the stages run.
        rolled = rollback(store, reason="candidate answers drift", changed_by="test")
        assert rolled.labels["production"] == OLD and rolled.version == first.version + 1
        wait_for("the stages to see the rollback", lambda: pipeline.control.state.version == rolled.version, 5)
        b = batch("b", 3, 3)
        produce(kafka, workflow, b)
        decided = wait_for("batch b", lambda: _decisions(workflow, kafka, {"b0", "b1", "b2"}, 3))
        assert {(d.label, d.prompt.version, d.control_version, d.replay) for d in decided} == {
            ("how_to", OLD, rolled.version, None)}
        b_items = [w for w in read(workflow, kafka, "classified", WorkItem) if w.event_id.startswith("b")]
        assert {(w.prompt.version, w.control_version) for w in b_items} == {(OLD, rolled.version)}

        # 3. The kill switch: no model call at all, every new trigger to review, whole.
        killed = store.publish("kill switch on", kill_switch=True, reason="provider incident", changed_by="test")
        wait_for("the stages to see the kill switch", lambda: pipeline.control.state.version == killed.version, 5)
        calls_before = len(provider.requests)
        c = batch("c", 3, 6)
        produce(kafka, workflow, c)
        reviewed = wait_for("batch c in review", lambda: _reviews(workflow, kafka, {"c0", "c1", "c2"}, 3))
        assert {(r.reason, r.stage, r.control_version, r.answer) for r in reviewed} == {
            ("kill_switch", "classify", killed.version, None)}
        assert {orjson.loads(r.event)["ticket"]["id"] for r in reviewed} == {e["ticket"]["id"] for e in c}
        assert not [r for r in provider.requests[calls_before:] if r.event_id.startswith("c")]
        assert not _decisions(workflow, kafka, {"c0", "c1", "c2"}, 1)
    finally:
        pipeline.stop()
        runner.join(60)
    assert not runner.is_alive() and not pipeline.errors


def _decisions(workflow, kafka, event_ids: set[str], n: int) -> list[Decision] | None:
    """The decisions on ``event_ids`` once there are ``n`` of them."""
    found = [d for name in workflow.topics if name.startswith(workflow.topic("decisions."))
             for d in read(workflow, kafka, name.removeprefix(f"{workflow.name}."), Decision)
             if d.event_id in event_ids]
    return found if len(found) >= n else None


def _reviews(workflow, kafka, event_ids: set[str], n: int) -> list[ReviewItem] | None:
    found = [r for r in read(workflow, kafka, "review", ReviewItem) if r.event_id in event_ids]
    return found if len(found) >= n else None


def test_the_watcher_reads_the_state_in_force_before_it_returns(kafka):
    workflow = deployed("support_ticket", kafka)
    store = ControlStore(kafka, workflow)
    store.publish("mode suggest", mode="suggest", changed_by="test")
    latest = store.publish("threshold", review_threshold=0.9, changed_by="test")
    watcher = ControlWatcher(kafka, workflow)
    assert watcher.state.version == 0, "nothing is read before start"
    watcher.start()
    try:
        assert watcher.state == latest and watcher.state.mode == "suggest"
    finally:
        watcher.stop()
    assert [s.version for s in store.history()] == [1, 2]


# ---- one stage at a time, with a pinned control state ---------------------------------------------------

WORKFLOW = load_workflow("support_ticket")


def state(**fields) -> ControlState:
    return ControlState.model_validate({"workflow": "support_ticket", "version": 7, "labels": {"production": NEW},
                                        "changed_by": "test", "change": "test", "at_ms": 1} | fields)


def work_item(answer: dict, **fields) -> WorkItem:
    event = {k: v for k, v in tickets()[0].items() if k != "expected"}
    return WorkItem(event_id="e1", workflow="support_ticket", event=dumps(event), prompt=PromptRef(name="p", version=NEW),
                    model="scripted", answer=dumps(answer), raw_answer=dumps(answer), **fields)


def run(stage, value: dict, topic_suffix: str, headers: dict[str, bytes] | None = None, offset: int = 5):
    record = Record(topic=WORKFLOW.topics[WORKFLOW.topic(topic_suffix)].name, partition=0, offset=offset, key=b"k",
                    value=value, timestamp_ms=1, headers=headers or {})
    return asyncio.run(stage.process(record))


def places(emits) -> list[tuple[str, str]]:
    """(topic suffix, review reason / route / action) of each output but traces and ledger entries."""
    out = []
    for e in emits:
        suffix = e.topic.removeprefix("support_ticket.")
        if suffix in ("traces", "seen"):
            continue
        detail = getattr(e.value, "reason", None) if suffix == "review" else getattr(
            e.value, "route", None) if suffix.startswith(("decisions.", "shadow")) else getattr(e.value, "action", "")
        out.append((suffix, detail))
    return out


@pytest.mark.parametrize("mode, answer, expected", [
    ("full", BILLING, [("decisions.billing", "billing"), ("actions", "notify_team")]),
    ("full", ESCALATE, [("decisions.escalation", "escalation"), ("actions", "open_escalation"),
                        ("actions", "notify_team")]),
    ("shadow", ESCALATE, [("shadow", "escalation")]),
    ("suggest", BILLING, [("review", "suggest")]),
    ("partial", BILLING, [("decisions.billing", "billing"), ("actions", "notify_team")]),
    ("partial", ESCALATE, [("review", "partial")]),  # open_escalation's risk 0.3 is above partial_max_risk 0.2
    ("partial", BILLING | {"confidence": 0.8}, [("review", "partial")]),  # below the control's threshold 0.85
])
def test_each_rollout_mode_routes_as_documented(mode, answer, expected):
    emits = run(Route(WORKFLOW, state(mode=mode, review_threshold=0.85)), work_item(answer).model_dump(), "validated")
    assert places(emits) == expected
    for e in emits:
        if isinstance(e.value, (Decision, ReviewItem)):
            assert e.value.control_version == 7
        if isinstance(e.value, Decision):
            assert e.value.shadow == (mode == "shadow")
        if isinstance(e.value, ReviewItem):
            assert e.value.answer == dumps(answer), "the model's answer travels as the suggestion"
            assert e.value.validation_errors and e.value.validation_errors[0].startswith(f"{mode} mode")


@pytest.mark.parametrize("mode", ["suggest", "partial"])
def test_an_answer_a_person_decided_is_not_sent_back_to_review(mode):
    emits = run(Route(WORKFLOW, state(mode=mode)), work_item(ESCALATE, reviewed_by="ana").model_dump(), "validated")
    assert places(emits)[0] == ("decisions.escalation", "escalation")
    assert emits[0].value.source == "review"


def test_the_workflow_file_sets_the_default_mode():
    shadow = WORKFLOW.model_copy(update={"mode": "shadow"})
    assert places(run(Route(shadow), work_item(BILLING).model_dump(), "validated")) == [("shadow", "billing")]


def test_thresholds_come_from_the_control_state_when_set():
    item = work_item(BILLING | {"confidence": 0.8}).model_dump()
    assert places(run(Validate(WORKFLOW), item, "classified")) == [("validated", "")]
    strict = run(Validate(WORKFLOW, state(review_threshold=0.9)), item, "classified")
    assert places(strict) == [("review", "low_confidence")] and strict[0].value.control_version == 7
    assert "below 0.9" in strict[0].value.validation_errors[0]

    request = next(e.value for e in run(Route(WORKFLOW), work_item(ESCALATE).model_dump(), "validated")
                   if getattr(e.value, "action", None) == "open_escalation")
    cautious = Execute(WORKFLOW, state(approval_risk=0.1))
    held = run(cautious, request.model_dump(), "actions")
    assert places(held) == [("review", "risky_action")] and held[0].value.control_version == 7


def test_classify_asks_with_the_labelled_version_and_not_at_all_under_the_kill_switch():
    provider = ScriptedProvider(default=by_version)
    event = {k: v for k, v in tickets()[0].items() if k != "expected"}
    rolled_back = run(Classify(WORKFLOW, provider, state(labels={"production": OLD})), event, "triggers")
    assert rolled_back[0].value.prompt.version == OLD and rolled_back[0].value.control_version == 7
    assert [r.prompt_version for r in provider.requests] == [OLD]

    replayed = run(Classify(WORKFLOW, provider, state()), event, "triggers",
                   headers={"handoff-replay": b"r9", "handoff-prompt-version": OLD.encode()})
    assert (replayed[0].value.replay, replayed[0].value.prompt.version) == ("r9", OLD)
    assert run(Classify(WORKFLOW, provider, state()), event, "triggers",
               headers={"handoff-prompt-version": OLD.encode()})[0].value.prompt.version == NEW, \
        "the version header counts only on a replay"

    calls = len(provider.requests)
    killed = run(Classify(WORKFLOW, provider, state(kill_switch=True)), event, "triggers",
                 headers={"handoff-replay": b"r9"})
    assert len(provider.requests) == calls, "no model call under the kill switch"
    review = killed[0].value
    assert (review.reason, review.answer, review.control_version, review.replay) == ("kill_switch", None, 7, "r9")
    assert review.review_id == f"{event['event_id']}:kill_switch:replay:r9", "a replay's review is a new item"
    assert orjson.loads(review.event) == event


def test_a_replayed_item_is_not_taken_for_a_duplicate_event():
    validate = Validate(WORKFLOW)
    validate.seen.put(0, "e1", SeenEvent(event_id="e1", partition=0, offset=1, at_ms=1))  # settled earlier
    assert places(run(validate, work_item(BILLING).model_dump(), "classified")) == [], "a duplicate: trace only"
    replay = run(validate, work_item(BILLING, replay="r1").model_dump(), "classified")
    assert places(replay) == [("validated", "")] and replay[0].value.replay == "r1"
    assert validate.seen.get(0, "e1").offset == 1, "a replay leaves the ledger as it was"
