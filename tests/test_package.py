"""handoff as a user gets it: an installed wheel, a project folder of their own, a scaffolded workflow.

The wheel is built from the checkout and installed into a fresh virtual environment outside it.
The environment takes its dependencies from the checkout's (a ``.pth`` line to its
site-packages: installing them again from PyPI would only slow the suite down), never the
checkout's own ``processors`` — that one is an editable install, whose finder a ``.pth`` path
does not load. ``handoff init`` then makes a project in a temporary folder and the scaffolded
workflow runs end to end against the test broker, from outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from processors import project
from processors.avro.contracts import default_store
from processors.cli.main import app
from processors.kafka.read import count
from processors.kafka.topics import Role
from processors.workflow.workflow import WorkflowError, load_workflow

CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment outside the checkout with the wheel installed; its ``bin``."""
    where = tmp_path_factory.mktemp("installed")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(where / "dist"),
                            str(CHECKOUT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    [wheel] = (where / "dist").glob("handoff-*.whl")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = subprocess.run([venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(target, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install",
                              "--no-deps", "--no-index", "-q", str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    return venv / "bin"


def outside(bin_dir: Path, cwd: Path, kafka, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """``handoff ARGS`` of the installed package, run in ``cwd`` with only the test's Kafka settings."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "HANDOFF_NAMESPACE": kafka.namespace}
    return subprocess.run([bin_dir / "handoff", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_the_installed_wheel_scaffolds_a_project_and_runs_its_workflow(installed, kafka, tmp_path, monkeypatch):
    located = subprocess.run([installed / "python", "-c", "import processors.project as p; print(p.SHIPPED)"],
                             cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(located).is_relative_to(installed.parent), "the installed package, not the checkout"

    folder = tmp_path / "flows"
    made = outside(installed, tmp_path, kafka, "init", str(folder), "--workflow", "orders")
    assert made.returncode == 0, made.stderr
    assert f"handoff --project {folder} run --workflow orders" in made.stdout
    shipped = outside(installed, tmp_path, kafka, "topics", "apply", "--workflow", "support_ticket", "--dry-run")
    assert shipped.returncode == 0 and "would create" in shipped.stdout, "the shipped examples load from the wheel"

    applied = outside(installed, tmp_path, kafka, "--project", str(folder), "topics", "apply", "--workflow", "orders")
    assert applied.returncode == 0, applied.stderr
    events = folder / "workflows/orders/datasets/events.jsonl"
    sent = outside(installed, tmp_path, kafka, "--project", str(folder), "produce", str(events), "--workflow", "orders")
    assert sent.returncode == 0 and "sent 6" in sent.stdout, sent.stderr

    monkeypatch.setenv(project.PROJECT_ENV, str(folder))  # this process reads the project's topics too
    workflow = load_workflow("orders", kafka.namespace)
    settled = [workflow.spec(Role.review).name] + [workflow.spec(Role.decisions, r).name for r in workflow.route_names]
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "HANDOFF_NAMESPACE": kafka.namespace, "HANDOFF_PROJECT": str(folder)}
    stages = subprocess.Popen([installed / "handoff", "run", "--workflow", "orders", "--metrics-port", "0"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while count(kafka, *settled) < 6 and time.monotonic() < deadline and stages.poll() is None:
            time.sleep(0.5)
        notified = count(kafka, workflow.spec(Role.notifications).name)
    finally:
        stages.send_signal(signal.SIGTERM)
        output, _ = stages.communicate(timeout=60)
    assert count(kafka, *settled) == 6, output
    assert notified >= 1, "decided requests ran their action"
    assert stages.returncode == 0, output


def test_the_scaffold_loads_evaluates_and_refuses_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv(project.PROJECT_ENV, "")  # none, and restored afterwards: --project sets it in this process
    runner = CliRunner()
    made = runner.invoke(app, ["init", str(tmp_path / "p"), "--workflow", "leads"])
    assert made.exit_code == 0, made.output
    again = runner.invoke(app, ["--project", str(tmp_path / "p"), "workflow", "new", "leads"])
    assert again.exit_code == 1 and "exists already" in again.output and "Traceback" not in again.output
    assert runner.invoke(app, ["--project", str(tmp_path / "p"), "workflow", "new", "Bad-Name"]).exit_code == 1
    monkeypatch.setenv(project.PROJECT_ENV, "")
    orphan = runner.invoke(app, ["workflow", "new", "more"])
    assert orphan.exit_code == 1 and "no project" in orphan.output
    evaluated = runner.invoke(app, ["--project", str(tmp_path / "p"), "eval", "--workflow", "leads",
                                    "--report", str(tmp_path / "report.json")])
    assert evaluated.exit_code == 0 and "PASSED" in evaluated.output, evaluated.output


@pytest.mark.parametrize("change, field", [
    (lambda w: w["trigger"].update(key="customer.idd"), "trigger.key: 'customer.idd' is not a field"),
    (lambda w: w["trigger"].update(event_id="eventid"), "trigger.event_id: 'eventid' is not a field"),
    (lambda w: w["actions"]["notify_team"]["arguments"].update(subject="event.message.title"),
     "actions.notify_team.arguments: 'message.title' is not a field"),
    (lambda w: w["trigger"].update(schema="orders/missing"), "trigger.schema"),
])
def test_a_path_the_trigger_schema_lacks_fails_at_load_naming_file_and_field(tmp_path, monkeypatch, change, field):
    monkeypatch.setenv(project.PROJECT_ENV, str(tmp_path))  # restored afterwards: init sets it in this process
    assert CliRunner().invoke(app, ["init", str(tmp_path / "p"), "-w", "orders"]).exit_code == 0
    path = tmp_path / "p/workflows/orders/workflow.yaml"
    raw = yaml.safe_load(path.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv(project.PROJECT_ENV, str(tmp_path / "p"))
    with pytest.raises(WorkflowError) as refused:
        load_workflow("orders")
    assert str(path) in str(refused.value) and field in str(refused.value)


def test_a_project_copy_of_an_engine_contract_that_differs_is_refused(tmp_path, monkeypatch):
    shutil.copytree(project.EXAMPLES / "schemas", tmp_path / "schemas")
    decision = tmp_path / "schemas/handoff/decision.avsc"
    forked = orjson.loads(decision.read_bytes())
    forked["doc"] = "a local edit"
    decision.write_bytes(orjson.dumps(forked))
    monkeypatch.setenv(project.PROJECT_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="decision.avsc differs from handoff's own contract"):
        default_store()
