"""Change safety end to end, on the real broker: a broken prompt version reaches production, a
fixed one passes its evals and is promoted, a shadow replay shows what the fix changes, and a
live replay routes the stranded tickets with every action taking effect exactly once.

The model is an OpenAI-compatible server on loopback, declared in the workflow file like any
LLM, so the pipeline, the eval gate and the replays all reach it the same way. It plays a model
that follows the prompt it is given: a prompt whose system text asks for one JSON object gets
the ticket's true labels; the broken version dropped that line, and the model answers prose,
an unknown category, or too slowly — a quarter of the tickets each, the rest right.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import zlib
from collections import Counter
from datetime import datetime, timedelta, timezone

import orjson
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from processors.cli.main import app
from processors.control.store import ControlStore
from processors.dev.loopback import LoopbackServer
from processors.kafka.read import snapshot
from processors.offline.outputs import read
from processors.offline.promote import promote
from processors.offline.replay.places import places
from processors.offline.replay.selection import Selection, select
from processors.ops.summary import collect
from processors.pipeline import Pipeline
from processors.project import EXAMPLES
from processors.records import Decision, Execution, Notification
from processors.workflow.workflow import Workflow
from tests.conftest import deployed, produce, tickets

WORKFLOWS = EXAMPLES / "workflows"

BROKEN, FIXED = "2026-06-01.1", "2026-06-02.1"
JSON_ONLY = "Answer with one JSON object and nothing else."
EVAL_DATASETS = WORKFLOWS / "support_ticket/datasets/evals"


class TriageModel:
    """The loopback model: true labels for prompts that ask for JSON, a broken quarter-by-quarter
    behaviour for the prompt that does not. It knows each ticket by its rendered prompt."""

    def __init__(self):
        self.truth: dict[str, dict] = {}  # rendered ticket -> its expected answer
        self.calls: Counter = Counter()
        self._http = LoopbackServer(Starlette(routes=[Route("/v1/chat/completions", self._answer, methods=["POST"])]),
                                    "triage-model")

    def __enter__(self) -> TriageModel:
        self.url = self._http.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._http.stop()

    async def _answer(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        system, user = (m["content"] for m in body["messages"])
        ticket = user.partition("\n\nYour previous answer was invalid")[0]
        expected = self.truth.get(ticket, {"category": "other", "urgency": "low"})
        answer = {"category": expected["category"], "urgency": expected["urgency"], "confidence": 0.9,
                  "reason": f"The customer describes a {expected['category']} matter of {expected['urgency']} urgency."}
        follows_prompt = JSON_ONLY in system
        self.calls["fixed" if follows_prompt else "broken"] += 1
        mood = None if follows_prompt else broken_mood(ticket)
        if mood == "slow":
            await asyncio.sleep(2)  # past the client's timeout
        text = {"prose": f"Sure! This looks like a {expected['category']} ticket to me.",
                "unknown_category": orjson.dumps(answer | {"category": "refunds"}).decode()}.get(
            mood, orjson.dumps(answer).decode())
        return Response(orjson.dumps({"id": "chatcmpl-triage", "object": "chat.completion", "model": body["model"],
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": text}}],
                                      "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": len(text) // 4}}),
                        media_type="application/json")


def broken_mood(ticket: str) -> str | None:
    return ("prose", "unknown_category", "slow", None)[zlib.crc32(ticket.encode()) % 4]


def rendered(workflow: Workflow, event: dict) -> str:
    """The user message classify sends for ``event`` (every version shares the template)."""
    spec = workflow.prompt_spec
    return spec.render(workflow.redaction.inputs(spec.select_inputs(event)))


def workflow_with_versions(tmp_path, model_url: str):
    """The shipped support_ticket workflow, its model the loopback server, with a broken and a fixed version."""
    folder = tmp_path / "support_ticket"
    shutil.copytree(WORKFLOWS / "support_ticket", folder)
    declared = yaml.safe_load((folder / "workflow.yaml").read_text())
    declared["model"] = {"kind": "openai", "label": "triage", "model": "triage-1", "base_url": f"{model_url}/v1",
                         "api_key_env": None, "timeout_s": 0.5, "deadline_s": 1.0, "retries": {"attempts": 1},
                         "prices": {"input": 0, "output": 0}}
    (folder / "workflow.yaml").write_text(yaml.safe_dump(declared, sort_keys=False))
    prompts = folder / "prompts/support_ticket_classifier"
    current = yaml.safe_load((prompts / f"{declared['prompt'].partition('@')[2]}.yaml").read_text())
    assert JSON_ONLY in current["system"]
    for version, system in ((BROKEN, current["system"].replace(JSON_ONLY, "Be brief and friendly.")),
                            (FIXED, current["system"])):
        spec = current | {"version": version, "system": system, "rollback_version": current["version"]}
        (prompts / f"{version}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


@pytest.fixture
def model():
    with TriageModel() as server:
        yield server


def test_broken_prompt_fixed_promoted_shadow_replayed_then_live_replayed_with_each_action_once(
        kafka, receiver, model, tmp_path, monkeypatch):
    workflow_with_versions(tmp_path, model.url)
    workflow = deployed("support_ticket", kafka, root=tmp_path)
    store = ControlStore(kafka, workflow)
    labelled = tickets() + [orjson.loads(line) for path in sorted(EVAL_DATASETS.glob("*.jsonl"))
                            for line in path.read_bytes().splitlines() if line.strip()]
    model.truth.update({rendered(workflow, e): e["expected"] for e in labelled})
    sample = tickets()[:48]
    ids = {t["event_id"]: t for t in sample}
    mood = {e: broken_mood(rendered(workflow, t)) for e, t in ids.items()}
    expected_route = {e: workflow.decide(t["expected"] | {"confidence": 0.9}, t)[1] for e, t in ids.items()}
    escalated = {e for e, route in expected_route.items() if route == "escalation"}
    assert escalated and {None, "prose", "unknown_category", "slow"} == set(mood.values())

    # The incident: the broken version is forced into production, and the tickets arrive.
    store.publish(f"promote {BROKEN} to production past failing evals", labels={"production": BROKEN},
                  forced=True, reason="hotfix for a customer, skipped evals")
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    produce(kafka, workflow, sample)
    end = datetime.now(timezone.utc) + timedelta(seconds=1)
    assert Pipeline(workflow, kafka).run_until_drained(timeout=180)
    broken = collect(workflow, kafka)
    assert broken.reviewed == {e: "invalid_output" for e, m in mood.items() if m in ("prose", "unknown_category")}
    assert broken.dead == {e: "model_unavailable" for e, m in mood.items() if m == "slow"}
    assert broken.decided == {e: expected_route[e] for e, m in mood.items() if m is None}
    assert len(broken.reviewed) + len(broken.dead) > len(sample) / 2

    # The gate: the broken version fails its evals and is refused; the fixed one passes and is promoted.
    refused, broken_evals = promote(store, BROKEN)
    assert refused is None and not broken_evals.passed
    promoted, fixed_evals = promote(store, FIXED, reason="restores the JSON-only instruction")
    assert fixed_evals.passed, fixed_evals.table()
    assert promoted.labels["production"] == FIXED and store.current().labels["production"] == FIXED

    # Shadow replay of the affected range: what the fix changes, with nothing acted on.
    applied_before, executions_before = dict(receiver.applied), len(read(workflow, kafka, "executions", Execution))
    selected = select(workflow, kafka, Selection(start=start, end=end))
    assert sorted(o.event_id for o in selected.originals) == sorted(ids) and not selected.skipped
    monkeypatch.setenv("HANDOFF_NAMESPACE", kafka.namespace)
    where = ["--workflow", "support_ticket", "--from", start.isoformat(), "--to", end.isoformat(),
             "--bootstrap", kafka.bootstrap_servers, "--workflows-dir", str(tmp_path)]
    result = CliRunner().invoke(app, ["replay", *where, "--prompt-version", FIXED, "--id", "r-shadow", "--show-events"])
    assert result.exit_code == 0, result.output
    stranded = {e: f"{'dead_letter:model_unavailable' if m == 'slow' else 'review:invalid_output'} -> {expected_route[e]}"
                for e, m in mood.items() if m is not None}
    table = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+ -> \S+) +(\d+)$", result.output, re.M)}
    assert table == Counter(stranded.values())
    assert all(f"  {e}: {transition} " in result.output for e, transition in stranded.items())
    assert f"{len(stranded)} of {len(sample)} events would change" in result.output
    shadowed = read(workflow, kafka, "replay", Decision)
    assert len(shadowed) == len(sample) and {d.replay for d in shadowed} == {"r-shadow"}
    assert {d.prompt.version for d in shadowed} == {FIXED}
    assert receiver.applied == applied_before
    assert len(read(workflow, kafka, "executions", Execution)) == executions_before
    assert collect(workflow, kafka).decided == broken.decided

    # A live replay acts, so it goes through the promotion gate: the broken version is refused.
    triggers = len(snapshot(kafka, workflow.topics[workflow.topic("triggers")].name))
    refused = CliRunner().invoke(app, ["replay", *where, "--mode", "live", "--prompt-version", BROKEN])
    assert refused.exit_code == 1 and "refused" in refused.output and "FAILED" in refused.output
    assert len(snapshot(kafka, workflow.topics[workflow.topic("triggers")].name)) == triggers

    def routed_with_each_action_once() -> None:
        now = places(workflow, kafka)
        assert {e: (now[e].kind, now[e].detail) for e in ids} == {e: ("decision", r) for e, r in expected_route.items()}
        assert set(receiver.applied) == {f"{e}:open_escalation" for e in escalated}
        arrivals = Counter(a.key for a in receiver.arrivals if a.status < 300)
        assert all(n == 1 for n in arrivals.values()), f"an escalation was applied twice: {arrivals}"
        notified = Counter(n.event_id for n in read(workflow, kafka, "notifications", Notification))
        assert notified == dict.fromkeys(ids, 1), "each decided ticket notified its team exactly once"

    # Live replay of the same range, waiting for the running stages to settle every ticket again.
    running = Pipeline(workflow, kafka)
    stages = threading.Thread(target=running.run)
    stages.start()
    try:
        result = CliRunner().invoke(app, ["replay", *where, "--mode", "live", "--id", "r-live-1", "--wait", "120"])
    finally:
        running.stop()
        stages.join()
    assert result.exit_code == 0, result.output
    assert not running.errors
    assert f"(live, prompt {FIXED}): selected {len(sample)} events" in result.output
    assert f"re-injected {len(sample)}; {len(stranded)} of {len(sample)} settled events changed" in result.output
    table = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+ -> \S+) +(\d+)$", result.output, re.M)}
    assert table == Counter(stranded.values())
    assert Pipeline(workflow, kafka).run_until_drained(timeout=180)  # what is left: the actions of the last decisions
    routed_with_each_action_once()

    # And again: every effect already happened, so nothing runs twice.
    result = CliRunner().invoke(app, ["replay", *where, "--mode", "live", "--id", "r-live-2"])
    assert result.exit_code == 0 and f"re-injected {len(sample)}" in result.output, result.output
    assert Pipeline(workflow, kafka).run_until_drained(timeout=180)
    routed_with_each_action_once()

    executions = Counter((x.idempotency_key, x.status) for x in read(workflow, kafka, "executions", Execution))
    assert {k for (k, status) in executions if status == "done"} == \
        {f"{e}:open_escalation" for e in escalated} | {f"{e}:notify_team" for e in ids}
    assert all(n == 1 for (k, status), n in executions.items() if status == "done")
    assert all(executions[(f"{e}:notify_team", "already_done")] >= 1 for e in ids), "the second replay did nothing new"
    live = [d for name in workflow.topics if name.startswith(workflow.topic("decisions."))
            for d in read(workflow, kafka, name.removeprefix("support_ticket."), Decision) if d.replay]
    assert {d.replay for d in live} == {"r-live-1", "r-live-2"} and {d.prompt.version for d in live} == {FIXED}
