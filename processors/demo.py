"""``make demo``: both workflows end to end on a fresh local broker, then a summary.

1. a fresh single-node broker on the local JVM (or ``KAFKA_BOOTSTRAP_SERVERS`` if set),
2. the topics of ``support_ticket`` and ``banking77``,
3. a webhook receiver on loopback, so actions really go over signed HTTP,
4. the sample triggers produced — 320+ support tickets, a few poison records, and the
   BANKING77 queries held out from the embedded model's training,
5. every stage of both workflows until the input is drained (bounded),
6. where every trigger ended up, the actions executed, latency, sample decisions and the
   embedded models' held-out accuracy; then everything is stopped.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path

import orjson
from confluent_kafka import Producer

from processors.kafka import KafkaSettings
from processors.localkafka import LocalKafka, free_port, wait_for_broker
from processors.pipeline import Pipeline, build_provider
from processors.produce import produce_file
from processors.receiver import WebhookReceiver
from processors.serde import AvroSerde
from processors.summary import collect
from processors.topics import apply
from processors.workflow import Workflow, load_workflow

WORKFLOWS = {"support_ticket": "datasets/tickets.jsonl", "banking77": "datasets/queries.jsonl"}
DRAIN_TIMEOUT_S = 300
DEMO_BROKER_DIR = Path(".local/demo-kafka")


def say(text: str) -> None:
    print(text, flush=True)


def produce_poison(workflow: Workflow, producer: Producer) -> int:
    """Records no stage can read: not Avro, and Avro of a schema nobody knows."""
    topic = workflow.topics[workflow.topic("triggers")].name
    unknown_fingerprint = b"\xc3\x01" + bytes(8) + b"\x02x"
    for value in (b'{"subject": "json, not avro"}', b"\x00\xff\xfe", unknown_fingerprint):
        producer.produce(topic, key=b"poison", value=value)
    producer.flush(10)
    return 3


def expected_labels(workflow: Workflow) -> dict[str, str]:
    """event id -> the dataset's ``expected`` label for the workflow's label field."""
    with (workflow.folder / WORKFLOWS[workflow.name]).open("rb") as lines:
        events = [orjson.loads(line) for line in lines if line.strip()]
    return {e["event_id"]: e["expected"][workflow.label] for e in events}


def run_demo(settings: KafkaSettings) -> bool:
    receiver = WebhookReceiver(secret=secrets.token_hex(16))
    os.environ["HANDOFF_WEBHOOK_URL"] = receiver.start()
    os.environ["HANDOFF_WEBHOOK_SECRET"] = receiver.secret
    try:
        workflows = [load_workflow(name, settings.namespace) for name in WORKFLOWS]
        pipelines = []
        producer = settings.producer()
        for workflow in workflows:
            changes = apply(settings.admin(), list(workflow.topics.values()))
            say(f"topics: {workflow.name}: {sum(c.action == 'create' for c in changes)} created")
            trigger = workflow.topics[workflow.topic("triggers")]
            sent = produce_file(workflow.folder / WORKFLOWS[workflow.name], producer, trigger.name,
                                AvroSerde(trigger.value_schema), trigger.key_field)
            poison = produce_poison(workflow, producer) if workflow.name == "support_ticket" else 0
            say(f"produced: {workflow.name}: {sent.sent} triggers sent, {len(sent.rejected)} rejected, "
                f"{poison} poison records")
            provider = build_provider(workflow)
            report = provider.evaluate()
            say(f"model: {workflow.name}: embedded classifier, held-out accuracy "
                + ", ".join(f"{label} {m.accuracy:.1%} (n={m.n_holdout})" for label, m in report.labels.items()))
            pipelines.append(Pipeline(workflow, settings, provider=provider))
        del producer  # flushed by produce_file; close its connections before the broker stops
        say(f"running classify -> validate -> route -> execute for {', '.join(WORKFLOWS)} until drained "
            f"(at most {DRAIN_TIMEOUT_S}s)...")
        started = time.monotonic()
        results: dict[str, bool] = {}
        threads = [threading.Thread(target=lambda p=p: results.update({p.runtimes[0].workflow:
                                                                          p.run_until_drained(DRAIN_TIMEOUT_S)}))
                   for p in pipelines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        say(f"drained in {time.monotonic() - started:.1f}s" if all(results.values())
            else f"NOT drained within {DRAIN_TIMEOUT_S}s: {results}")
        ok = all(results.values())
        for workflow in workflows:
            summary = collect(workflow, settings)
            say("")
            say(summary.render())
            right, known = summary.agreement(expected_labels(workflow))
            say(f"agreement:     {right}/{known} decisions ({right / max(known, 1):.1%}) carry the dataset's "
                f"{workflow.label} (the held-out accuracy above is the honest figure for unseen input)")
            ok &= summary.placed == summary.triggers and not summary.in_two_places()
        say("")
        say(f"webhook receiver: {len(receiver.applied)} actions applied, {receiver.duplicates} duplicate "
            f"deliveries absorbed by Idempotency-Key")
        return ok
    finally:
        receiver.stop()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        settings = KafkaSettings(namespace=f"demo{int(time.time())}")
        wait_for_broker(settings.bootstrap_servers, 30)
        sys.exit(0 if run_demo(settings) else 1)
    shutil.rmtree(DEMO_BROKER_DIR, ignore_errors=True)  # a fresh broker: the counts are this run's alone
    broker = LocalKafka(DEMO_BROKER_DIR, free_port())
    say("starting a local Kafka broker (first run downloads it from Maven Central)...")
    bootstrap = broker.start(timeout=180)
    say(f"kafka is up at {bootstrap}")
    try:
        ok = run_demo(KafkaSettings(bootstrap_servers=bootstrap, namespace="demo"))
    finally:
        broker.stop()
        say("kafka stopped")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
