"""Errors a person can read: each bad start of a command prints one line that says what is wrong
and what to do, exits non-zero, and shows no traceback and no librdkafka log.

The broker-down cases run the command in a subprocess (librdkafka writes to the process's stderr,
which CliRunner cannot see) against 127.0.0.1:1, where nothing listens; the others run through
CliRunner against the real broker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from processors.actions.webhook import MissingSecret, secret_from_env
from processors.cli.main import app
from processors.control.watcher import ControlWatcher
from processors.kafka.settings import KafkaSettings
from processors.runtime.runtime import BrokerUnavailable
from processors.workflow.workflow import load_workflow
from tests.conftest import WORKFLOWS, deployed, tickets

NOWHERE = "127.0.0.1:1"


def handoff(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "processors.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": NOWHERE, **(env or {})})


def one_clear_line(output: str) -> str:
    """The message, asserted to be one line with no traceback or librdkafka log in it."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output and "%3|" not in output and "rdkafka" not in output, output
    return lines[0]


def events_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def bare(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "expected"}


# ---- broker unreachable --------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["topics", "apply", "--workflow", "support_ticket"],
                                  ["produce", "EVENTS"],
                                  ["run", "--workflow", "support_ticket"],
                                  ["tail", "support_ticket.review"]])
def test_no_broker_is_one_line_naming_the_address(tmp_path, args):
    events = events_file(tmp_path, json.dumps(bare(tickets()[0])))
    result = handoff(*[str(events) if a == "EVENTS" else a for a in args])
    assert result.returncode == 1
    line = one_clear_line(result.stderr)
    assert f"no Kafka broker answers at {NOWHERE}" in line and "asked for its topics" in line
    assert "handoff kafka up" in line
    assert result.stdout == ""


def test_the_control_watcher_raises_broker_unavailable_without_a_broker():
    """A pipeline's first read of the broker is the control topic: it says so in the documented error."""
    workflow = load_workflow("support_ticket")
    with pytest.raises(BrokerUnavailable, match=f"no Kafka broker at {NOWHERE} answered when reading the control"):
        ControlWatcher(KafkaSettings(bootstrap_servers=NOWHERE), workflow).start()


# ---- topics not created --------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["produce", "EVENTS"], ["tail", "support_ticket.review"]])
def test_a_missing_topic_says_to_apply_the_topics(kafka, tmp_path, monkeypatch, args):
    monkeypatch.setenv("HANDOFF_NAMESPACE", kafka.namespace)
    events = events_file(tmp_path, json.dumps(bare(tickets()[0])))
    result = CliRunner().invoke(app, [*[str(events) if a == "EVENTS" else a for a in args],
                                      "--bootstrap", kafka.bootstrap_servers])
    assert result.exit_code == 1
    line = one_clear_line(result.output)
    assert "does not exist" in line and "handoff topics apply --workflow support_ticket" in line


# ---- unknown workflow ----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["topics", "apply", "--workflow", "nosuch"],
                                  ["produce", "EVENTS", "--workflow", "nosuch"]])
def test_an_unknown_workflow_lists_the_known_ones(tmp_path, args):
    events = events_file(tmp_path, "{}")
    result = CliRunner().invoke(app, [str(events) if a == "EVENTS" else a for a in args])
    assert result.exit_code == 1
    line = one_clear_line(result.output)
    known = sorted(p.parent.name for p in WORKFLOWS.glob("*/workflow.yaml"))
    assert "no workflow 'nosuch'" in line and f"known: {known}" in line


def test_a_workflows_dir_without_the_workflow_never_falls_back_to_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDOFF_WORKFLOWS_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["control", "show", "--workflow", "support_ticket"])
    assert result.exit_code == 1
    assert f"{tmp_path}/support_ticket/workflow.yaml does not exist" in one_clear_line(result.output)


# ---- files that are not YAML: file, line and column ----------------------------------------------


def _break(path: Path) -> int:
    """Put a YAML syntax error on a line of its own; returns that line's number (1-based)."""
    lines = path.read_text().splitlines()
    lines.insert(3, "broken: [unclosed: {")
    path.write_text("\n".join(lines) + "\n")
    return 4


@pytest.mark.parametrize("file", ["workflows/support_ticket/workflow.yaml",
                                  "workflows/support_ticket/prompts/support_ticket_classifier/2026-05-29.1.yaml",
                                  "topics/support_ticket.yaml"])
def test_a_yaml_syntax_error_names_file_line_and_column(project, file):
    path = project / file
    line = _break(path)
    result = CliRunner().invoke(app, ["--project", str(project), "topics", "apply", "--workflow", "support_ticket",
                                      "--dry-run"])
    assert result.exit_code == 1
    message = one_clear_line(result.output)
    assert message.startswith(f"{path}: line ") and "not valid YAML" in message
    assert int(message.split(": line ")[1].split()[0]) >= line  # the parser notices at or after the bad line


def test_a_project_without_the_workflow_never_falls_back_to_the_shipped_one(project):
    shutil.rmtree(project / "workflows/support_ticket")
    result = CliRunner().invoke(app, ["--project", str(project), "topics", "apply", "--workflow", "support_ticket"])
    assert result.exit_code == 1
    line = one_clear_line(result.output)
    assert f"{project}/workflows/support_ticket/workflow.yaml does not exist (known: [])" in line


# ---- produce: every message numbers the file's lines, and names fields by their path ------------


def test_produce_names_the_missing_field_and_exits_1_after_sending_the_good_lines(kafka, tmp_path, monkeypatch):
    deployed("support_ticket", kafka)
    good = bare(tickets()[0])
    no_plan = {**good, "customer": {k: v for k, v in good["customer"].items() if k != "plan"}}
    events = events_file(tmp_path, json.dumps(good), json.dumps(no_plan), '{"event": x}')
    monkeypatch.setenv("HANDOFF_NAMESPACE", kafka.namespace)
    result = CliRunner().invoke(app, ["produce", str(events), "--bootstrap", kafka.bootstrap_servers])
    assert result.exit_code == 1, result.output
    assert "line 2: rejected: does not match support_ticket/created.v2: customer.plan: missing (string)" in result.output
    assert "line 3: rejected: not JSON at column 11" in result.output  # the file's line 3, not the parser's "line 1"
    assert "sent 1 to" in result.output and "rejected 2" in result.output


# ---- a declared secret that is not set ------------------------------------------------------------


def test_secret_from_env():
    assert secret_from_env("notify", None) is None
    with pytest.raises(MissingSecret, match="action notify: its secret_env HANDOFF_TEST_UNSET_SECRET is not set"):
        secret_from_env("notify", "HANDOFF_TEST_UNSET_SECRET")


def test_an_unset_secret_stops_the_execute_stage_at_start(kafka, monkeypatch):
    deployed("support_ticket", kafka)
    monkeypatch.setenv("HANDOFF_NAMESPACE", kafka.namespace)
    monkeypatch.setenv("HANDOFF_WEBHOOK_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("HANDOFF_WEBHOOK_SECRET", raising=False)
    result = CliRunner().invoke(app, ["run", "--workflow", "support_ticket", "--stage", "execute",
                                      "--bootstrap", kafka.bootstrap_servers])
    assert result.exit_code == 1
    assert "secret_env HANDOFF_WEBHOOK_SECRET is not set" in result.output
    assert "Traceback" not in result.output
