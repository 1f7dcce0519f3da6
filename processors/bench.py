"""``make bench``: events per second on one broker, in one run, against a plain-client reference.

(a) validate + route on pre-classified input (the stages' own overhead: decode, JSON Schema,
    rules, routing, encode, ordered release, commits);
(b) classify with the scripted model at 100 ms a call and 500 calls in flight (does the
    runtime hide model latency?);
(c) a plain confluent-kafka consume → decode → encode → produce loop, the reference.

Throughput is measured from the output records' timestamps (first to last), so consumer
group start-up is not counted. BANKING77 queries are the payloads. The embedded model's
held-out accuracy on BANKING77 is printed too. Figures are printed, never asserted.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import orjson
import typer
from confluent_kafka import Consumer
from tqdm import tqdm

from processors.kafka import KafkaSettings
from processors.localkafka import LocalKafka, free_port
from processors.pipeline import Pipeline, build_provider
from processors.providers.scripted import ScriptedProvider
from processors.records import PromptRef, WorkItem, dumps
from processors.runtime import RuntimeOptions
from processors.serde import AvroSerde
from processors.stage import now_ms
from processors.tail import snapshot
from processors.topics import apply
from processors.workflow import Workflow, load_workflow

BENCH_BROKER_DIR = Path(".local/bench-kafka")


CUSTOMERS = 100_000
"""Customers behind the benchmark's events (the record key): a bank's customer base, so a
window of 500 in-flight records rarely holds one customer twice. Per-key order is kept
either way; with few keys, throughput is bounded by the longest chain of one key."""


def events(workflow: Workflow, n: int) -> list[dict]:
    """``n`` trigger events from the held-out BANKING77 queries, cycled with fresh event ids."""
    lines = (workflow.folder / "datasets/queries.jsonl").read_bytes().splitlines()
    base = [orjson.loads(line) for line in lines if line.strip()]
    return [base[i % len(base)] | {"event_id": f"bench_{i}",
                                   "customer": base[i % len(base)]["customer"] | {"id": f"c{(i * 7919) % CUSTOMERS}"}}
            for i in range(n)]


def produce(settings: KafkaSettings, topic: str, serde: AvroSerde, records: list[tuple[str, dict]]) -> None:
    producer = settings.producer(**{"linger.ms": 20})
    for key, value in tqdm(records, desc=f"producing to {topic.split('.', 1)[-1]}", unit="rec", leave=False):
        while True:
            try:
                producer.produce(topic, key=key, value=serde.encode(value))
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def throughput(settings: KafkaSettings, topics: list[str], expected: int, since_ms: int) -> float:
    """Records per second between the first and last output written since ``since_ms``."""
    stamps = [ts for t in topics for m in snapshot(settings, t) if (ts := m.timestamp()[1]) >= since_ms]
    if len(stamps) < expected:
        raise RuntimeError(f"only {len(stamps)} of {expected} outputs arrived")
    return len(stamps) / max((max(stamps) - min(stamps)) / 1000, 1e-3)


def bench_validate_route(workflow: Workflow, settings: KafkaSettings, n: int) -> float:
    prompt = PromptRef(name=workflow.prompt_spec.name, version=workflow.prompt_spec.version)
    items = [(e["customer"]["id"], WorkItem(
        event_id=e["event_id"], workflow=workflow.name, event=dumps({k: v for k, v in e.items() if k != "expected"}),
        prompt=prompt, model="bench:preclassified", raw_answer="",
        answer=dumps({"intent": e["expected"]["intent"], "confidence": 0.95, "reason": "pre-classified"})).model_dump())
        for e in events(workflow, n)]
    produce(settings, workflow.topics[workflow.topic("classified")].name, AvroSerde("handoff/work_item"), items)
    started = now_ms()
    Pipeline(workflow, settings, ["validate", "route"]).run_until_drained(timeout=600)
    decisions = [s.name for name, s in workflow.topics.items() if name.startswith(workflow.topic("decisions."))]
    return throughput(settings, decisions, n, started)


def bench_classify(workflow: Workflow, settings: KafkaSettings, n: int, latency: float, in_flight: int) -> float:
    """Classify the triggers the reference loop read (they are still on the topic)."""
    provider = ScriptedProvider(latency=latency)
    started = now_ms()
    Pipeline(workflow, settings, ["classify"], RuntimeOptions(max_in_flight=in_flight),
             provider=provider).run_until_drained(timeout=600)
    return throughput(settings, [workflow.topics[workflow.topic("classified")].name], n, started)


def bench_plain_loop(workflow: Workflow, settings: KafkaSettings, n: int) -> float:
    """The reference: what a hand-written confluent-kafka loop does with the same records."""
    source = workflow.topics[workflow.topic("triggers")].name
    target = workflow.topics[workflow.topic("shadow")].name  # any topic nobody reads in this run
    serde = AvroSerde(workflow.topics[workflow.topic("triggers")].value_schema)
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
    accuracy = build_provider(workflow).evaluate().labels["intent"]
    print(f"embedded model, BANKING77 held-out accuracy: {accuracy.accuracy:.1%} "
          f"(n={accuracy.n_holdout}, trained on {accuracy.n_train}; best published ~93%)", flush=True)
    os.environ.setdefault("HANDOFF_WEBHOOK_URL", "http://127.0.0.1:9")  # execute does not run here
    # The reference runs first: it also warms the broker's JVM, which would otherwise tax (a).
    trigger = workflow.topics[workflow.topic("triggers")]
    produce(settings, trigger.name, AvroSerde(trigger.value_schema),
            [(e["customer"]["id"], {k: v for k, v in e.items() if k != "expected"}) for e in events(workflow, n)])
    c = bench_plain_loop(workflow, settings, n)
    print(f"(c) plain consume-decode-encode-produce loop:    {c:8.0f} events/s  ({n} events)", flush=True)
    a = bench_validate_route(workflow, settings, n)
    print(f"(a) validate + route, pre-classified:            {a:8.0f} events/s", flush=True)
    b = bench_classify(workflow, settings, n, latency, in_flight)
    print(f"(b) classify, scripted {latency * 1000:.0f} ms, {in_flight} in flight:  {b:8.0f} events/s  "
          f"(latency-bound ceiling {in_flight / latency:.0f}/s)", flush=True)
    print(f"ratios: (a)/(c) = {a / c:.2f}, (b)/(c) = {b / c:.2f}", flush=True)


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
