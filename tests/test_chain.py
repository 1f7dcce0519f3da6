"""Chained workflows on a real broker: support_ticket's billing decisions trigger a `reply` workflow that drafts
a reply, on topics with no orchestrator; the child's records carry the parent's event id, decision and prompt
version, and `handoff trace EVENT_ID` shows both workflows' steps in time order."""

from __future__ import annotations

import shutil
import time

import orjson
import yaml
from typer.testing import CliRunner

from processors.cli.main import app
from processors.kafka.read import count, snapshot
from processors.kafka.topics import Role
from processors.project import EXAMPLES, PROJECT_ENV
from processors.providers.scripted import ScriptedProvider
from processors.stages.classify import Classify
from processors.stages.route import Route
from processors.stages.validate import Validate
from processors.workflow.workflow import load_workflow
from tests.conftest import Running, deployed, produce, tickets

REPLY = {
    "name": "reply", "description": "Draft a reply to every billing ticket support_ticket decided.",
    "trigger": {"event": "support_ticket.decided", "schema": "handoff/decision", "key": "event.customer.id",
                "chain": {"workflow": "support_ticket", "route": "billing"}},
    "prompt": "reply_drafter@2026-06-03.1", "label": "tone", "model": {"kind": "scripted"},
    "retention": {"effects_kept": "90d"},  # the parent's decisions, its triggers, are kept as long as its reports look back
    "grants": ["replies:send"], "routes": [{"name": "send", "actions": ["send_reply"]}],
    "actions": {"send_reply": {"kind": "emit", "topic": "reply.notifications", "scope": "replies:send",
                               "arguments": {"ticket_id": "event.event.ticket.id", "category": "event.parent.label"},
                               "arguments_schema": {"type": "object", "required": ["ticket_id", "category"]}}}}
PROMPT = {"name": "reply_drafter", "version": "2026-06-03.1", "owner": "support", "model": "gpt-4.1-mini",
          "inputs": ["parent.label", "parent.prompt.version", "event.ticket.subject"], "system": "Draft replies.",
          "template": "A {{ parent.label }} ticket (decided by {{ parent.prompt.version }}): {{ event.ticket.subject }}",
          "output_schema": {"type": "object", "required": ["tone", "confidence", "reply"],
                            "properties": {"tone": {"enum": ["friendly", "formal"]},
                                           "confidence": {"type": "number"}, "reply": {"type": "string"}}}}


def chained_project(tmp_path):
    root = tmp_path / "project"
    for folder in ("schemas", "topics", "workflows/support_ticket"):
        shutil.copytree(EXAMPLES / folder, root / folder)
    (root / "topics/reply.yaml").write_text(yaml.safe_dump({
        "workflow": "reply", "trigger": {"partitions": 6, "value_schema": "handoff/decision"}}))
    prompts = root / "workflows/reply/prompts/reply_drafter"
    prompts.mkdir(parents=True)
    (prompts / "2026-06-03.1.yaml").write_text(yaml.safe_dump(PROMPT))
    (root / "workflows/reply/workflow.yaml").write_text(yaml.safe_dump(REPLY, sort_keys=False))
    return root


def test_a_chained_workflow_runs_end_to_end_and_handoff_trace_shows_the_chain(kafka, tmp_path, monkeypatch):
    root = chained_project(tmp_path)
    monkeypatch.setenv(PROJECT_ENV, str(root))
    parent = deployed("support_ticket", kafka, root / "workflows")
    child = deployed("reply", kafka, root / "workflows")
    assert child.spec(Role.triggers).name == parent.spec(Role.decisions, "billing").name
    sample = tickets()[:8]
    produce(kafka, parent, sample)
    drafts = ScriptedProvider()
    stages = [Classify(parent, ScriptedProvider()), Validate(parent), Route(parent),
              Classify(child, drafts), Validate(child), Route(child)]
    runs = [Running(stage, w, kafka, instance=f"{w.name}-{stage.name}")
            for stage, w in zip(stages, [parent] * 3 + [child] * 3)]
    for running in runs:
        running.__enter__()
    try:
        deadline = time.monotonic() + 120
        while count(kafka, child.spec(Role.decisions, "send").name) < len(sample):
            assert time.monotonic() < deadline, "every billing decision should get its reply decided"
            time.sleep(0.5)
    finally:
        for running in reversed(runs):
            running.__exit__(None, None, None)

    send = child.spec(Role.decisions, "send")
    decided = [send.serde(kafka).decode(m.value()) for m in snapshot(kafka, send.name)]
    assert {d["event_id"] for d in decided} == {t["event_id"] for t in sample}, "the chain keeps the parent's event id"
    first = orjson.loads(decided[0]["event"])
    assert first["parent"]["workflow"] == "support_ticket" and first["parent"]["route"] == "billing"
    assert first["parent"]["prompt"]["version"] == parent.prompt_spec.version
    assert first["event"]["ticket"]["id"].startswith("T")
    assert all(f"decided by {parent.prompt_spec.version}" in r.user for r in drafts.requests)

    # the parent's live replay re-decides an event: the child takes the replayed decision as a replay, not a duplicate
    billing = parent.spec(Role.decisions, "billing")
    [original] = [m for m in snapshot(kafka, billing.name)  # not the event traced below
                  if billing.serde(kafka).decode(m.value())["event_id"] == sample[-1]["event_id"]]
    replayed = billing.serde(kafka).decode(original.value()) | {"replay": "fix-1"}
    producer = kafka.producer()
    producer.produce(billing.name, key=original.key(), value=billing.serde(kafka).encode(replayed, billing.name))
    assert producer.flush(10) == 0
    classified = child.spec(Role.classified)
    with Running(Classify(child, drafts), child, kafka, instance="reply-classify"):
        deadline = time.monotonic() + 60
        while count(kafka, classified.name) < len(sample) + 1:
            assert time.monotonic() < deadline, "the replayed decision should be classified again"
            time.sleep(0.5)
    items = [classified.serde(kafka).decode(m.value()) for m in snapshot(kafka, classified.name)]
    assert [i["replay"] for i in items if i["event_id"] == replayed["event_id"]] == [None, "fix-1"]

    event_id = sample[0]["event_id"]
    result = CliRunner().invoke(app, ["trace", event_id, "--workflow", "reply",
                                      "--bootstrap", kafka.bootstrap_servers],
                                env={"HANDOFF_NAMESPACE": kafka.namespace, PROJECT_ENV: str(root)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    steps = [(ln.split()[1], ln.split()[2]) for ln in lines[:-1]]
    assert steps == [("support_ticket", "classify"), ("support_ticket", "validate"), ("support_ticket", "route"),
                     ("reply", "classify"), ("reply", "validate"), ("reply", "route")]
    assert "support_ticket -> reply" in lines[-1]
    assert load_workflow("reply", root=root / "workflows").trigger.chain.route == "billing"
