"""``handoff topics``: a workflow's topics as code — the engine's and one per route, derived; the trigger
and overrides from ``topics/<workflow>.yaml`` — applied to the broker, each kept as long as the
workflow's ``retention:`` needs."""

from __future__ import annotations

from typing import Annotated

import typer

from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, load, need_broker
from processors.kafka.broker import QUIET
from processors.kafka.topics import Action, apply, span
from processors.workflow.workflow import Workflow

app = typer.Typer(no_args_is_help=True, help="Topics as code: derived from the workflow, with topics/<workflow>.yaml.")


def reach(flow: Workflow) -> str:
    """The workflow's retention in one line: what every topic's retention follows from."""
    r = flow.retention
    spans = {name: span(round(seconds * 1000)) for name, seconds in (
        ("replay reach", r.replay_reach), ("report window", r.report_window), ("dedupe window", r.dedupe_window),
        ("effects kept", r.effects_kept))}
    return (f"{flow.name}: " + ", ".join(f"{name} {value}" for name, value in spans.items())
            + f" (retention: in {flow.folder / 'workflow.yaml'})")


@app.command("apply")
def topics_apply(workflow: WorkflowName, bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None,
                 dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan, change nothing.")] = False) -> None:
    """Create missing topics and raise retentions to what the workflow needs; report other drift without
    touching existing topics."""
    flow, conf = load(workflow, bootstrap, workflows_dir)
    need_broker(flow, conf)
    changes = apply(conf.admin(**QUIET), list(flow.topics.values()), dry_run=dry_run)
    typer.echo(reach(flow))
    for change in changes:
        typer.echo(("would " if dry_run and change.action in (Action.create, Action.alter) else "") + str(change))
    counts = {a: sum(c.action == a for c in changes) for a in Action}
    typer.echo(f"{'planned' if dry_run else 'applied'}: {counts[Action.create]} to create, {counts[Action.alter]} "
               f"retention raised, {counts[Action.ok]} unchanged, {counts[Action.drift]} drifted (not changed)")
