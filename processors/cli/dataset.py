"""``handoff dataset``: datasets made from what people decided (the regression set evals read)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, load, need_broker
from processors.ops.corrections import export

app = typer.Typer(no_args_is_help=True, help="Datasets made from what people decided.")


class DatasetSource(StrEnum):
    corrections = "corrections"


@app.command("export")
def dataset_export(workflow: WorkflowName,
                   source: Annotated[DatasetSource, typer.Option("--from", help="corrections: every answer a "
                                                                               "reviewer corrected.")],
                   out: Annotated[Optional[Path], typer.Option(help="Default: workflows/<wf>/datasets/evals/"
                                                                    "regression.jsonl.")] = None,
                   bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Write the regression set evals read: the trigger event plus the expected answer, one per line."""
    flow, conf = load(workflow, bootstrap, workflows_dir)
    need_broker(flow, conf)
    done = export(flow, conf, out)
    typer.echo(f"wrote {done.rows} examples ({done.corrections} corrections) to {done.path}")
