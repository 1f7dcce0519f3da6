"""``make demo``: both workflows end to end on a fresh local broker, then a summary.

1. a fresh single-node broker on the local JVM (or ``KAFKA_BOOTSTRAP_SERVERS`` if set),
2. the topics of ``support_ticket`` and ``banking77``,
3. a webhook receiver on loopback, so actions really go over signed HTTP,
4. the sample triggers produced — 320+ support tickets, a few poison records, and the
   BANKING77 queries held out from the embedded model's training,
5. every stage of both workflows until the input is drained (bounded),
6. people and the business answer back: a reviewer corrects, approves and rejects a few
   review items (one of them a risky action), downstream systems report outcomes for a few
   decisions, and the stages run again until that is drained too,
7. where every trigger ended up, the actions executed, latency, sample decisions, the
   embedded models' held-out accuracy, the open review queue, the exported corrections and
   ``handoff report``; then everything is stopped.
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

from processors.clock import now_ms
from processors.dev.cascade_cost import show_cascade_saving
from processors.dev.console_demo import DemoConsole
from processors.dev.lead_intake import lead_intake_demo
from processors.dev.localkafka import LocalKafka, free_port, wait_for_broker
from processors.dev.receiver import WebhookReceiver
from processors.dev.refund_demo import run_refund_demo
from processors.kafka.read import IncompleteRead
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role, apply
from processors.kafka.write import write
from processors.offline.outputs import decision_suffixes, read
from processors.ops import corrections, report
from processors.ops.outcomes import send_outcome
from processors.ops.produce import produce_file
from processors.ops.review_queue import ReviewQueue, line
from processors.ops.summary import collect
from processors.pipeline import Pipeline
from processors.records import Decision, Outcome, ReviewReason, VerdictKind
from processors.runtime.options import STATE_DIR_ENV
from processors.views.store import VIEWS_URL_ENV
from processors.workflow.workflow import Workflow, load_workflow

WORKFLOWS = {"support_ticket": "datasets/tickets.jsonl", "banking77": "datasets/queries.jsonl"}
DRAIN_TIMEOUT_S = 300
DEMO_BROKER_DIR = Path(".local/demo-kafka")
DEMO_CORRECTIONS = Path(".local/demo-corrections")
DEMO_STATE_DIR = Path(".local/demo-state")
DEMO_VIEWS = Path(".local/demo-views.db")
QUEUE_LINES = 5


def say(text: str) -> None:
    print(text, flush=True)


def produce_poison(workflow: Workflow, producer: Producer) -> int:
    """Records no stage can read: not Avro, and Avro of a schema nobody knows."""
    unknown_fingerprint = b"\xc3\x01" + bytes(8) + b"\x02x"
    poison = [(b"poison", value) for value in (b'{"subject": "json, not avro"}', b"\x00\xff\xfe", unknown_fingerprint)]
    write(producer, workflow.spec(Role.triggers).name, poison, what="poison records", timeout_s=10)
    return len(poison)


def expected_labels(workflow: Workflow) -> dict[str, str]:
    """event id -> the dataset's ``expected`` label for the workflow's label field."""
    return {e["event_id"]: e["expected"][workflow.label] for e in dataset(workflow)}


def answer_back(workflow: Workflow, settings: KafkaSettings) -> None:
    """What people and downstream systems do after the first pass: a reviewer who knows the data
    set's labels corrects the first low-confidence item and approves the next, rejects an item
    that has no valid answer, approves the first risky action; a CRM reports outcomes."""
    queue = ReviewQueue(workflow, settings)
    gold = {e["event_id"]: e["expected"] for e in dataset(workflow)}
    open_items = queue.open_items()
    by_reason: dict[ReviewReason, list] = {}
    for item in open_items:
        by_reason.setdefault(item.reason, []).append(item)
    plan = []
    unsure = by_reason.get(ReviewReason.low_confidence, [])
    if unsure:
        expected = gold[unsure[0].event_id]
        fields = {f: str(expected[f]) for f in workflow.prompt_spec.output_schema.get("properties", {}) if f in expected}
        plan.append((unsure[0], VerdictKind.correct, fields, "the data set's label"))
    if len(unsure) > 1:
        plan.append((unsure[1], VerdictKind.approve, None, None))
    if by_reason.get(ReviewReason.invalid_output):
        plan.append((by_reason[ReviewReason.invalid_output][0], VerdictKind.reject, None, "not a real request"))
    if by_reason.get(ReviewReason.risky_action):
        plan.append((by_reason[ReviewReason.risky_action][0], VerdictKind.approve, None, "customer confirmed by phone"))
    for item, kind, fields, reason in plan:
        queue.decide(item.review_id, kind, reviewer="demo-reviewer", fields=fields, reason=reason)
        say(f"review: {workflow.name}: {kind} {item.review_id}" + (f" {fields}" if fields else ""))
    decided = {d.event_id for suffix in decision_suffixes(workflow) for d in read(workflow, settings, suffix, Decision)}
    outcomes = [Outcome(event_id=event_id, workflow=workflow.name, at_ms=now_ms(), source="demo-crm",
                        outcome_type="task_completed" if i % 3 else "reopened")
                for i, event_id in enumerate(sorted(decided)[:6])]
    for outcome in outcomes:
        send_outcome(workflow, settings, outcome)
    say(f"outcomes: {workflow.name}: {len(outcomes)} reported "
        f"({sum(o.outcome_type == 'reopened' for o in outcomes)} reopened)")


def show_queue_and_report(workflow: Workflow, settings: KafkaSettings) -> None:
    open_items = ReviewQueue(workflow, settings).open_items()
    say(f"review queue:  {len(open_items)} open (handoff review list --workflow {workflow.name}); first in line:")
    for item in open_items[:QUEUE_LINES]:
        say("  " + line(workflow, item))
    exported = corrections.export(workflow, settings, DEMO_CORRECTIONS / f"{workflow.name}.jsonl")
    say(f"corrections:   {exported.rows} exported to {exported.path} (handoff dataset export --from corrections)")
    say(f"report:        handoff report --workflow {workflow.name}")
    say(report.build(workflow, settings).render())


def dataset(workflow: Workflow) -> list[dict]:
    with (workflow.folder / WORKFLOWS[workflow.name]).open("rb") as lines:
        return [orjson.loads(line) for line in lines if line.strip()]


def drain(pipelines: list[Pipeline]) -> bool:
    """Run every pipeline until its input is drained (each at most DRAIN_TIMEOUT_S), side by side."""
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
    return all(results.values())


def run_demo(settings: KafkaSettings) -> bool:
    console = DemoConsole(settings)
    receiver = WebhookReceiver(secret=secrets.token_hex(16))
    os.environ["HANDOFF_WEBHOOK_URL"] = receiver.start()
    os.environ["HANDOFF_WEBHOOK_SECRET"] = receiver.secret
    try:
        workflows = [load_workflow(name, settings.namespace) for name in WORKFLOWS]
        providers = []
        producer = settings.producer()
        for workflow in workflows:
            changes = apply(settings.admin(), list(workflow.topics.values()))
            say(f"topics: {workflow.name}: {sum(c.action == 'create' for c in changes)} created")
            trigger = workflow.spec(Role.triggers)
            sent = produce_file(workflow.folder / WORKFLOWS[workflow.name], producer, trigger.name,
                                trigger.serde(settings), trigger.key_field)
            poison = produce_poison(workflow, producer) if workflow.name == "support_ticket" else 0
            say(f"produced: {workflow.name}: {sent.sent} triggers sent, {len(sent.rejected)} rejected, "
                f"{poison} poison records")
            provider = workflow.provider()
            held_out = provider.evaluate()
            say(f"model: {workflow.name}: embedded classifier, held-out accuracy "
                + ", ".join(f"{label} {m.accuracy:.1%} (n={m.n_holdout})" for label, m in held_out.labels.items()))
            providers.append(provider)
        del producer  # flushed by produce_file; close its connections before the broker stops
        say(f"running classify -> validate -> route -> execute (and review, join) for {', '.join(WORKFLOWS)} "
            f"until drained (at most {DRAIN_TIMEOUT_S}s)...")
        ok = drain([Pipeline(w, settings, provider=p) for w, p in zip(workflows, providers)])
        say("")
        for workflow in workflows:
            answer_back(workflow, settings)
        say("running the stages again for the verdicts and outcomes...")
        ok &= drain([Pipeline(w, settings, provider=p) for w, p in zip(workflows, providers)])
        for workflow in workflows:
            say("")
            try:
                summary = collect(workflow, settings)
                say(summary.render())
                right, known = summary.agreement(expected_labels(workflow))
                say(f"agreement:     {right}/{known} decisions ({right / max(known, 1):.1%}) carry the dataset's "
                    f"{workflow.label} (the held-out accuracy above is the honest figure for unseen input)")
                ok &= summary.placed == summary.triggers and not summary.in_two_places()
                show_queue_and_report(workflow, settings)
            except IncompleteRead as exc:  # a summary of part of the topics would be wrong: say so instead
                say(f"== {workflow.name}: no summary: {exc}")
                ok = False
        say("")
        ok &= run_refund_demo(settings, say)
        say("")
        ok &= lead_intake_demo(settings, say)
        say(f"webhook receiver: {len(receiver.applied)} actions applied, {receiver.duplicates} duplicate "
            f"deliveries absorbed by Idempotency-Key")
        show_cascade_saving(say)
        console.keep_up()
        return ok
    finally:
        receiver.stop()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        settings = KafkaSettings(namespace=f"demo{int(time.time())}")
        wait_for_broker(settings.bootstrap_servers, 30)
        sys.exit(0 if run_demo(settings) else 1)
    for folder in (DEMO_BROKER_DIR, DEMO_STATE_DIR):  # a fresh broker and fresh stores: the counts are this run's alone
        shutil.rmtree(folder, ignore_errors=True)
    DEMO_VIEWS.unlink(missing_ok=True)
    os.environ[STATE_DIR_ENV] = str(DEMO_STATE_DIR)
    os.environ[VIEWS_URL_ENV] = f"sqlite:///{DEMO_VIEWS}"
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
