"""``handoff control``: what a workflow's running stages obey, changed on the control topic, no restart."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from processors.cli.params import Bootstrap, ViewsUrl, WorkflowName, WorkflowsDir, control_store, fail, views
from processors.control.store import ControlRefused
from processors.records import ControlState, Mode
from processors.signing import SigningError
from processors.views.control_history import control_history

app = typer.Typer(no_args_is_help=True, help="What a workflow's running stages obey — rollout mode, kill "
                                             "switch, thresholds — in force within a second, no restart.")
Reason = Annotated[Optional[str], typer.Option(help="Why: recorded on the control state.")]
ChangedBy = Annotated[Optional[str], typer.Option("--by", help=(
    "Who makes the change (default: $HANDOFF_IDENTITY, else the OS user); signed with $HANDOFF_SIGNING_KEY."))]
Bound = Annotated[str, typer.Argument(help="0..1, or 'default' (the workflow file's).")]


def echo_state(state: ControlState) -> None:
    typer.echo(f"control version {state.version}: {state.change} (by {state.changed_by}"
               + (f", forced: {state.reason}" if state.forced else f": {state.reason}" if state.reason else "") + ")")


def change_control(workflow: str, bootstrap: str | None, workflows_dir: Path | None, change: str,
                   reason: str | None, by: str | None, **fields) -> None:
    store = control_store(workflow, bootstrap, workflows_dir)
    try:
        echo_state(store.publish(change, changed_by=by, reason=reason, **fields))
    except (ControlRefused, SigningError) as exc:
        raise fail(str(exc))


def bound(value: str, name: str) -> float | None:
    """A 0..1 bound, or None for 'default' (the workflow file's value)."""
    if value == "default":
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number <= 1:
        raise fail(f"{name}: {value!r} is neither a number from 0 to 1 nor 'default'")
    return number


@app.command("show")
def control_show(workflow: WorkflowName, history: Annotated[bool, typer.Option(help="Every change, oldest first "
                                                                                   "(from the views).")] = False,
                 bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None, views_url: ViewsUrl = None) -> None:
    """The state in force, as JSON (the workflow file's defaults when nothing was published)."""
    store = control_store(workflow, bootstrap, workflows_dir)
    states = control_history(store.workflow, store.settings, views(views_url)) if history else [store.current()]
    for state in states:
        typer.echo(state.model_dump_json())


@app.command("mode")
def control_mode(mode: Annotated[Mode, typer.Argument(help="shadow, suggest, partial or full.")],
                 workflow: WorkflowName, reason: Reason = None, by: ChangedBy = None, bootstrap: Bootstrap = None,
                 workflows_dir: WorkflowsDir = None) -> None:
    """Set the rollout mode (processors/stages/route.py says what each does)."""
    change_control(workflow, bootstrap, workflows_dir, f"mode {mode}", reason, by, mode=mode)


@app.command("kill-switch")
def control_kill_switch(switch: Annotated[Literal["on", "off"], typer.Argument(help="on: no model calls, new "
                                                                                  "items to review.")],
                        workflow: WorkflowName, reason: Reason = None, by: ChangedBy = None,
                        bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Stop (on) or resume (off) model calls; while on, every new trigger goes to review."""
    change_control(workflow, bootstrap, workflows_dir, f"kill switch {switch}", reason, by,
                   kill_switch=switch == "on")


@app.command("threshold")
def control_threshold(value: Bound, workflow: WorkflowName, reason: Reason = None, by: ChangedBy = None,
                      bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Set the review threshold: less confident answers go to a person."""
    change_control(workflow, bootstrap, workflows_dir, f"review threshold {value}", reason, by,
                   review_threshold=bound(value, "threshold"))


@app.command("approval-risk")
def control_approval_risk(value: Bound, workflow: WorkflowName, reason: Reason = None, by: ChangedBy = None,
                          bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Set the approval risk: riskier actions wait for a person."""
    change_control(workflow, bootstrap, workflows_dir, f"approval risk {value}", reason, by,
                   approval_risk=bound(value, "approval-risk"))
