"""Workflows are files: a mistake is reported with the file and the field; the CLI reads topics back."""

import shutil
from pathlib import Path

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from processors.cli.main import app
from processors.kafka.topics import Role
from processors.project import EXAMPLES
from processors.workflow.workflow import WorkflowError, load_workflow
from tests.conftest import deployed, produce, tickets

WORKFLOWS = EXAMPLES / "workflows"


@pytest.fixture
def editable(tmp_path) -> Path:
    """A copy of the support_ticket workflow folder to break on purpose."""
    shutil.copytree(WORKFLOWS / "support_ticket", tmp_path / "support_ticket",
                    ignore=shutil.ignore_patterns("datasets"))
    return tmp_path


def edit(root: Path, change) -> None:
    path = root / "support_ticket" / "workflow.yaml"
    raw = yaml.safe_load(path.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw))


def test_both_shipped_workflows_load():
    assert load_workflow("support_ticket").label == "category"
    assert load_workflow("banking77").label == "intent"


@pytest.mark.parametrize("change, message", [
    (lambda w: w.update(review_threshold=1.5), "review_threshold"),
    (lambda w: w["model"].update(kind="oracle"), "model"),
    (lambda w: w.update(rules=["customer_is_always_right"]), "unknown rule 'customer_is_always_right'"),
    (lambda w: w["actions"]["notify_team"].update(topic="support_ticket.nowhere"),
     "actions.notify_team.topic: 'support_ticket.nowhere' is not a topic of this workflow"),
    (lambda w: w["routes"][1].update(actions=["refund_everyone"]), "unknown action 'refund_everyone'"),
    (lambda w: w.update(grants=["teams:notify"]), "actions.open_escalation.scope"),
    (lambda w: w.update(prompt="support_ticket_classifier@1999-01-01.1"), "1999-01-01.1.yaml does not exist"),
])
def test_a_broken_workflow_names_the_file_and_the_field(editable, change, message):
    edit(editable, change)
    with pytest.raises(WorkflowError) as failure:
        load_workflow("support_ticket", root=editable)
    assert str(editable / "support_ticket" / "workflow.yaml") in str(failure.value)
    assert message in str(failure.value)


def test_a_new_route_gets_its_decisions_topic(editable):
    """Decision topics are derived from the routes: adding a route is editing workflow.yaml only."""
    edit(editable, lambda w: w["routes"].insert(0, {"name": "vip", "when": [{"event.customer.plan": "enterprise"}]}))
    workflow = load_workflow("support_ticket", root=editable)
    assert workflow.route_names[0] == "vip"
    assert workflow.decide({}, {"customer": {"plan": "enterprise"}})[1] == "vip"
    assert workflow.topic(Role.decisions, "vip") in workflow.topics


def test_a_broken_prompt_names_the_prompt_file(editable):
    prompt = editable / "support_ticket/prompts/support_ticket_classifier/2026-05-29.1.yaml"
    raw = yaml.safe_load(prompt.read_text())
    raw["template"] += "{{ customer.email }}"
    prompt.write_text(yaml.safe_dump(raw))
    with pytest.raises(WorkflowError, match="undeclared inputs"):
        load_workflow("support_ticket", root=editable)


def test_tail_prints_records_decoded_as_json(kafka):
    workflow = deployed("support_ticket", kafka)
    ticket = tickets()[0]
    produce(kafka, workflow, [ticket], raw=[(b"k", b"garbage")])
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "HANDOFF_NAMESPACE": kafka.namespace}
    result = CliRunner().invoke(app, ["tail", "support_ticket.triggers"], env=env)
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in result.output.splitlines()]
    decoded = [line for line in lines if "value" in line]
    undecoded = [line for line in lines if "undecoded" in line]
    assert [line["value"]["event_id"] for line in decoded] == [ticket["event_id"]]
    assert len(undecoded) == 1 and "C3 01" in undecoded[0]["undecoded"]["error"]
