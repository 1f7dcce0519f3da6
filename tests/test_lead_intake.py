"""Lead intake (seed 000) against the real broker and the sample system of record (a real MCP server over
SQLite on loopback): the CRM checks in code, the CRM actions, the exception paths, and outcomes that become
dataset rows and retrain the embedded model.

One pipeline (ground, classify with a scripted model, validate, route, execute, join) runs once for the
module; each test asserts on what it left behind. The model is scripted so a test can force what a model
might say (an owner who does not exist, one from another territory, no duplicate), and answers otherwise
what the workflow's own completion works out (processors/workflow/leads.py), as the embedded default does.
"""

from __future__ import annotations

import os
import shutil
import uuid

import orjson
import pytest
from typer.testing import CliRunner

from processors.cli.main import app
from processors.dev.lead_intake import record_leads
from processors.dev.system_of_record import SystemOfRecordThread
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role, apply
from processors.offline.evals import run_suite
from processors.offline.outputs import read
from processors.offline.training import retrain
from processors.ops import evidence
from processors.ops.outcomes import send_outcome
from processors.ops.review_queue import InvalidVerdict, ReviewQueue
from processors.paths import lookup
from processors.pipeline import Pipeline
from processors.providers.base import ModelRequest
from processors.providers.scripted import ScriptedProvider
from processors.records import (
    Decision,
    Notification,
    Outcome,
    PromptRef,
    Result,
    ReviewItem,
    ReviewReason,
    VerdictKind,
    WorkItem,
)
from processors.workflow import leads
from processors.workflow.workflow import Workflow, load_workflow
from tests.conftest import WORKFLOWS, tickets

SUBMITTED = "2026-06-15T09:00:00Z"
FULL_FORM = {"budget": "$25k-$50k", "timeline": "this quarter", "company_size": "51-200"}


def lead(event_id: str, contact: str, territory: str, **form) -> dict:
    """A web-form lead for ``contact`` (a contact of the sample CRM), with the form fields given."""
    fields = FULL_FORM | form
    return {"event": "lead.submitted", "event_id": event_id, "submitted_at": SUBMITTED, "channel": "web_form",
            "contact": {"id": contact, "name": "Test Person", "email": f"{event_id}@example.com", "phone": None,
                        "company": fields.pop("company", "Acme Logistics"), "role": "CTO"},
            "lead": {"id": f"L-{event_id}", "territory": territory, "subject": "Project inquiry",
                     "message": "We need to move our on-prem servers to the cloud before the lease runs out. "
                                "Can you send us a proposal?", **fields}}


EVENTS = [
    lead("no_such_owner", "C-1001", "DACH"),     # the model names OW-99 twice: no such owner
    lead("other_territory", "C-1008", "DACH"),   # the model names OW-09 twice: US East's, not DACH's
    lead("repaired", "C-1017", "DACH"),          # OW-99, then the right owner on the repair
    lead("missing", "C-1074", "DACH", company=None, budget=None, timeline=None),
    lead("duplicate", "C-1034", "Nordics"),      # C-1034's L-2031 came in two days before
    lead("duplicate_missed", "C-1073", "Benelux"),  # L-2035, five days before; the model says no duplicate, twice
]


def right(request: ModelRequest) -> dict:
    """What the embedded default would answer for a cloud-migration purchase: the completion's fields."""
    classified = {"intent": "purchase", "service": "cloud_migration", "urgency": "medium", "confidence": 0.9,
                  "reason": "asks for a proposal for a cloud migration"}
    return leads.complete(classified, request.inputs)


def owned_by(owner: str):
    return lambda request: right(request) | {"recommended_owner": owner}


SCRIPT = {"no_such_owner": [owned_by("OW-99")] * 2, "other_territory": [owned_by("OW-09")] * 2,
          "repaired": [owned_by("OW-99"), right],
          "duplicate_missed": [lambda r: right(r) | {"duplicate_of": None, "next_action": "send_proposal"}] * 2}


@pytest.fixture(scope="module")
def crm():
    with SystemOfRecordThread() as server:
        yield server


