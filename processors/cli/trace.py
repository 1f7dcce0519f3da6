"""``handoff trace EVENT_ID``: every step of one event across its chain of workflows, in time order."""

from __future__ import annotations

from typing import Annotated

import typer

from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, fail, load, need_broker
from processors.ops.chain_trace import chain_of, line, steps


def trace(event_id: Annotated[str, typer.Argument(help="The event id (the run id of every step).")],
          workflow: WorkflowName, bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Stages, model calls, lookups and tool calls, reviews and actions of one event, across every workflow
    chained to this one (parents and children), in time order."""
    flow, conf = load(workflow, bootstrap, workflows_dir)
    need_broker(flow, conf)
    chain = chain_of(flow, workflows_dir)
    found = steps(conf, chain, event_id)
    if not found:
        raise fail(f"no step of {event_id} in the traces of {', '.join(w.name for w in chain)}")
    for name, step in found:
        typer.echo(line(name, step, found[0][1].at_ms))
    typer.echo(f"{len(found)} steps in {len({name for name, _ in found})} workflow(s) of the chain "
               f"{' -> '.join(w.name for w in chain)}")
