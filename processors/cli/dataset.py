"""``handoff dataset``: datasets made from what people decided and what became of decisions."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, load, need_broker
from processors.ops import corrections, evidence

app = typer.Typer(no_args_is_help=True, help="Datasets made from what people decided and what became of decisions.")


class DatasetSource(StrEnum):
    corrections = "corrections"
    outcomes = "outcomes"


@app.command("export")
def dataset_export(workflow: WorkflowName,
                   source: Annotated[DatasetSource, typer.Option("--from", help=(
                       "corrections: every answer a reviewer corrected (the evals' regression set); outcomes: the "
                       "joined outcomes the workflow's datasets.outcomes rules read as evidence."))],
                   out: Annotated[Optional[Path], typer.Option(help=(
                       "Default: workflows/<wf>/datasets/evals/regression.jsonl (corrections), "
                       "workflows/<wf>/datasets/outcomes.jsonl (outcomes).")) ] = None,
                   bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Write a dataset: the trigger event plus the expected answer, one per line."""
    flow, conf = load(workflow, bootstrap, workflows_dir)
    need_broker(flow, conf)
    if source == DatasetSource.corrections:
        done = corrections.export(flow, conf, out)
        typer.echo(f"wrote {done.rows} examples ({done.corrections} corrections) to {done.path}")
        return
    path, rows = evidence.export(flow, conf, out)
    typer.echo(f"wrote {rows} examples (outcomes under {len(flow.datasets.outcomes)} rule(s)) to {path}")
