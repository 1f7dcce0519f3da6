"""Grounding: a support-ticket workflow that looks up the customer's plan and recent tickets from the records
MCP server (streamable HTTP on loopback, official SDK) before the model; the prompt renders only what its spec
declares, the trace holds the lookups, and a failed lookup takes its declared path."""

from __future__ import annotations

import asyncio
import shutil
import time

import orjson
import pytest
import yaml
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route as HttpRoute

from processors.control.store import ControlStore
from processors.dev.loopback import LoopbackServer
from processors.dev.tool_server import PLANS, ToolServerThread
from processors.kafka.read import count, snapshot
from processors.kafka.topics import Role
from processors.offline.replay.lookups import LookupSource, recorded
from processors.offline.replay.request import ReplayRequest, run_replay
from processors.offline.replay.selection import Selection, select
from processors.offline.replay.shadow import shadow
from processors.offline.runner import OfflineRunner
from processors.providers.scripted import ScriptedProvider
from processors.records import GroundedEvent, ReviewReason
from processors.runtime.stage import DeadLetter, Record
from processors.stages.classify import Classify
from processors.stages.ground import Ground
from processors.stages.registry import stages_for
from processors.workflow.workflow import WorkflowError, load_workflow
from tests.conftest import WORKFLOWS, Running, deployed, produce, tickets
from tests.test_approvals import run

VERSION = "2026-06-02.1"


@pytest.fixture(scope="module")
def records():
    with ToolServerThread() as server:
        yield server


