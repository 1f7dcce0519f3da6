"""``handoff prompt``: versions are files, labels live on the control topic, and ``promote`` is gated
by the version's eval suite — a failing version is refused unless forced with a reason, which is
recorded. Run through the real command line against the real broker and the embedded model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from processors.cli.main import app
from processors.control.store import ControlStore
from processors.project import EXAMPLES
from processors.workflow.workflow import load_workflow
from tests.conftest import deployed

WORKFLOWS = EXAMPLES / "workflows"

NEW, OLD = "2026-05-29.1", "2026-05-20.3"
BROKEN = "2026-06-02.1"


@pytest.fixture
def workflows(tmp_path) -> Path:
    """support_ticket with one more prompt version, which sees only the customer's plan: the
    model cannot tell tickets apart, so the eval suite must fail it."""
    shutil.copytree(WORKFLOWS / "support_ticket", tmp_path / "support_ticket")
    prompts = tmp_path / "support_ticket/prompts/support_ticket_classifier"
    text = (prompts / f"{NEW}.yaml").read_text()
    template = text[text.index("template: |"):text.index("output_schema:")]
    broken = (text.replace(f'version: "{NEW}"', f'version: "{BROKEN}"')
              .replace("  - ticket.subject\n  - ticket.body\n  - ticket.channel\n", "")
              .replace("  - customer.arr\n", "")
              .replace(template, "template: Classify the ticket of a customer on the {{ customer.plan }} plan.\n")
              .replace(f'rollback_version: "{OLD}"', f'rollback_version: "{NEW}"'))
    (prompts / f"{BROKEN}.yaml").write_text(broken)
    assert yaml.safe_load(broken)["inputs"] == ["customer.plan"]
    return tmp_path


def handoff(kafka, workflows: Path, *args: str):
    result = CliRunner().invoke(app, [*args, "--workflow", "support_ticket", "--workflows-dir", str(workflows)],
                                env={"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                                     "HANDOFF_NAMESPACE": kafka.namespace})
    return result.exit_code, result.output


def test_list_show_and_diff_versions(kafka, workflows):
    deployed("support_ticket", kafka)
    code, out = handoff(kafka, workflows, "prompt", "list")
    assert code == 0, out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert list(lines)[:3] == [OLD, NEW, BROKEN], "oldest first"
    assert " production " in lines[NEW] and f"rollback to {OLD}" in lines[NEW]
    assert " - " in lines[OLD] and " - " in lines[BROKEN]
    assert "control version 0: initial" in out

    code, out = handoff(kafka, workflows, "prompt", "show", BROKEN)
    assert code == 0 and out == (workflows / f"support_ticket/prompts/support_ticket_classifier/{BROKEN}.yaml").read_text()
    code, out = handoff(kafka, workflows, "prompt", "diff", NEW, BROKEN)
    assert code == 0 and f"+++ support_ticket_classifier@{BROKEN}" in out
    assert "-  - ticket.body" in out and f'+rollback_version: "{NEW}"' in out and "-template: |" in out
    code, out = handoff(kafka, workflows, "prompt", "show", "1999-01-01.1")
    assert code == 1 and "no version '1999-01-01.1'" in out


def test_promote_refuses_a_failing_version_and_records_a_forced_one(kafka, workflows):
    deployed("support_ticket", kafka)
    store = ControlStore(kafka, load_workflow("support_ticket", kafka.namespace, workflows))

    code, out = handoff(kafka, workflows, "prompt", "promote", BROKEN)
    assert code == 1 and "refused" in out and "FAILED: missed" in out and "category_accuracy" in out
    assert store.history() == [], "nothing published"
    code, out = handoff(kafka, workflows, "prompt", "promote", BROKEN, "--force")
    assert code == 1 and "--reason" in out and store.history() == []

    reason = "hotfix for the outage; evals fixed in the next version"
    code, out = handoff(kafka, workflows, "prompt", "promote", BROKEN, "--force", "--reason", reason, "--by", "ana")
    assert code == 0, out
    forced = store.current()
    assert (forced.version, forced.labels["production"], forced.forced, forced.reason, forced.changed_by) == (
        1, BROKEN, True, reason, "ana")
    assert forced.change == f"promote {BROKEN} to production past failing evals"

    code, out = handoff(kafka, workflows, "prompt", "rollback", "--reason", "forced version misroutes")
    assert code == 0, out
    rolled = store.current()
    assert (rolled.version, rolled.labels["production"], rolled.forced) == (2, NEW, False)
    assert rolled.change == f"rollback production from {BROKEN} to {NEW}"

    code, out = handoff(kafka, workflows, "prompt", "promote", OLD, "--label", "candidate")
    assert code == 0 and "PASSED" in out, out
    passed = store.current()
    assert passed.labels == {"production": NEW, "candidate": OLD} and not passed.forced
    code, out = handoff(kafka, workflows, "prompt", "list")
    assert " candidate " in next(line for line in out.splitlines() if line.startswith(OLD))
