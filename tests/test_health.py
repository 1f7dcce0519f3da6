"""``/healthz``, ``/readyz`` and the logs of a stage process, as a supervisor and a log pipeline see them.

A real ``handoff run --stage route`` process answers on its metrics port: alive at once, ready
once its assignment arrived; its lines on a pipe are JSON, each naming the workflow, stage and
instance; a decision it makes shows in the live quality counters. The stuck and broker-down
answers come from a real server in this process, with a runtime's health object whose loop
does not beat (a real stuck loop takes two minutes to be called stuck).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import time

import httpx
import pytest

from processors.avro.serde import AvroSerde
from processors.dev.localkafka import free_port
from processors.kafka.settings import KafkaSettings
from processors.logs import LIBRDKAFKA, Fold
from processors.records import PromptRef, WorkItem, dumps
from processors.runtime import health
from tests.conftest import deployed
from tests.test_cli_errors import handoff, one_clear_line
from tests.test_metrics import scrape, served, value  # noqa: F401  served: a fixture
from tests.test_recovery import handoff_run, wait_for


def get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None  # not listening yet


def test_a_stage_process_is_alive_then_ready_and_logs_json(kafka, receiver, tmp_path):
    workflow = deployed("support_ticket", kafka)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:  # not a terminal: JSON without being asked
        proc = handoff_run(kafka, receiver, log, "--stage", "route", "--instance", "route-0", "--metrics-port", str(port))
        try:
            wait_for(lambda: (r := get(f"{base}/healthz")) is not None and r.status_code == 200, 60,
                     "/healthz to answer", proc)
            wait_for(lambda: get(f"{base}/readyz").status_code == 200, 60, "/readyz to turn ready", proc)
            ready = get(f"{base}/readyz").json()
            spec = workflow.topics[workflow.topic("validated")]
            answer = {"category": "outage", "urgency": "high", "confidence": 0.97, "reason": "Everything is down."}
            item = WorkItem(event_id="e-health", workflow="support_ticket", prompt=PromptRef(
                name=workflow.prompt_spec.name, version=workflow.prompt_spec.version), model="m",
                event=dumps({"customer": {"plan": "enterprise"}, "subject": "down", "body": "all down"}),
                answer=dumps(answer))
            producer = kafka.producer()
            producer.produce(spec.name, key="c1", value=AvroSerde(spec.value_schema).encode(item.model_dump()))
            assert producer.flush(10) == 0
            settled = {"workflow": "support_ticket", "prompt_version": workflow.prompt_spec.version, "path": "automated"}
            wait_for(lambda: value(scrape(f"{base}/metrics"), "handoff_settled_total", **settled) == 1, 60,
                     "route to count its decision", proc)
            samples = scrape(f"{base}/metrics")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log_path.read_text()[-3000:]
    assert ready["ready"] and [(s["stage"], s["assigned"], s["broker_reachable"]) for s in ready["stages"]] \
        == [("route", True, True)]
    _, route_name, _ = workflow.decide(answer, {"customer": {"plan": "enterprise"}, "subject": "down", "body": "all down"})
    escalated = str(route_name == workflow.escalation.route).lower()
    assert value(samples, "handoff_escalation_judgements_total", workflow="support_ticket",
                 prompt_version=workflow.prompt_spec.version, needed=escalated, escalated=escalated,
                 evidence="model") == 1
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert lines and all(entry["workflow"] == "support_ticket" and entry["stage"] == "route"
                         and entry["instance"] == "route-0" and {"time", "level", "message"} <= entry.keys()
                         for entry in lines), lines
    assert any(entry["message"].startswith("metrics on ") for entry in lines)


def test_a_metrics_port_in_use_is_one_line_naming_it(kafka):
    """Metrics are on by default, so two processes on one host meet on the port: the second says so."""
    deployed("support_ticket", kafka)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = handoff("run", "--workflow", "support_ticket", "--stage", "route", "--metrics-port", str(port),
                       env={"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "HANDOFF_NAMESPACE": kafka.namespace})
    assert done.returncode == 1
    assert one_clear_line(done.stderr + done.stdout).startswith(f"cannot serve metrics on 127.0.0.1:{port} ")


@pytest.fixture
def server(served):
    return served.removesuffix("/metrics")


def mine(response: httpx.Response, workflow: str) -> dict:
    (entry,) = [s for s in response.json()["stages"] if s["workflow"] == workflow]
    return entry


def test_a_loop_that_stops_beating_is_not_alive_unless_it_is_restoring(server):
    stuck = health.register("health-stuck", "classify")
    stuck._beat -= health.STUCK_AFTER_S + 1  # its loop last beat longer ago than a stuck loop's bound
    response = httpx.get(f"{server}/healthz", timeout=5)
    assert response.status_code == 503 and not mine(response, "health-stuck")["alive"]
    stuck.restoring()  # reading a big table inside the rebalance callback: alive, not ready
    entry = mine(httpx.get(f"{server}/healthz", timeout=5), "health-stuck")
    assert entry["alive"] and entry["restoring"] and not entry["ready"]
    stuck.restored()
    entry = mine(httpx.get(f"{server}/readyz", timeout=5), "health-stuck")
    assert entry["alive"] and entry["ready"]


def test_not_ready_before_an_assignment_or_without_a_broker(server):
    stage = health.register("health-ready", "route")
    stage.beat(broker_reachable=True)
    response = httpx.get(f"{server}/readyz", timeout=5)
    assert response.status_code == 503 and not mine(response, "health-ready")["ready"]
    stage.restored()
    assert mine(httpx.get(f"{server}/readyz", timeout=5), "health-ready")["ready"]
    stage.beat(broker_reachable=False)
    response = httpx.get(f"{server}/readyz", timeout=5)
    assert response.status_code == 503 and not mine(response, "health-ready")["broker_reachable"]
    assert mine(httpx.get(f"{server}/healthz", timeout=5), "health-ready")["alive"]  # an outage is not a stuck loop


class Kept(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_librdkafka_logs_through_handoffs_logger_with_repeats_folded():
    """A client pointed at a port nobody listens on: librdkafka's complaints arrive as log records
    of handoff.librdkafka; lines that differ only in numbers pass once a window, then say how many were folded."""
    kept = Kept()
    LIBRDKAFKA.addHandler(kept)
    try:
        consumer = KafkaSettings(bootstrap_servers="127.0.0.1:1").consumer("health-logs")
        consumer.subscribe(["health-logs"])
        deadline = time.monotonic() + 20
        while not kept.records and time.monotonic() < deadline:
            consumer.poll(0.2)
        consumer.close()
    finally:
        LIBRDKAFKA.removeHandler(kept)
    assert kept.records and "Connect to" in kept.records[0].getMessage()

    fold, folded = Fold(window_s=0.3), logging.getLogger("health-fold")
    folded.addFilter(fold)
    folded.addHandler(kept := Kept())
    folded.propagate = False
    for ms in range(5):
        folded.error("Connect to 127.0.0.1:%d failed (after %dms)", 1 + ms, ms)
    folded.error("something else")
    time.sleep(0.35)
    folded.error("Connect to 127.0.0.1:9 failed (after 9ms)")
    assert [(r.getMessage(), getattr(r, "repeated", 0)) for r in kept.records] == [
        ("Connect to 127.0.0.1:1 failed (after 0ms)", 0), ("something else", 0),
        ("Connect to 127.0.0.1:9 failed (after 9ms)", 4)]