def grounded_root(tmp_path, lookups: dict, inputs: list[str]):
    """support_ticket with tool servers, an allow-list, ``lookups`` and a prompt version rendering ``inputs``."""
    root = tmp_path / "workflows"
    folder = root / "support_ticket"
    shutil.copytree(WORKFLOWS / "support_ticket", folder)
    declared = yaml.safe_load((folder / "workflow.yaml").read_text())
    declared |= {
        "prompt": f"support_ticket_classifier@{VERSION}", "grants": [*declared["grants"], "records:read"],
        "tool_servers": {"records": {"url": "${HANDOFF_RECORDS_MCP_URL}", "headers": {"X-Token": "${HANDOFF_RECORDS_TOKEN}"}}},
        "tools": {name: {"server": "records", "scope": "records:read", "timeout_s": 5,
                         "retries": {"unavailable": 1, "backoff_initial_s": 0.01, "backoff_max_s": 0.02}}
                  for name in ("customer_plan", "recent_tickets")},
        "lookups": lookups}
    (folder / "workflow.yaml").write_text(yaml.safe_dump(declared, sort_keys=False))
    prompts = folder / "prompts/support_ticket_classifier"
    spec = yaml.safe_load((prompts / "2026-05-29.1.yaml").read_text())
    spec |= {"version": VERSION, "inputs": [*spec["inputs"], *inputs],
             "template": spec["template"] + "".join(f"\n{path}: {{{{ {path} }}}}" for path in inputs)}
    (prompts / f"{VERSION}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


LOOKUPS = {"plan": {"tool": "customer_plan", "arguments": {"customer_id": "customer.id"}, "cache_for": "10m"},
           "history": {"tool": "recent_tickets", "arguments": {"customer_id": "customer.id"}}}


@pytest.fixture
def env(records, monkeypatch):
    monkeypatch.setenv("HANDOFF_RECORDS_MCP_URL", records.url)
    monkeypatch.setenv("HANDOFF_RECORDS_TOKEN", "t")


def test_a_grounded_ticket_renders_the_plan_and_recent_tickets_and_the_trace_holds_the_lookups(
        kafka, tmp_path, records, env, monkeypatch):
    root = grounded_root(tmp_path, LOOKUPS, ["lookups.plan.plan", "lookups.history.tickets"])
    workflow = deployed("support_ticket", kafka, root)
    assert stages_for(workflow)[0] == "ground"
    sample = [t | {"customer": t["customer"] | {"id": "C-1001" if n % 2 else "C-1002"}}
              for n, t in enumerate(tickets()[:6])]
    before = records.service.calls["customer_plan"]
    provider = ScriptedProvider()
    produce(kafka, workflow, sample)
    with Running(Ground(workflow), workflow, kafka), Running(Classify(workflow, provider), workflow, kafka):
        deadline = time.monotonic() + 120
        while count(kafka, workflow.spec(Role.classified).name) < len(sample):
            assert time.monotonic() < deadline, "every grounded ticket should be classified"
            time.sleep(0.5)
    prompts = {r.event_id: r.user for r in provider.requests}
    for ticket in sample:
        user = prompts[ticket["event_id"]]
        plan = "enterprise" if ticket["customer"]["id"] == "C-1001" else "pro"
        assert f"lookups.plan.plan: {plan}" in user
        assert f"{ticket['customer']['id']}-T1" in user and "earlier issue 3" in user
        assert "2024-03-01" not in user, "the plan's `since` is looked up but not declared: it never reaches the model"
    assert records.service.calls["customer_plan"] - before <= 2, "the plan is cached per customer"
    traces = [workflow.spec(Role.traces).serde(kafka).decode(m.value())
              for m in snapshot(kafka, workflow.spec(Role.traces).name)]
    looked = [t for t in traces if t["step"] == "ground"]
    assert {t["tool"] for t in looked} == {"plan", "history"}
    assert len(looked) == 2 * len(sample)
    assert all("C-10" in t["action_request"] and t["action_response"] for t in looked)
    items = [workflow.spec(Role.classified).serde(kafka).decode(m.value())
             for m in snapshot(kafka, workflow.spec(Role.classified).name)]
    assert all(orjson.loads(i["lookups"])["history"]["tickets"] for i in items), "the work item keeps the context"

    # A replay reuses what the lookups returned (only the prompt differs), or looks up again (the data now).
    monkeypatch.setitem(PLANS, "C-1002", "enterprise")
    selected = select(workflow, kafka, Selection.parse(start="2000-01-01"))
    reused = recorded(workflow, kafka, LookupSource.recorded, {o.event_id for o in selected.originals})
    assert set(reused) == {t["event_id"] for t in sample}
    for source in LookupSource:
        calls, replayer = records.service.calls.copy(), ScriptedProvider()
        report = asyncio.run(shadow(workflow, kafka, selected, VERSION, replayer, f"r-{source}",
                                    reused=reused if source == LookupSource.recorded else {}))
        plans = {r.event_id: r.user.split("lookups.plan.plan: ")[1].split()[0] for r in replayer.requests}
        assert len(report.changes) == len(sample)
        if source == LookupSource.recorded:
            assert records.service.calls == calls, "recorded lookups call no tool"
            assert sorted(plans.values()) == ["enterprise"] * 3 + ["pro"] * 3, "what the model saw the first time"
        else:
            assert records.service.calls["recent_tickets"] == calls["recent_tickets"] + len(sample)
            assert set(plans.values()) == {"enterprise"}, "what the system of record says now"
    store = ControlStore(kafka, workflow)
    said = run_replay(store, ReplayRequest(selection=Selection.parse(start="2000-01-01"), prompt_version=VERSION,
                                           lookups=LookupSource.recorded), print).render()
    assert f"lookups: {len(sample)} events reused their recorded results" in said


def test_a_prompt_input_naming_no_declared_lookup_is_refused_at_load(tmp_path, env):
    root = grounded_root(tmp_path, LOOKUPS, ["lookups.orders.latest"])
    with pytest.raises(WorkflowError, match="names no declared lookup"):
        load_workflow("support_ticket", root=root)


def ground_one(workflow, event: dict):
    record = Record(topic=workflow.spec(Role.triggers).name, partition=0, offset=0, key=b"C-1", value=event,
                    timestamp_ms=1)
    return asyncio.run(run(Ground(workflow), record))


@pytest.mark.parametrize("on_failure", ["review", "dead_letter"])
def test_a_lookup_whose_server_is_down_takes_its_declared_path(tmp_path, monkeypatch, on_failure):
    monkeypatch.setenv("HANDOFF_RECORDS_MCP_URL", "http://127.0.0.1:9/mcp")  # nothing listens on port 9
    monkeypatch.setenv("HANDOFF_RECORDS_TOKEN", "t")
    lookups = {"plan": LOOKUPS["plan"] | {"on_failure": on_failure}}
    workflow = load_workflow("support_ticket", root=grounded_root(tmp_path, lookups, ["lookups.plan.plan"]))
    event = tickets()[0]
    if on_failure == "dead_letter":
        with pytest.raises(DeadLetter) as dead:
            ground_one(workflow, event)
        assert (dead.value.reason, dead.value.attempts) == ("lookup_tool_unavailable_exhausted", 2)
        assert [e.value.tool for e in dead.value.keep] == ["plan"]
        return
    outputs = ground_one(workflow, event)
    [item] = [e.value for e in outputs if e.topic == workflow.topic(Role.review)]
    assert item.reason == ReviewReason.lookup_failed and item.answer is None
    assert "tool_unavailable_exhausted" in item.validation_errors[0]
    assert not [e for e in outputs if e.topic == workflow.topic(Role.grounded)], "the model is not asked"


def test_an_http_get_lookup(tmp_path, records, env, monkeypatch):
    seen = []

    async def policy(request):
        seen.append(request.path_params["plan"])
        return JSONResponse({"plan": request.path_params["plan"], "refund_days": 30})

    server = LoopbackServer(Starlette(routes=[HttpRoute("/policies/{plan}", policy)]), "policy-server")
    monkeypatch.setenv("HANDOFF_POLICY_URL", server.start())
    try:
        lookups = {"policy": {"url": "${HANDOFF_POLICY_URL}/policies/{plan}", "arguments": {"plan": "customer.plan"}}}
        workflow = load_workflow("support_ticket", root=grounded_root(tmp_path, lookups, ["lookups.policy.refund_days"]))
        event = tickets()[0]
        [grounded] = [e.value for e in ground_one(workflow, event) if e.topic == workflow.topic(Role.grounded)]
    finally:
        server.stop()
    assert isinstance(grounded, GroundedEvent) and seen == [event["customer"]["plan"]]
    assert orjson.loads(grounded.lookups) == {"policy": {"plan": event["customer"]["plan"], "refund_days": 30}}


def test_the_offline_runner_grounds_too(tmp_path, records, env):
    """Evals and shadow replays look the context up again, as the pipeline would now."""
    workflow = load_workflow("support_ticket", root=grounded_root(tmp_path, LOOKUPS, ["lookups.plan.plan"]))
    provider = ScriptedProvider()
    event = tickets()[0] | {"customer": tickets()[0]["customer"] | {"id": "C-1001"}}
    [result] = asyncio.run(OfflineRunner(workflow, provider).run([event]))
    assert result.ended in ("decision", "review") and "lookups.plan.plan: enterprise" in provider.requests[0].user
