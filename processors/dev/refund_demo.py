"""The refund workflow's part of ``make demo`` (seed 002), on the sample system of record.

Sample refund requests are grounded in the system of record (order, payment record, policy over
MCP) and adjudicated by the offline policy engine; every refund waits for a person. An approver
lowers the first one's amount and approves it; it is paid once through the payment tool, the CRM
gets a note, and a verdict event closes the case with its audit record. Then the same approved
request is delivered again, and the ledger still shows one refund.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

import orjson

from processors.dev.system_of_record import SystemOfRecordThread
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role, apply
from processors.kafka.write import write
from processors.offline.outputs import read
from processors.ops.review_queue import ReviewQueue, line
from processors.pipeline import Pipeline
from processors.records import ActionRequest, Execution, Notification, ReviewReason, VerdictKind
from processors.workflow.workflow import load_workflow

REQUESTS = 40
"""The first sample requests (workflows/refund/datasets/requests.jsonl): every verdict occurs among them."""
DRAIN_TIMEOUT_S = 120
APPROVER = "support-lead@demo"


def run_refund_demo(settings: KafkaSettings, say: Callable[[str], None]) -> bool:
    """The refund part of the demo on ``settings``' broker; True when the refund was paid exactly once."""
    with SystemOfRecordThread() as sor:
        os.environ["HANDOFF_RECORDS_MCP_URL"], os.environ["HANDOFF_RECORDS_MCP_TOKEN"] = sor.url, "demo"
        workflow = load_workflow("refund", settings.namespace)
        apply(settings.admin(), list(workflow.topics.values()))
        trigger = workflow.spec(Role.triggers)
        serde = trigger.serde(settings)
        rows = [orjson.loads(line) for line in (workflow.folder / "datasets/requests.jsonl").read_bytes().splitlines()]
        events = [{k: v for k, v in row.items() if k != "expected"} for row in rows[:REQUESTS]]
        write(settings.producer(), trigger.name, [(e["customer"]["id"].encode(), serde.encode(e, trigger.name))
                                                  for e in events], what="refund requests", timeout_s=30)
        say(f"refund: {len(events)} requests produced; system of record (MCP, SQLite) at {sor.url}")
        provider = workflow.provider()
        ok = Pipeline(workflow, settings, provider=provider).run_until_drained(DRAIN_TIMEOUT_S)
        queue = ReviewQueue(workflow, settings)
        waiting = [i for i in queue.open_items() if i.reason == ReviewReason.risky_action]
        others = Counter(i.reason.value for i in queue.open_items() if i.reason != ReviewReason.risky_action)
        denied = [n for n in read(workflow, settings, Role.notifications, Notification) if n.action == "close_case"]
        say(f"refund: {len(waiting)} refunds wait for an approver, {len(denied)} denials closed, other review "
            f"{dict(others)}; refunds paid so far: {len(sor.service.refunds_by_key())}")
        if not waiting:
            return False
        item = waiting[0]
        answer = orjson.loads(item.answer)
        say(f"  {line(workflow, item)}\n  reasoning: {answer['rationale']}")
        adjusted = round(answer["amount"] * 0.8, 2)
        queue.decide(item.review_id, VerdictKind.approve, reviewer=APPROVER, fields={"amount": str(adjusted)})
        say(f"refund: {APPROVER} approves {item.review_id} with amount {adjusted} (proposed {answer['amount']})")
        ok &= Pipeline(workflow, settings, provider=provider).run_until_drained(DRAIN_TIMEOUT_S)
        key = item.action.idempotency_key
        [approved] = [r for r in read(workflow, settings, Role.actions, ActionRequest)
                      if r.idempotency_key == key and r.approved_by]
        actions = workflow.spec(Role.actions)
        write(settings.producer(), actions.name, [(key.encode(), actions.serde(settings).encode(
            approved.model_dump(), actions.name))], what="the approved refund, again", timeout_s=10)
        ok &= Pipeline(workflow, settings, stages=["execute"], provider=provider).run_until_drained(DRAIN_TIMEOUT_S)
        order = orjson.loads(item.event)["order"]["id"]
        refunds = [r for r in sor.service.refunds_for(order) if r["idempotency_key"] == key]
        runs = [e.status.value for e in read(workflow, settings, Role.executions, Execution)
                if e.idempotency_key == key]
        say(f"refund: delivered twice, executions {runs}; payment ledger of {order} for {key}: "
            + ", ".join(f"{r['refund_id']} {r['amount']} {r['currency']} (key {r['idempotency_key']})"
                        for r in refunds))
        [case] = [orjson.loads(n.arguments) for n in read(workflow, settings, Role.notifications, Notification)
                  if n.action == "close_case" and n.event_id == item.event_id]
        say(f"refund: verdict event on {workflow.spec(Role.notifications).name}: {orjson.dumps(case).decode()}")
        notes = sor.service.notes_for(orjson.loads(item.event)["customer"]["id"])
        say(f"refund: CRM note: {notes[-1]['text']}" if notes else "refund: no CRM note")
        return ok and len(refunds) == 1 and case["approved_amount"] == adjusted