@pytest.fixture(scope="module")
def run(crm, kafka_bootstrap, tmp_path_factory):
    """The workflow (a copy: model train writes its learned rows there) deployed in a namespace of its own, the
    events and then outcomes run through the pipeline once; the topics are deleted at the end."""
    root = tmp_path_factory.mktemp("lead_intake") / "workflows"
    shutil.copytree(WORKFLOWS / "lead_intake", root / "lead_intake")
    env = {"HANDOFF_CRM_MCP_URL": crm.url, "HANDOFF_CRM_MCP_TOKEN": "test"}
    os.environ.update(env)
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, namespace=f"t{uuid.uuid4().hex[:10]}")
    workflow = load_workflow("lead_intake", settings.namespace, root)
    apply(settings.admin(), list(workflow.topics.values()))
    record_leads(workflow, EVENTS)  # as the intake system does before it produces a trigger
    spec = workflow.spec(Role.triggers)
    producer = settings.producer()
    for event in EVENTS:
        producer.produce(spec.name, key=event["contact"]["id"], value=spec.serde(settings).encode(event, spec.name))
    assert producer.flush(30) == 0
    provider = ScriptedProvider(SCRIPT, default=right)
    stages = ["ground", "classify", "validate", "route", "execute", "join"]
    assert Pipeline(workflow, settings, stages, provider=provider).run_until_drained(timeout=120)
    for event_id, kind in (("repaired", "qualified"), ("missing", "disqualified"), ("duplicate", "call_booked")):
        send_outcome(workflow, settings, Outcome(event_id=event_id, workflow=workflow.name, outcome_type=kind,
                                                 at_ms=1_780_000_000_000, source="crm"))
    assert Pipeline(workflow, settings, ["join"]).run_until_drained(timeout=60)
    yield workflow, settings, provider
    for name in env:
        os.environ.pop(name, None)
    admin = settings.admin()
    ours = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{settings.namespace}.")]
    for future in admin.delete_topics(ours, operation_timeout=30).values():
        future.result()


def decided(workflow: Workflow, settings: KafkaSettings) -> dict[str, Decision]:
    return {d.event_id: d for route in workflow.route_names
            for d in read(workflow, settings, f"{Role.decisions}.{route}", Decision)}


def test_an_owner_who_does_not_exist_or_does_not_cover_the_territory_is_repaired_once_then_reviewed(run, crm):
    workflow, settings, _ = run
    repairs = [i.event_id for i in read(workflow, settings, Role.repair, WorkItem)]
    assert sorted(repairs) == ["duplicate_missed", "no_such_owner", "other_territory", "repaired"], \
        "each bad answer is sent back once"
    review = {i.event_id: i for i in read(workflow, settings, Role.review, ReviewItem)}
    assert set(review) == {"no_such_owner", "other_territory", "duplicate_missed"}
    assert all(i.reason == ReviewReason.invalid_output for i in review.values())
    [unknown] = review["no_such_owner"].validation_errors
    assert unknown.startswith("owner_covers_the_lead: recommended_owner OW-99 is no active owner of territory DACH")
    [elsewhere] = review["other_territory"].validation_errors
    assert "recommended_owner OW-09 is no active owner of territory DACH" in elsewhere
    assert "OW-01, OW-02" in elsewhere, "the message names the territory's owners, from the CRM"
    assert orjson.loads(review["no_such_owner"].lookups)["owners"]["territory"] == "DACH", \
        "the review item keeps what the answer was checked against"
    queue = ReviewQueue(workflow, settings)  # a person's correction meets the same check, against the same lookups
    with pytest.raises(InvalidVerdict, match="recommended_owner OW-98 is no active owner of territory DACH"):
        queue.verdict(review["no_such_owner"].review_id, VerdictKind.correct, reviewer="ops",
                      fields={"recommended_owner": "OW-98"})
    corrected = queue.verdict(review["no_such_owner"].review_id, VerdictKind.correct, reviewer="ops",
                              fields={"recommended_owner": "OW-01"})
    assert orjson.loads(corrected.answer)["recommended_owner"] == "OW-01"
    decisions = decided(workflow, settings)
    assert decisions["repaired"].route == "sales", "the repaired answer is decided"
    [row] = crm.service.records.read("SELECT owner_id FROM leads WHERE lead_id = 'L-repaired'")
    assert row["owner_id"] == "OW-01", "assigned, in the CRM, to the DACH owner who covers cloud migration"
    untouched = crm.service.records.read("SELECT status, owner_id, intent FROM leads WHERE lead_id IN "
                                         "('L-no_such_owner', 'L-other_territory')")
    assert untouched == [{"status": "new", "owner_id": None, "intent": None}] * 2, \
        "nothing reached the CRM for the reviewed leads but what the intake system recorded"


