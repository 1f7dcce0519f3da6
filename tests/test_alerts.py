"""The Prometheus side: the rules' own unit tests under ``promtool``, and a real Prometheus server
(Debian's ``prometheus`` package, which ``make test`` installs) that scrapes a running stage
process with the shipped config and evaluates a shipped rule over what it scraped.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from processors.dev.localkafka import free_port
from processors.kafka.topics import Role
from processors.records import (
    DecisionSource,
    JoinedDecision,
    Outcome,
    PromptRef,
    ReviewItem,
    ReviewReason,
    StageName,
    Verdict,
    VerdictKind,
    dumps,
)
from processors.runtime.stage import Record
from processors.stages.join import Join
from processors.stages.review import Review
from processors.workflow.workflow import load_workflow
from tests.conftest import WORKFLOWS, deployed, signed
from tests.test_deploy import dashboard_expressions
from tests.test_health import get
from tests.test_recovery import handoff_run, wait_for

PROMETHEUS = Path(__file__).resolve().parent.parent / "deploy/prometheus"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `make test` installs Debian's prometheus package "
                    f"(apt-get install prometheus)", pytrace=False)
    return found


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


def test_the_rules_pass_their_promtool_unit_tests():
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_a_real_prometheus_scrapes_a_stage_and_evaluates_a_rule(kafka, receiver, tmp_path):
    """The compose config with its targets pointed at one ``handoff run --stage route`` process and
    its intervals at a second; the recording rule ``handoff:stages_ready:count`` turns 1 once the
    stage is ready, the alert rules load (none fires on a healthy stage), and every expression of
    the Grafana dashboard is one this Prometheus accepts."""
    deployed("support_ticket", kafka)
    stage_port, web_port = free_port(), free_port()
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{stage_port}"]}]
    for rules in config["rule_files"]:
        shutil.copy(PROMETHEUS / rules, tmp_path / rules)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    api = f"http://127.0.0.1:{web_port}/api/v1"

    def query(expr: str) -> list[dict]:
        answer = get(f"{api}/query?query={expr}")
        return [] if answer is None or answer.status_code != 200 else answer.json()["data"]["result"]

    with open(tmp_path / "run.log", "wb") as log, open(tmp_path / "prometheus.log", "wb") as plog:
        stage = handoff_run(kafka, receiver, log, "--stage", "route", "--metrics-port", str(stage_port))
        server = subprocess.Popen([tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web_port}"],
                                  stdout=plog, stderr=subprocess.STDOUT)
        try:
            def evaluated() -> bool:
                assert server.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                return [r["value"][1] for r in query('handoff:stages_ready:count{stage="route"}')] == ["1"]

            wait_for(evaluated, 90, "Prometheus to evaluate handoff:stages_ready:count", stage)
            scraped = query('up{job="handoff"}')
            panels = {expr: get(f"{api}/query?query={expr}").json() for expr in dashboard_expressions(".*")}
            rules = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
            firing = httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
        finally:
            server.send_signal(signal.SIGTERM)
            stage.send_signal(signal.SIGTERM)
            server.wait(30)
            assert stage.wait(30) == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert [r["value"][1] for r in scraped] == ["1"]
    loaded = {rule["name"] for group in rules for rule in group["rules"]}
    assert {"HandoffStageNotReady", "HandoffEscalationRecallLow", "handoff:automation_rate:1h"} <= loaded
    assert not [rule["lastError"] for group in rules for rule in group["rules"] if rule["health"] == "err"]
    assert [a for a in firing if a["state"] == "firing"] == []
    assert {expr: answer.get("error") for expr, answer in panels.items() if answer["status"] != "success"} == {}
    assert panels['sum by (workflow, stage) (handoff_stage_ready{workflow=~".*"})']["data"]["result"]


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_review_and_join_stages_count_what_the_recall_and_override_rules_divide():
    """A reviewer corrects a billing ticket the model called low urgency to high (billing + high
    escalates): a verdict that overrides, and an escalation needed that the model missed. Then a
    decision on another route is reopened: a missed escalation by outcome."""
    workflow = load_workflow("support_ticket", "", WORKFLOWS)
    version = workflow.prompt_spec.version
    prompt = PromptRef(name=workflow.prompt_spec.name, version=version)
    event = dumps({"customer": {"plan": "pro"}, "subject": "invoice", "body": "charged twice"})
    said = {"category": "billing", "urgency": "low", "confidence": 0.5, "reason": "An invoice question."}
    item = ReviewItem(review_id="e-q:low_confidence", event_id="e-q", workflow=workflow.name,
                      reason=ReviewReason.low_confidence, stage=StageName.validate, event=event, answer=dumps(said),
                      prompt=prompt, model="m", created_at_ms=1)
    verdict = signed(Verdict(verdict_id="v1", review_id=item.review_id, event_id="e-q", workflow=workflow.name,
                             reviewer="ana", verdict=VerdictKind.correct, answer=dumps(said | {"urgency": "high"}),
                             at_ms=2, item=item))
    labels = {"workflow": workflow.name, "prompt_version": version}
    missed = labels | {"needed": "true", "escalated": "false"}
    before = (counted("handoff_verdicts_total", **labels, verdict="correct"),
              counted("handoff_escalation_judgements_total", **missed, evidence="verdict"),
              counted("handoff_escalation_judgements_total", **missed, evidence="outcome"))

    review = Review(workflow)
    topic = workflow.spec(Role.verdicts).name
    asyncio.run(review.process(Record(topic=topic, partition=0, offset=7, key=b"e-q", value=verdict.model_dump(),
                                      timestamp_ms=2)))
    join = Join(workflow)
    decision = JoinedDecision(route="billing", label="billing", confidence=0.9, source=DecisionSource.model,
                              prompt=prompt, decided_at_ms=3)
    join._result(decision, Outcome(event_id="e-r", workflow=workflow.name, outcome_type="reopened", at_ms=4,
                                   source="crm"), 5)
    join._result(decision.model_copy(update={"route": "escalation"}),
                 Outcome(event_id="e-s", workflow=workflow.name, outcome_type="reopened", at_ms=4, source="crm"), 5)
    after = (counted("handoff_verdicts_total", **labels, verdict="correct"),
             counted("handoff_escalation_judgements_total", **missed, evidence="verdict"),
             counted("handoff_escalation_judgements_total", **missed, evidence="outcome"))
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]  # the reopened escalation was no miss
