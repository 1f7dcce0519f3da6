"""``handoff topics``: a workflow's topics as code — the engine's and one per route, derived; the trigger
and overrides from ``topics/<workflow>.yaml`` — applied to the broker."""

from __future__ import annotations

from typing import Annotated

import typer

from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, load, need_broker
from processors.kafka.broker import QUIET
from processors.kafka.topics import apply

app = typer.Typer(no_args_is_help=True, help="Topics as code: derived from the workflow, with topics/<workflow>.yaml.")


@app.command("apply")
def topics_apply(workflow: WorkflowName, bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None,
                 dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan, change nothing.")] = False) -> None:
    """Create missing topics; report drift without touching existing ones."""
    flow, conf = load(workflow, bootstrap, workflows_dir)
    need_broker(flow, conf)
    changes = apply(conf.admin(**QUIET), list(flow.topics.values()), dry_run=dry_run)
    for change in changes:
        typer.echo(("would " if dry_run and change.action == "create" else "") + str(change))
    counts = {a: sum(c.action == a for c in changes) for a in ("create", "ok", "drift")}
    typer.echo(f"{'planned' if dry_run else 'applied'}: {counts['create']} to create, "
               f"{counts['ok']} unchanged, {counts['drift']} drifted (not changed)")