def test_a_lead_with_missing_fields_notifies_its_owner_naming_exactly_the_missing_fields(run, crm):
    workflow, settings, _ = run
    decision = decided(workflow, settings)["missing"]
    assert decision.route == "sales_incomplete"
    notes = [n for n in read(workflow, settings, Role.notifications, Notification) if n.event_id == "missing"]
    assert [orjson.loads(n.arguments) for n in notes] == [
        {"owner_id": "OW-01", "lead_id": "L-missing", "contact_id": "C-1074",
         "missing": ["company", "budget", "timeline"]}]
    [task] = crm.service.records.read("SELECT owner_id, title FROM tasks WHERE lead_id = 'L-missing'")
    assert task == {"owner_id": "OW-01", "title": "request_information"}
    [record] = crm.service.records.read("SELECT * FROM leads WHERE lead_id = 'L-missing'")
    assert (record["owner_id"], record["intent"], record["service"], record["status"]) == \
        ("OW-01", "purchase", "cloud_migration", "sales_incomplete")
    assert not [n for n in read(workflow, settings, Role.notifications, Notification) if n.event_id == "repaired"], \
        "a complete lead asks for nothing"


def test_a_duplicate_lead_is_recognised(run, crm):
    workflow, settings, _ = run
    decision = decided(workflow, settings)["duplicate"]
    assert (decision.route, orjson.loads(decision.answer)["duplicate_of"]) == ("duplicate", "L-2031")
    [note] = [n for n in crm.service.records.read("SELECT * FROM notes WHERE contact_id = 'C-1034'")]
    assert note["about"] == "L-2031", "noted on the earlier lead, not assigned or tasked again"
    assert not crm.service.records.read("SELECT 1 FROM tasks WHERE lead_id = 'L-duplicate'")
    review = {i.event_id: i for i in read(workflow, settings, Role.review, ReviewItem)}
    assert review["duplicate_missed"].validation_errors == [
        "duplicate_lead_is_recognised: duplicate_of must be L-2035: the contact's lead within 14 days before this one"]


def test_outcome_rules_make_dataset_rows_and_a_retrained_model_prints_old_and_new_held_out_figures(run):
    workflow, settings, _ = run
    rows = {r["event_id"]: r["expected"] for r in evidence.from_topics(workflow, settings)}
    assert set(rows) == {"repaired", "missing", "duplicate"}
    assert rows["repaired"]["intent"] == "purchase" and rows["repaired"]["evidence"]["evidence"] == "confirms"
    assert rows["duplicate"]["evidence"]["outcome_type"] == "call_booked"
    against = rows["missing"]
    assert "intent" not in against and against["evidence"]["against"] == {"intent": "purchase"}, \
        "decided purchase, then disqualified: evidence against that intent"

    exported = CliRunner().invoke(app, ["dataset", "export", "--workflow", "lead_intake", "--from", "outcomes",
                                        "--workflows-dir", str(workflow.folder.parent)],
                                  env={"KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
                                       "HANDOFF_NAMESPACE": settings.namespace})
    assert exported.exit_code == 0 and "wrote 3 examples" in exported.output, exported.output
    written = [orjson.loads(line) for line in evidence.default_path(workflow).read_bytes().splitlines()]
    assert sorted(r["event_id"] for r in written) == ["duplicate", "missing", "repaired"]

    done = retrain(workflow, {"outcomes": written})
    assert done.learned == 3 and done.left_out == 0
    assert {k: v.n_holdout for k, v in done.old.labels.items()} == {k: v.n_holdout for k, v in done.new.labels.items()}
    assert all(new.n_train == old.n_train + 3 for old, new in zip(done.old.labels.values(), done.new.labels.values()))
    learned = [orjson.loads(line) for line in done.path.read_bytes().splitlines()]
    assert next(r for r in learned if r["event_id"] == "missing")["expected"]["intent"] != "purchase", \
        "a row against a label is trained as another label"

    result = CliRunner().invoke(app, ["model", "train", "--workflow", "lead_intake", "--with", "outcomes",
                                      "--workflows-dir", str(workflow.folder.parent)],
                                env={"KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
                                     "HANDOFF_NAMESPACE": settings.namespace})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split() == ["held-out", "accuracy", "n", "old", "new", "change"]
    intent = next(line.split() for line in lines if line.startswith("intent"))
    assert intent[1] == str(done.old.labels["intent"].n_holdout) and len(intent) == 5
    assert intent[2] == f"{done.new.labels['intent'].accuracy:.3f}", "old: the model the first retraining made"


