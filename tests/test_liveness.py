"""Liveness under routine faults, on a broker this module owns (it restarts it): a broker restart
mid-stream, a stage instance stopped while another runs on, the drain check across a restart, and
the lag a finished group leaves (Kafka's own consumer-group tool and handoff's probe both read 0)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from processors.dev.localkafka import LocalKafka, free_port
from processors.kafka.lag import LagProbe
from processors.kafka.read import count
from processors.pipeline import Pipeline, wait_until_drained
from processors.runtime.options import RuntimeOptions
from processors.stages.registry import stages_for
from tests.conftest import deployed, produce, tickets
from tests.test_recovery import assert_placed_once, decisions, handoff_run, run_to_the_end, wait_for

GUARANTEES = ["at_least_once", "exactly_once"]
DOWN_S = 12  # how long the broker stays down: what the chaos runs saw hang every transactional stage
SESSION_TIMEOUT_S = 45  # librdkafka's session.timeout.ms: how long a static member's partitions wait


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """This module's own broker (conftest's ``kafka`` fixture uses it here): restarting it never
    touches the shared one."""
    kafka = LocalKafka(tmp_path_factory.mktemp("liveness-kafka"), free_port())
    kafka.start(timeout=180)
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
def kafka_bootstrap(broker):
    return broker.bootstrap


def restart(broker: LocalKafka) -> None:
    """Stop the broker, keep it down for :data:`DOWN_S`, start it again on the same port and data."""
    broker.stop()
    time.sleep(DOWN_S)
    broker.start(timeout=120)


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_broker_restart_mid_stream_loses_nothing_and_places_nothing_twice(broker, kafka, receiver, tmp_path,
                                                                            guarantee):
    """Every stage of one ``handoff run`` process (no supervisor) carries on across the restart."""
    workflow = deployed("support_ticket", kafka)
    sample = tickets(injected=True)
    produce(kafka, workflow, sample)
    topics = decisions(workflow)
    with open(tmp_path / "run.log", "wb") as log:
        proc = handoff_run(kafka, receiver, log, "--guarantee", guarantee, "--max-in-flight", "8")
        wait_for(lambda: count(kafka, *topics) >= 40, 120, "the first decisions", proc)
        restart(broker)
        restarted_at = count(kafka, *topics)
        run_to_the_end(proc, kafka, workflow, len(sample), tmp_path / "run.log")

    assert restarted_at < len(sample), "the restart should land mid-stream"
    assert_placed_once(kafka, receiver, workflow, guarantee, len(sample))


def members(kafka, group: str) -> dict[str, int]:
    """The group's members (by instance name) and how many partitions each owns; none while its
    coordinator cannot say (a fresh broker creates its offsets topic first)."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})  # kept until the future resolves
    try:
        description = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=10)
    except (KafkaException, TimeoutError):
        return {}
    return {m.group_instance_id: len(m.assignment.topic_partitions) for m in description.members}


def test_a_stopped_instance_hands_its_partitions_over_at_once(kafka, receiver, tmp_path):
    """Two instances of classify; SIGTERM one: the other owns every partition and drains the input
    well before the session timeout would have released the stopped one's partitions."""
    workflow = deployed("support_ticket", kafka)
    group = kafka.group_id(f"handoff.{workflow.name}.classify")
    triggers = workflow.topics[workflow.topic("triggers")].name
    with open(tmp_path / "a.log", "wb") as log_a, open(tmp_path / "b.log", "wb") as log_b:
        a = handoff_run(kafka, receiver, log_a, "--stage", "classify", "--instance", "a")
        b = handoff_run(kafka, receiver, log_b, "--stage", "classify", "--instance", "b")
        try:
            wait_for(lambda: len(owned := members(kafka, group)) == 2 and all(owned.values()), 120,
                     "both instances to own partitions", b)
            every = sum(members(kafka, group).values())
            a.send_signal(signal.SIGTERM)
            assert a.wait(60) == 0, (tmp_path / "a.log").read_text()[-3000:]
            produce(kafka, workflow, tickets())  # keys over every partition, the stopped one's included
            probe = LagProbe(kafka)
            try:
                wait_for(lambda: members(kafka, group) == {f"{group}.b": every} and probe.lag(group, [triggers]) == 0,
                         SESSION_TIMEOUT_S - 15, "the remaining instance to own and drain every partition", b)
            finally:
                probe.close()
        finally:
            for proc in (a, b):
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)


PROBE = """
import sys, time
from pathlib import Path
from processors.kafka.lag import LagProbe
from processors.kafka.settings import KafkaSettings
probe = LagProbe(KafkaSettings(bootstrap_servers=sys.argv[1]))
restarted, answers = Path(sys.argv[2]), []
print("probing", flush=True)
while len(answers) < 20:
    lag = probe.lag(sys.argv[3], [sys.argv[4]])
    if restarted.exists() and lag is not None:
        answers.append(lag)
    time.sleep(0.1)
probe.close()
print("answers", answers, flush=True)
"""


def test_the_lag_probe_survives_a_broker_restart(broker, kafka, tmp_path):
    """The drain check asks the whole time the broker is down and while its coordinator loads again:
    no crash, an unknown lag while it cannot say, and the right lag once it can."""
    workflow = deployed("support_ticket", kafka)
    triggers = workflow.topics[workflow.topic("triggers")].name
    produce(kafka, workflow, tickets()[:30])
    group = kafka.group_id("probed")
    consumer = kafka.consumer("probed")  # commit part of the input, so there is a group to ask about
    consumer.subscribe([triggers])
    taken = [m for m in consumer.consume(10, timeout=20) if not m.error()]
    consumer.commit(asynchronous=False)
    consumer.close()
    restarted = tmp_path / "restarted"
    proc = subprocess.Popen([sys.executable, "-c", PROBE, broker.bootstrap, str(restarted), group, triggers],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().strip() == "probing"
    restart(broker)
    restarted.touch()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"the probe died with {proc.returncode}:\n{out[-3000:]}"
    assert taken and f"answers [{', '.join([str(30 - len(taken))] * 20)}]" in out


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_drained_group_has_no_lag_in_kafkas_own_tool(broker, kafka, receiver, guarantee):
    """After a drain every stage's committed offsets reach the end of its input, past the commit
    markers of upstream transactions: handoff's probe and ``kafka-consumer-groups --describe`` read 0."""
    workflow = deployed("support_ticket", kafka)
    produce(kafka, workflow, tickets()[:60])
    pipeline = Pipeline(workflow, kafka, options=RuntimeOptions(guarantee=guarantee))
    assert pipeline.run_until_drained(timeout=180), "the probe reads every group's lag as 0"
    groups = [kafka.group_id(runtime.group) for runtime in pipeline.runtimes]
    assert wait_until_drained(kafka, pipeline.runtimes, timeout=30, interval=0.5), "and still after the stop"
    rows = [line.split() for line in broker.tool("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--describe",
                                                 *[arg for g in groups for arg in ("--group", g)]).splitlines()]
    rows = [row for row in rows if row and row[0] in groups]  # GROUP TOPIC PARTITION CURRENT LOG-END LAG ...
    assert len(groups) == len(stages_for(workflow)) and kafka.group_id(f"handoff.{workflow.name}.classify") in {r[0] for r in rows}
    lagging = [row[:6] for row in rows if row[5] != "0" and not (row[5] == "-" and row[4] == "0")]
    assert not lagging, f"the consumer-group tool shows lag: {lagging}"
