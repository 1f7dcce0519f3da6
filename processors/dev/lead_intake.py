"""Lead intake on the sample system of record: what the intake system does before a trigger, and the demo's part.

A ``lead.submitted`` trigger names the CRM lead record the submission created (``lead.id``), as a form
integration or an inbox connector records it before it tells anyone: :func:`record_leads` does that
through the CRM's own ``update_lead`` tool (once per lead: its idempotency key is ``intake:<lead id>``),
so the workflow's actions update, assign and task a lead that exists, in whichever order they run.

:func:`lead_intake_demo` is ``make demo``'s lead-intake part: the sample CRM on loopback, the sample
leads recorded and produced, every stage until drained, then a lead assigned to a real owner shown
from the CRM itself, and outcomes reported and turned into dataset rows.

    python -m processors.dev.lead_intake record workflows/lead_intake/datasets/leads.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import Counter
from pathlib import Path

import orjson

from processors.clock import now_ms
from processors.dev.system_of_record import SystemOfRecordThread
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role, apply
from processors.kafka.write import write
from processors.offline.outputs import decision_suffixes, read
from processors.ops import evidence
from processors.ops.outcomes import send_outcome
from processors.pipeline import Pipeline
from processors.records import LABELS_FIELD, Decision, Outcome, ReviewItem
from processors.workflow.workflow import Workflow, load_workflow

CRM_URL_ENV, CRM_TOKEN_ENV = "HANDOFF_CRM_MCP_URL", "HANDOFF_CRM_MCP_TOKEN"
SAMPLE = "datasets/leads.jsonl"
DEMO_LEADS = 120
OUTCOME_STORY = ("qualified", "call_booked", "qualified", "disqualified")
"""What the demo's CRM reports for its first sales decisions, in turn (a disqualified one is evidence against)."""
DRAIN_TIMEOUT_S = 300


def read_leads(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def record_leads(workflow: Workflow, events: list[dict]) -> None:
    """Create, in the CRM, the lead record each trigger names (status new), as the intake system does."""
    asyncio.run(_record(workflow, events))


async def _record(workflow: Workflow, events: list[dict]) -> None:
    tools = workflow.tool_client()
    try:
        for event in events:
            lead_id = event["lead"]["id"]
            await tools.call("update_lead", {"lead_id": lead_id, "contact_id": event["contact"]["id"], "status": "new"},
                             idempotency_key=f"intake:{lead_id}")
    finally:
        await tools.close()


def lead_intake_demo(settings: KafkaSettings, say=print) -> bool:
    """The sample CRM, the first :data:`DEMO_LEADS` sample leads through every stage, a lead assigned to a real
    owner, outcomes joined and the dataset rows they make; True when every lead was placed."""
    with SystemOfRecordThread() as crm:
        os.environ[CRM_URL_ENV], os.environ[CRM_TOKEN_ENV] = crm.url, "demo"
        workflow = load_workflow("lead_intake", settings.namespace)
        apply(settings.admin(), list(workflow.topics.values()))
        leads = read_leads(workflow.folder / SAMPLE)[:DEMO_LEADS]
        record_leads(workflow, leads)
        trigger = workflow.spec(Role.triggers)
        serde = trigger.serde(settings)
        write(settings.producer(), trigger.name, [(lead["contact"]["id"], serde.encode(
            {k: v for k, v in lead.items() if k != LABELS_FIELD}, trigger.name)) for lead in leads],
              what="sample leads", timeout_s=30)
        say(f"lead_intake: {len(leads)} sample leads recorded in the sample CRM ({crm.url}) and produced")
        ok = Pipeline(workflow, settings).run_until_drained(DRAIN_TIMEOUT_S)
        decisions = {d.event_id: d for s in decision_suffixes(workflow) for d in read(workflow, settings, s, Decision)}
        review = read(workflow, settings, Role.review, ReviewItem)
        say("lead_intake: routes " + ", ".join(f"{r} {n}" for r, n in Counter(d.route for d in decisions.values())
                                              .most_common()) + "; review " +
            ", ".join(f"{r} {n}" for r, n in Counter(i.reason for i in review).most_common()))
        show_assigned(crm, decisions, say)
        sales = [d for d in sorted(decisions.values(), key=lambda d: d.event_id) if d.route.startswith("sales")]
        outcomes = [Outcome(event_id=d.event_id, workflow=workflow.name, at_ms=now_ms(), source="demo-crm",
                            outcome_type=OUTCOME_STORY[i % len(OUTCOME_STORY)]) for i, d in enumerate(sales[:12])]
        for outcome in outcomes:
            send_outcome(workflow, settings, outcome)
        ok &= Pipeline(workflow, settings, ["join"]).run_until_drained(DRAIN_TIMEOUT_S)
        rows = evidence.from_topics(workflow, settings)
        kinds = Counter(str(r[LABELS_FIELD][evidence.EVIDENCE_FIELD]["evidence"]) for r in rows)
        say(f"lead_intake: {len(outcomes)} outcomes reported by the CRM -> {len(rows)} dataset rows ("
            + ", ".join(f"{kind} {n}" for kind, n in kinds.most_common())
            + "): handoff dataset export --from outcomes; handoff model train --with corrections,outcomes")
        return ok and len(decisions) + len({i.event_id for i in review} - set(decisions)) == len(leads)


def show_assigned(crm: SystemOfRecordThread, decisions: dict[str, Decision], say=print) -> None:
    """One assigned lead as the CRM holds it: the lead, its owner (who covers its territory and service), its task."""
    assigned = next((d for d in sorted(decisions.values(), key=lambda d: d.event_id) if d.route == "sales"), None)
    if assigned is None:
        return
    lead_id = orjson.loads(assigned.event)["lead"]["id"]
    records = crm.service.records
    [lead] = records.read("SELECT * FROM leads WHERE lead_id = ?", lead_id)
    [owner] = records.read("SELECT * FROM owners WHERE owner_id = ?", lead["owner_id"])
    covers = records.read("SELECT service FROM owner_services WHERE owner_id = ?", owner["owner_id"])
    tasks = records.read("SELECT task_id, title FROM tasks WHERE lead_id = ?", lead_id)
    territory = orjson.loads(assigned.event)["lead"]["territory"]
    say(f"lead_intake: {lead_id} ({lead['intent']}, {lead['service']}, {territory}, urgency {lead['urgency']}) "
        f"assigned in the CRM to {owner['owner_id']} {owner['name']} (covers {', '.join(c['service'] for c in covers)} "
        f"in {territory}); tasks {[(t['task_id'], t['title']) for t in tasks]}; summary {lead['summary']!r}")


def main(argv: list[str] | None = None) -> None:
    """Record, in the CRM at $HANDOFF_CRM_MCP_URL, the lead record each trigger of FILE names."""
    parser = argparse.ArgumentParser(prog="python -m processors.dev.lead_intake", description=main.__doc__)
    parser.add_argument("command", choices=["record"])
    parser.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    leads = read_leads(args.file)
    record_leads(load_workflow("lead_intake"), leads)
    print(f"recorded {len(leads)} leads in the CRM")


if __name__ == "__main__":
    main()