def test_the_eval_suite_passes_its_targets_with_the_embedded_model(crm, monkeypatch):
    monkeypatch.setenv("HANDOFF_CRM_MCP_URL", crm.url)
    monkeypatch.setenv("HANDOFF_CRM_MCP_TOKEN", "test")
    report = run_suite(load_workflow("lead_intake"))
    assert report.passed, report.table()
    assert {d.dataset: d.rows for d in report.datasets} == {"golden": 60, "edge": 20, "negative": 15, "adversarial": 8}


def test_a_ticket_reopened_after_a_decision_off_the_escalation_route_is_a_missed_escalation_row():
    workflow = load_workflow("support_ticket")
    ticket = tickets()[1]
    event = {k: v for k, v in ticket.items() if k != "expected"}
    answer = {"category": "how_to", "urgency": "medium", "confidence": 0.9, "reason": "asks how to switch keys"}
    prompt = PromptRef(name="support_ticket_classifier", version="2026-05-29.1")
    decision = Decision(event_id=event["event_id"], workflow=workflow.name, route="how_to", rule="routes[1]",
                        label="how_to", confidence=0.9, answer=orjson.dumps(answer).decode(),
                        event=orjson.dumps(event).decode(), prompt=prompt, model="embedded", decided_at_ms=1)
    result = {"event_id": event["event_id"], "workflow": workflow.name, "label": "how_to", "confidence": 0.9,
              "source": "model", "prompt": prompt, "decided_at_ms": 1, "outcome_source": "helpdesk",
              "outcome_at_ms": 5, "joined_at_ms": 6}
    reopened = Result(route="how_to", outcome_type="reopened", **result)
    [row] = evidence.rows(workflow, [reopened, Result(route="how_to", outcome_type="task_completed", **result)],
                          [decision])
    assert row["ticket"] == event["ticket"]
    assert {k: row["expected"][k] for k in ("category", "urgency")} == {"category": "how_to", "urgency": "high"}
    assert row["expected"]["evidence"]["evidence"] == "corrects"
    escalated = Result(route="escalation", outcome_type="reopened", **result)
    assert evidence.rows(workflow, [escalated], [decision]) == [], "reopened after an escalation: nothing missed"


OWNERS = {"owners": [{"owner_id": "OW-01", "services": ["cloud_migration", "data_platform"]},
                     {"owner_id": "OW-02", "services": ["training"]}]}


def test_the_lead_rules_and_the_completion_in_code():
    event = lead("unit", "C-1001", "DACH", budget=None)
    event["contact"] |= {"email": None, "phone": "+49 30 1234567"}
    assert leads.missing_information(lambda path: lookup(event, path)) == ["budget"], "a phone is contact enough"
    base = {"intent": "purchase", "service": "training", "urgency": "low", "review": False}
    owner_rule = leads.owner_covers_the_lead
    assert owner_rule(base | {"recommended_owner": "OW-02"}, event, {"owners": OWNERS}) is None
    assert owner_rule(base | {"recommended_owner": None}, event, {"owners": OWNERS}) == \
        "a purchase lead needs an owner: OW-02 cover DACH and training"
    assert owner_rule(base | {"recommended_owner": "OW-01"}, event, {"owners": OWNERS}) == \
        "recommended_owner OW-01 does not cover service training in DACH (who does: OW-02)"
    nobody = base | {"service": "security_audit", "recommended_owner": None}
    assert "needs review true" in owner_rule(nobody, event, {"owners": OWNERS})
    assert owner_rule(nobody | {"review": True}, event, {"owners": OWNERS}) is None
    assert owner_rule(base | {"intent": "spam", "recommended_owner": "OW-02"}, event, {"owners": OWNERS}) == \
        "a lead with intent spam gets no owner (recommended_owner OW-02)"
    assert "were not looked up" in owner_rule(base, event, {}), "no grounding: the owner cannot be checked, fail closed"

    inputs = {"lead.message": "Dear team,\nWe need a security audit before our renewal. Can you help?\nThx\nAnna",
              "lookups.owners.owners": OWNERS["owners"], "lookups.history.leads": [], "contact.phone": "[PHONE]"}
    completed = leads.complete({"intent": "purchase", "service": "security_audit", "urgency": "high"}, inputs)
    assert completed["summary"] == "We need a security audit before our renewal. Can you help?"
    assert (completed["recommended_owner"], completed["review"]) == (None, True), "nobody covers it: a person looks"
    assert completed["missing_information"] == ["name", "company", "budget", "timeline"]
    assert completed["next_action"] == "request_information"
