"""``handoff prompt``: prompt versions (files) and the labels that point at them, kept on the control topic."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Optional

import typer

from processors.cli.control import ChangedBy, Reason, echo_state
from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, control_store, fail
from processors.control.store import ControlStore
from processors.offline.promote import promote, rollback

app = typer.Typer(no_args_is_help=True, help="Prompt versions (files) and the labels that point at them "
                                             "(production, candidate…), kept on the control topic.")
Version = Annotated[str, typer.Argument(help="A prompt version: a file prompts/<prompt>/<version>.yaml.")]
Label = Annotated[str, typer.Option(help="The label to move.")]


def prompt_file(store: ControlStore, version: str) -> Path:
    try:
        store.workflow.prompt_spec_for(version)
    except ValueError as exc:  # a WorkflowError, or a file that does not load
        raise fail(str(exc))
    return store.workflow.prompt_dir / f"{version}.yaml"


@app.command("list")
def prompt_list(workflow: WorkflowName, bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Every version on disk: the labels pointing at it, its owner, rollback version and eval suite."""
    store = control_store(workflow, bootstrap, workflows_dir)
    state = store.current()
    for version in store.workflow.prompt_versions():
        spec = store.workflow.prompt_spec_for(version)
        labels = ",".join(label for label, v in sorted(state.labels.items()) if v == version) or "-"
        typer.echo(f"{version:<16} {labels:<22} owner {spec.owner}, rollback to {spec.rollback_version or '-'}, "
                   f"evals {spec.eval_suite or '-'}")
    echo_state(state)


@app.command("show")
def prompt_show(version: Version, workflow: WorkflowName, bootstrap: Bootstrap = None,
                workflows_dir: WorkflowsDir = None) -> None:
    """The version's file, as reviewed."""
    typer.echo(prompt_file(control_store(workflow, bootstrap, workflows_dir), version).read_text(), nl=False)


@app.command("diff")
def prompt_diff(old: Version, new: Version, workflow: WorkflowName, bootstrap: Bootstrap = None,
                workflows_dir: WorkflowsDir = None) -> None:
    """A unified diff of two versions' files."""
    store = control_store(workflow, bootstrap, workflows_dir)
    a, b = prompt_file(store, old), prompt_file(store, new)
    typer.echo("".join(difflib.unified_diff(a.read_text().splitlines(keepends=True),
                                            b.read_text().splitlines(keepends=True),
                                            fromfile=f"{store.workflow.prompt_spec.name}@{old}",
                                            tofile=f"{store.workflow.prompt_spec.name}@{new}")), nl=False)


@app.command("promote")
def prompt_promote(version: Version, workflow: WorkflowName, label: Label = "production",
                   force: Annotated[bool, typer.Option("--force", help="Promote even if its evals fail "
                                                                       "(needs --reason; recorded).")] = False,
                   reason: Reason = None, by: ChangedBy = None, bootstrap: Bootstrap = None,
                   workflows_dir: WorkflowsDir = None) -> None:
    """Run the version's eval suite; point the label at it only if every target is met (or --force)."""
    store = control_store(workflow, bootstrap, workflows_dir)
    prompt_file(store, version)
    try:
        state, report = promote(store, version, label=label, force=force, reason=reason, changed_by=by, progress=True)
    except ValueError as exc:  # a WorkflowError too
        raise fail(str(exc))
    typer.echo(report.table())
    if state is None:
        raise fail(f"refused: {version} misses its eval targets; {label} stays at "
                   f"{store.current().labels.get(label, '-')} (--force --reason TEXT to override)")
    echo_state(state)


@app.command("rollback")
def prompt_rollback(workflow: WorkflowName,
                    to: Annotated[Optional[str], typer.Option(help="Default: the rollback_version the current "
                                                                   "version's spec names.")] = None,
                    label: Label = "production", reason: Reason = None, by: ChangedBy = None,
                    bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Point the label back at the previous version, at once (no evals)."""
    store = control_store(workflow, bootstrap, workflows_dir)
    try:
        echo_state(rollback(store, to, label=label, reason=reason, changed_by=by))
    except ValueError as exc:  # a WorkflowError too
        raise fail(str(exc))
