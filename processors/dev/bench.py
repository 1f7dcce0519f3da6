"""``make bench``: events per second on one broker, in one run, against a plain-client reference.

(a) validate + route on pre-classified input, each stage in its own ``handoff run --stage``
    process as production deploys them; also both in one process, and — the ceiling — the two
    stages' own work (decode, JSON Schema, rules, routing, encoding every output) on one thread
    with no Kafka client at all;
(b) classify with the scripted model at 100 ms a call and 500 calls in flight, in one process
    (does the runtime hide model latency?);
(c) a plain confluent-kafka consume → decode → encode → produce loop, the reference;
state: what a stateful stage costs as its history grows (:mod:`.bench_state`).

Every figure is printed and written to ``.local/bench/results.json`` as named numbers
(``throughput.<name>``, ``state.<name>.<history size>``), so runs can be compared by a script.

What bounds (a): per event the reference reads one record and writes one; validate and route
read two and write six — the validated item, the duplicate ledger's entry, the decision, the
action request and one trace per step — each a pydantic model encoded with fastavro. The
ceiling line measures that work alone, so (a) against it is what the runtime costs, and the
ceiling against (c) is what the work costs.

Throughput is measured from the output records' timestamps (first to last), so consumer
group start-up is not counted. BANKING77 queries are the payloads. The embedded model's
held-out accuracy on BANKING77 is printed too. Figures are printed, never asserted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import typer
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, Message

from processors.clock import now_ms
from processors.dev import bench_state
from processors.dev.localkafka import LocalKafka, free_port
from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role, apply
from processors.kafka.write import write
from processors.pipeline import Pipeline, wait_until_drained
from processors.providers.scripted import ScriptedProvider
from processors.records import PromptRef, WorkItem, dumps
from processors.runtime.runtime import RuntimeOptions, StageRuntime
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


def produce(settings: KafkaSettings, topic: str, records: list[tuple[str, bytes]]) -> None:
    write(settings.producer(**{"linger.ms": 20}), topic, records, what="bench records",
          progress=f"producing to {topic.split('.', 1)[-1]}")


def throughput(settings: KafkaSettings, topics: list[str], expected: int, since_ms: int) -> float:
    """Records per second between the first and last output written since ``since_ms``."""
    stamps = [ts for t in topics for m in snapshot(settings, t) if (ts := m.timestamp()[1]) >= since_ms]
    if len(stamps) < expected:
        raise RuntimeError(f"only {len(stamps)} of {expected} outputs arrived")
    return len(stamps) / max((max(stamps) - min(stamps)) / 1000, 1e-3)


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


def bench_validate_route(workflow: Workflow, settings: KafkaSettings, n: int) -> float:
    """Both stages in this process, one thread each (``handoff run --stage all``)."""
    produce(settings, workflow.spec(Role.classified).name, preclassified(workflow, settings, n, "one_process"))
    started = now_ms()
    Pipeline(workflow, settings, ["validate", "route"]).run_until_drained(timeout=600)
    return throughput(settings, decision_topics(workflow), n, started)


def bench_validate_route_processes(workflow: Workflow, settings: KafkaSettings, n: int) -> float:
    """Each stage in its own ``handoff run --stage`` process, as production deploys them."""
    produce(settings, workflow.spec(Role.classified).name, preclassified(workflow, settings, n, "processes"))
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "HANDOFF_NAMESPACE": settings.namespace,
                        "HANDOFF_METRICS_PORT": "0"}  # two processes on one host: each takes a free metrics port
    logs = {stage: BENCH_LOGS / f"{stage}.log" for stage in ("validate", "route")}
    BENCH_LOGS.mkdir(parents=True, exist_ok=True)
    started = now_ms()
    stages = [subprocess.Popen([sys.executable, "-m", "processors.cli", "run", "--workflow", workflow.name,
                                "--stage", stage], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
              for stage, log in logs.items()]
    try:  # the drain check asks about the stages' groups and input topics: the same runtimes, not run here
        wait_until_drained(settings, runtimes(workflow, settings, list(logs)), timeout=600, running=lambda: all(p.poll() is None for p in stages))
    finally:
        for process in stages:
            process.terminate()
        for process in stages:
            process.wait(30)
    if any(process.returncode not in (0, -signal.SIGTERM) for process in stages):
        raise RuntimeError(f"a stage process failed; see {', '.join(map(str, logs.values()))}")
    return throughput(settings, decision_topics(workflow), n, started)


def bench_stage_work(workflow: Workflow, settings: KafkaSettings, n: int) -> float:
    """Validate's and route's own work per event — decode, rules, routing, encoding every output — on
    one thread with no Kafka client at all: what (a) would reach if the runtime and the broker were free."""
    validate, route = runtimes(workflow, settings, ["validate", "route"])
    classified, validated = (workflow.spec(role).name for role in (Role.classified, Role.validated))
    items = preclassified(workflow, settings, n, "stage_work")
    validate.tune_gc()  # as a stage process runs
    started = time.perf_counter()
    for offset, (key, value) in enumerate(items):
        for out in validate.handle(Message(topic=classified, partition=0, offset=offset, key=key.encode(), value=value,
                                           timestamp=(TIMESTAMP_CREATE_TIME, now_ms()))):
            if out.topic == validated:
                route.handle(Message(topic=validated, partition=0, offset=offset, key=out.key, value=out.value,
                                     timestamp=(TIMESTAMP_CREATE_TIME, now_ms())))
    return n / (time.perf_counter() - started)


def bench_classify(workflow: Workflow, settings: KafkaSettings, n: int, latency: float, in_flight: int) -> float:
    """Classify the triggers the reference loop read (they are still on the topic)."""
    provider = ScriptedProvider(latency=latency)
    started = now_ms()
    Pipeline(workflow, settings, ["classify"], RuntimeOptions(max_in_flight=in_flight),
             provider=provider).run_until_drained(timeout=600)
    return throughput(settings, [workflow.spec(Role.classified).name], n, started)


def bench_plain_loop(workflow: Workflow, settings: KafkaSettings, n: int) -> float:
    """The reference: what a hand-written confluent-kafka loop does with the same records."""
    source = workflow.spec(Role.triggers).name
    target = workflow.spec(Role.shadow).name  # any topic nobody reads in this run
    serde = workflow.spec(Role.triggers).serde(settings)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": f"{settings.namespace}.plain",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = settings.producer()
    consumer.subscribe([source])
    started = now_ms()
    done, idle_since = 0, None
    while done < n:
        batch = consumer.consume(500, 1.0)
        if not batch:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 30:
                break
            continue
        idle_since = None
        for msg in batch:
            if msg.error():
                continue
            producer.produce(target, key=msg.key(), value=serde.encode(serde.decode(msg.value())))
            producer.poll(0)
            done += 1
        producer.flush()
        consumer.commit(asynchronous=False)
    consumer.close()
    return throughput(settings, [target], n, started)


def run(settings: KafkaSettings, n: int, latency: float, in_flight: int) -> None:
    workflow = load_workflow("banking77", settings.namespace)
    apply(settings.admin(), list(workflow.topics.values()))
    accuracy = workflow.provider().evaluate().labels["intent"]
    print(f"embedded model, BANKING77 held-out accuracy: {accuracy.accuracy:.1%} "
          f"(n={accuracy.n_holdout}, trained on {accuracy.n_train}; best published ~93%)", flush=True)
    os.environ.setdefault("HANDOFF_WEBHOOK_URL", "http://127.0.0.1:9")  # execute does not run here
    # The reference runs first: it also warms the broker's JVM, which would otherwise tax (a).
    trigger = workflow.spec(Role.triggers)
    serde = trigger.serde(settings)
    produce(settings, trigger.name, [(e["customer"]["id"], serde.encode({k: v for k, v in e.items() if k != "expected"}))
                                     for e in events(workflow, n)])
    c = bench_plain_loop(workflow, settings, n)
    print(f"(c) plain consume-decode-encode-produce loop:         {c:8.0f} events/s  ({n} events)", flush=True)
    a = bench_validate_route_processes(workflow, settings, n)
    print(f"(a) validate + route, one process per stage:          {a:8.0f} events/s", flush=True)
    together = bench_validate_route(workflow, settings, n)
    print(f"    validate + route in one process:                  {together:8.0f} events/s", flush=True)
    work = bench_stage_work(workflow, settings, n)
    print(f"    their own work, one thread, no Kafka (ceiling):   {work:8.0f} events/s", flush=True)
    b = bench_classify(workflow, settings, n, latency, in_flight)
    print(f"(b) classify, scripted {latency * 1000:.0f} ms, {in_flight} in flight, one process: {b:8.0f} events/s  "
          f"(latency-bound ceiling {in_flight / latency:.0f}/s)", flush=True)
    print(f"ratios: (a)/(c) = {a / c:.2f} (target 0.5); ceiling/(c) = {work / c:.2f}; "
          f"one process/ceiling = {together / work:.2f} (what the runtime keeps); (b)/(c) = {b / c:.2f}", flush=True)
    print("state (the duplicate check's store, by history size):", flush=True)
    state = bench_state.measure(load_workflow("support_ticket", settings.namespace), settings, BENCH_LOGS)
    figures = {"embedded_accuracy": round(accuracy.accuracy, 4),
               "throughput": {"plain_loop_eps": round(c), "validate_route_processes_eps": round(a),
                              "validate_route_one_process_eps": round(together), "stage_work_ceiling_eps": round(work),
                              "classify_scripted_eps": round(b)},
               "state": state}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    print(f"figures written to {RESULTS}", flush=True)


def main(events_per_run: int = typer.Option(5000, "--events", help="Events per measurement."),
         latency_ms: float = typer.Option(100, help="Scripted model latency for (b)."),
         in_flight: int = typer.Option(500, help="max_in_flight for (b).")) -> None:
    """Benchmark the stages against a plain confluent-kafka loop on one broker."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        run(KafkaSettings(namespace=f"bench{int(time.time())}"), events_per_run, latency_ms / 1000, in_flight)
        return
    shutil.rmtree(BENCH_BROKER_DIR, ignore_errors=True)
    broker = LocalKafka(BENCH_BROKER_DIR, free_port())
    bootstrap = broker.start(timeout=180)
    print(f"kafka is up at {bootstrap}", flush=True)
    try:
        run(KafkaSettings(bootstrap_servers=bootstrap, namespace="bench"), events_per_run, latency_ms / 1000, in_flight)
    finally:
        broker.stop()


if __name__ == "__main__":
    typer.run(main)
