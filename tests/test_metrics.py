"""Prometheus metrics, scraped over HTTP from a running pipeline: what each stage counted must be
what happened to the records it was given.

The model is a real OpenAI-compatible HTTP server on loopback (``processors/dev/llm_server.py``), so
tokens and cost come from the usage it reports, priced by the price table. The registry is one
per process and other tests count into it too, so the in-process test compares a scrape before
the run with one after it; the subprocess test reads a fresh process's absolute counts.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from processors.avro.serde import AvroSerde
from processors.dev.llm_server import LLMServer, Reply
from processors.ops.report import build
from processors.pipeline import Pipeline
from processors.providers.openai import OpenAIModel
from processors.providers.pricing import price_of
from processors.records import PromptRef, WorkItem, dumps
from processors.runtime import metrics
from processors.workflow.workflow import ModelRetries
from tests.conftest import deployed, produce, tickets
from tests.test_recovery import handoff_run, wait_for

WF = {"workflow": "support_ticket"}
ALERTS = Path(__file__).resolve().parent.parent / "deploy/prometheus/alerts.yml"


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample on ``/metrics``: (name, labels) -> value."""
    text = httpx.get(url, timeout=5).raise_for_status().text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def served():
    server = metrics.serve(0)
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()


def test_a_running_pipeline_counts_what_happened(kafka, receiver, served):
    """Four tickets and a poison record; the model answers one with prose (repaired), one
    unsure (review), one with a 503 (retried), one plainly; the repair and the retry get plain answers.
    The report, read back from the topics, agrees with the counters."""
    with LLMServer() as llm:
        model = OpenAIModel.model_validate({"kind": "openai", "model": "gpt-4.1-mini", "base_url": f"{llm.url}/v1",
                                            "api_key": "sk-test", "timeout_s": 5, "retries": {"attempts": 1}})
        workflow = deployed("support_ticket", kafka).model_copy(update={
            "model": model, "retries": ModelRetries(attempts=2, backoff_initial_s=0.01, backoff_max_s=0.05)})
        unsure = {"category": "bug", "urgency": "low", "confidence": 0.4, "reason": "Hard to tell."}
        llm.script(Reply(answer="Sure! It is a billing ticket."), Reply(answer=unsure), Reply(status=503))
        produce(kafka, workflow, tickets()[:4], raw=[(b"cus_poison", b"not avro")])
        before = scrape(served)
        assert Pipeline(workflow, kafka).run_until_drained(timeout=120)
        after = scrape(served)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    def stage(name: str) -> dict[str, str]:
        return WF | {"stage": name}

    # classify: 4 triggers, the poison, the repair; validate: 5 answers; route: 3 valid ones; execute: 3 notify_team
    assert [delta("handoff_events_in_total", **stage(s)) for s in ("classify", "validate", "route", "execute")] \
        == [6, 5, 3, 3]
    classified = workflow.topics[workflow.topic("classified")].name
    assert delta("handoff_events_out_total", **stage("classify"), topic=classified) == 5
    decided = sum(delta("handoff_events_out_total", **stage("route"), topic=spec.name)
                  for name, spec in workflow.topics.items() if name.startswith("support_ticket.decisions."))
    assert decided == 3
    assert delta("handoff_dead_letters_total", **stage("classify"), reason="not_avro") == 1
    assert delta("handoff_reviews_total", **WF, reason="low_confidence") == 1
    assert delta("handoff_validation_failures_total", **WF, reason="the answer is not a JSON object") == 1
    assert delta("handoff_retries_total", **stage("classify")) == 1
    # the latency histogram: one observation per record, cumulative buckets ending in +Inf
    assert delta("handoff_stage_latency_seconds_count", **stage("classify")) == 6
    buckets = [delta("handoff_stage_latency_seconds_bucket", **stage("validate"), le=le)
               for le in ("0.001", "0.01", "0.1", "1.0", "+Inf")]
    assert buckets == sorted(buckets) and buckets[-1] == 5
    # tokens and cost: exactly what the server reported for its answers, priced by the price table
    answered = [a for a in llm.arrivals if a.status == 200]
    assert len(answered) == 5 and len(llm.arrivals) == 6  # 4 firsts (one a 503), the retry, the repair
    version_of = WF | {"prompt_version": workflow.prompt_spec.version}
    assert delta("handoff_tokens_total", **version_of, direction="in") == sum(a.usage[0] for a in answered) > 0
    assert delta("handoff_tokens_total", **version_of, direction="out") == sum(a.usage[1] for a in answered) > 0
    assert delta("handoff_cost_usd_total", **version_of) == pytest.approx(
        sum(price_of("gpt-4.1-mini").cost(*a.usage) for a in answered))
    assert delta("handoff_model_requests_total", model="openai:gpt-4.1-mini", outcome="http_503") == 1
    # model latency: one observation per answer used (4 triggers, the repair); the 503 is a retry, not counted
    assert delta("handoff_model_latency_seconds_count", **WF, model="openai:gpt-4.1-mini") == 5
    assert delta("handoff_model_latency_seconds_sum", **WF, model="openai:gpt-4.1-mini") > 0

    # the report, read from what the stages wrote, agrees: the poison counts only in the all-versions row
    report = build(workflow, kafka)
    (version,) = report.versions
    assert version.prompt_version == workflow.prompt_spec.version
    assert (version.events, version.decided, version.automated, version.reviewed, version.schema_failures,
            version.dead_lettered) == (4, 3, 3, 1, 1, 0)
    assert (report.total.events, report.total.dead_lettered) == (5, 1)
    assert version.tokens_in == delta("handoff_tokens_total", **version_of, direction="in")
    assert version.cost_usd == pytest.approx(delta("handoff_cost_usd_total", **version_of))


