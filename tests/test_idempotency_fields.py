"""Idempotency keys that say what "once" means: each action names the fields that make it once; the
default stays event id + action. Route and execute run in memory (the ledger's own tests use the broker)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from processors.kafka.topics import Role
from processors.records import PromptRef, WorkItem, dumps
from processors.stages.execute import Execute
from processors.stages.route import Route
from processors.workflow.workflow import Action, load_workflow
from tests.test_approvals import on, record, run

EVENT = {"event_id": "evt-1", "ticket": {"id": "T-1", "subject": "invoice", "body": "x", "channel": "web"},
         "customer": {"id": "C-1", "plan": "pro", "arr": 1000}}


def routed(workflow, category: str) -> list:
    answer = {"category": category, "urgency": "low", "confidence": 0.99, "reason": "r"}
    item = WorkItem(event_id="evt-1", workflow=workflow.name, event=dumps(EVENT), prompt=PromptRef(name="p", version="1"),
                    model="m", answer=dumps(answer), replay="fix-1")
    return on(asyncio.run(run(Route(workflow), record(Role.validated, item, workflow))), workflow, Role.actions)


def test_the_default_key_is_event_and_action():
    [request] = routed(load_workflow("support_ticket"), "billing")
    assert request.idempotency_key == "evt-1:notify_team"


def test_a_key_with_the_team_lets_a_rerouted_replay_notify_the_new_team(monkeypatch):
    monkeypatch.setenv("HANDOFF_WEBHOOK_URL", "http://127.0.0.1:9")  # execute builds its webhooks; none is called
    monkeypatch.setenv("HANDOFF_WEBHOOK_SECRET", "s")
    workflow = load_workflow("support_ticket")
    notify = workflow.actions["notify_team"].model_copy(update={"idempotency": ["event_id", "action", "arguments.team"]})
    workflow = workflow.model_copy(update={"actions": {**workflow.actions, "notify_team": notify}})
    [first], [rerouted] = routed(workflow, "billing"), routed(workflow, "bug")
    assert (first.idempotency_key, rerouted.idempotency_key) == ("evt-1:notify_team:billing", "evt-1:notify_team:bug")
    execute = Execute(workflow)
    outputs = asyncio.run(run(execute, *(record(Role.actions, r, workflow, n) for n, r in enumerate([first, rerouted, first]))))
    statuses = [(e.idempotency_key, e.status) for e in on(outputs, workflow, Role.executions)]
    assert statuses == [("evt-1:notify_team:billing", "done"), ("evt-1:notify_team:bug", "done"),
                        ("evt-1:notify_team:billing", "already_done")]
    assert len(on(outputs, workflow, Role.notifications)) == 2


def test_a_key_part_that_names_nothing_is_refused_at_load():
    with pytest.raises(ValidationError, match="idempotency"):
        Action(kind="emit", topic="t", scope="s", arguments={"team": "decision.route"}, arguments_schema={},
               idempotency=["event_id", "arguments.owner"])
