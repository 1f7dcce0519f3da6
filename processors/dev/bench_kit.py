"""What the parts of ``make bench`` share: the events, a fresh namespace per measurement, stage
processes, and throughput read from the outputs' broker timestamps (see :mod:`.bench`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role, TopicSpec, apply
from processors.kafka.write import write
from processors.logs import LIBRDKAFKA
from processors.pipeline import wait_until_drained
from processors.records import PromptRef, WorkItem, dumps
from processors.runtime.runtime import StageRuntime
from processors.stages.registry import build_stage
from processors.workflow.workflow import Workflow, load_workflow

BENCH_BROKER_DIR = Path(".local/bench-kafka")
BENCH_LOGS = Path(".local/bench-logs")
RESULTS = Path(".local/bench/results.json")


CUSTOMERS = 100_000
"""Customers behind the benchmark's events (the record key): a bank's customer base, so a
window of 500 in-flight records rarely holds one customer twice. Per-key order is kept
either way; with few keys, throughput is bounded by the longest chain of one key."""


def events(workflow: Workflow, n: int, run: str = "bench") -> list[dict]:
    """``n`` trigger events from the held-out BANKING77 queries, cycled with event ids fresh to ``run``."""
    lines = (workflow.folder / "datasets/queries.jsonl").read_bytes().splitlines()
    base = [orjson.loads(line) for line in lines if line.strip()]
    return [base[i % len(base)] | {"event_id": f"{run}_{i}",
                                   "customer": base[i % len(base)]["customer"] | {"id": f"c{(i * 7919) % CUSTOMERS}"}}
            for i in range(n)]


def triggers(workflow: Workflow, settings: KafkaSettings, n: int, run: str = "bench") -> list[tuple[str, bytes]]:
    """``n`` trigger records (key, value) as a producer of ``<workflow>.triggers`` writes them."""
    serde = workflow.spec(Role.triggers).serde(settings)
    return [(e["customer"]["id"], serde.encode({k: v for k, v in e.items() if k != "expected"}))
            for e in events(workflow, n, run)]


def produce(settings: KafkaSettings, topic: str, records: list[tuple[str, bytes]]) -> None:
    write(settings.producer(**{"linger.ms": 20}), topic, records, what="bench records",
          progress=f"producing to {topic.split('.', 1)[-1]}")


def fresh(settings: KafkaSettings, label: str, extra: list[TopicSpec] = ()) -> tuple[KafkaSettings, Workflow]:
    """A namespace of its own for one measurement (topics, groups and stores fresh), its topics made, and
    the outputs a measurement counts stamped by the broker (see the module docstring)."""
    settings = settings.model_copy(update={"namespace": f"{settings.namespace}_{label}"})
    workflow = load_workflow("banking77", settings.namespace)
    admin = settings.admin(logger=LIBRDKAFKA)  # its lines through logging, not on stderr
    apply(admin, [*workflow.topics.values(), *extra])
    stamped = [*decision_topics(workflow), *(spec.name for spec in extra),
               *(workflow.spec(role).name for role in (Role.classified, Role.traces, Role.review))]
    for future in admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
            ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET)])
            for name in stamped]).values():
        future.result()
    return settings, workflow


def span(settings: KafkaSettings, topics: list[str], expected: int, since_ms: int) -> tuple[int, float]:
    """(records, seconds from the first to the last) of the outputs written to ``topics`` since ``since_ms``."""
    stamps = [ts for t in topics for m in snapshot(settings, t) if (ts := m.timestamp()[1]) >= since_ms]
    if len(stamps) < expected:
        raise RuntimeError(f"only {len(stamps)} of {expected} outputs arrived")
    return len(stamps), max((max(stamps) - min(stamps)) / 1000, 1e-3)


def throughput(settings: KafkaSettings, topics: list[str], expected: int, since_ms: int) -> float:
    """Records per second between the first and last output written since ``since_ms``."""
    records, seconds = span(settings, topics, expected, since_ms)
    return records / seconds


def preclassified(workflow: Workflow, settings: KafkaSettings, n: int, run: str) -> list[tuple[str, bytes]]:
    """``n`` work items for ``<workflow>.classified`` as classify would have written them, with event
    ids fresh to ``run`` (validate drops a second run's items as duplicates)."""
    prompt = PromptRef(name=workflow.prompt_spec.name, version=workflow.prompt_spec.version)
    serde = workflow.spec(Role.classified).serde(settings)
    return [(e["customer"]["id"], serde.encode(WorkItem(
        event_id=e["event_id"], workflow=workflow.name, event=dumps({k: v for k, v in e.items() if k != "expected"}),
        prompt=prompt, model="bench:preclassified", raw_answer="",
        answer=dumps({"intent": e["expected"]["intent"], "confidence": 0.95, "reason": "pre-classified"})).model_dump()))
        for e in events(workflow, n, run)]


def runtimes(workflow: Workflow, settings: KafkaSettings, stages: list[str]) -> list[StageRuntime]:
    """The stages' runtimes as ``handoff run`` builds them, not started (no Kafka client yet)."""
    return [StageRuntime(build_stage(stage, workflow), workflow.name, workflow.topics, settings)
            for stage in stages]


def decision_topics(workflow: Workflow) -> list[str]:
    return [workflow.spec(Role.decisions, route).name for route in workflow.route_names]


def stage_env(settings: KafkaSettings, **extra: str) -> dict[str, str]:
    """The environment of a ``handoff run`` process on the bench's broker and namespace."""
    return os.environ | {"KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "HANDOFF_NAMESPACE": settings.namespace,
                         "HANDOFF_METRICS_PORT": "0"} | extra  # processes on one host: each takes a free metrics port


def stage_process(workflow: Workflow, settings: KafkaSettings, stage: str, log: str, *args: str,
                  env: dict[str, str] | None = None) -> subprocess.Popen:
    """``handoff run --stage <stage>``, logging to ``.local/bench-logs/<log>.log``."""
    BENCH_LOGS.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "processors.cli", "run", "--workflow", workflow.name,
                             "--stage", stage, *args], env=env or stage_env(settings),
                            stdout=(BENCH_LOGS / f"{log}.log").open("w"), stderr=subprocess.STDOUT)


def stop_processes(processes: list[subprocess.Popen], what: str) -> None:
    """SIGTERM each (a graceful stop), wait; raise when one had failed."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(60)
    if any(process.returncode not in (0, -signal.SIGTERM) for process in processes):
        raise RuntimeError(f"a {what} process failed; see {BENCH_LOGS}")


def run_stage_processes(workflow: Workflow, settings: KafkaSettings, stages: list[str], label: str,
                        env: dict[str, str] | None = None) -> None:
    """Each stage in its own ``handoff run --stage`` process, until their input is drained."""
    processes = [stage_process(workflow, settings, stage, f"{label}-{stage}", env=env) for stage in stages]
    try:  # the drain check asks about the stages' groups and input topics: the same runtimes, not run here
        wait_until_drained(settings, runtimes(workflow, settings, stages), timeout=900,
                           running=lambda: all(p.poll() is None for p in processes))
    finally:
        stop_processes(processes, label)