def test_handoff_run_serves_metrics_on_loopback(kafka, receiver, tmp_path):
    """A stage process started with --metrics-port answers on 127.0.0.1 with its own counts."""
    workflow = deployed("support_ticket", kafka)
    spec = workflow.topics[workflow.topic("classified")]
    serde, producer = AvroSerde(spec.value_schema), kafka.producer()
    answer = {"category": "billing", "urgency": "low", "confidence": 0.95, "reason": "An invoice question."}
    for index in range(2):
        item = WorkItem(event_id=f"e{index}", workflow="support_ticket", event=dumps({"customer": {"plan": "pro"}}),
                        prompt=PromptRef(name=workflow.prompt_spec.name, version=workflow.prompt_spec.version),
                        model="m", answer=dumps(answer))
        producer.produce(spec.name, key=f"c{index}", value=serde.encode(item.model_dump()))
    assert producer.flush(10) == 0
    taken = metrics.serve(0)  # a port nobody uses: take one, free it, hand it on
    port = taken.server_port
    taken.server_close()
    url = f"http://127.0.0.1:{port}/metrics"

    validated = workflow.topics[workflow.topic("validated")].name

    def counted() -> bool:
        try:
            samples = scrape(url)
        except httpx.TransportError:
            return False  # not listening yet
        return value(samples, "handoff_events_out_total", **WF, stage="validate", topic=validated) == 2

    with open(tmp_path / "run.log", "wb") as log:
        proc = handoff_run(kafka, receiver, log, "--stage", "validate", "--metrics-port", str(port))
        try:
            wait_for(counted, 60, "validate to pass both work items on", proc)
            samples = scrape(url)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert value(samples, "handoff_events_in_total", **WF, stage="validate") == 2
    assert value(samples, "handoff_stage_latency_seconds_count", **WF, stage="validate") == 2
    assert not any(labels and dict(labels).get("stage") == "classify" for _, labels in samples), "only validate runs"


def test_alert_rules_use_only_metrics_handoff_exports():
    """A misspelt metric in an alert never fires; every name in deploy/prometheus/alerts.yml must exist."""
    exported = {family.name + suffix for family in REGISTRY.collect()
                for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    assert len(rules) >= 5
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys() and " > " in rule["expr"], rule["alert"]
        named = set(re.findall(r"\bhandoff_\w+", rule["expr"]))
        assert named and named <= exported, f"{rule['alert']}: {named - exported} not exported"
