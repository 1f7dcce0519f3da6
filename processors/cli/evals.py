"""``handoff eval``: a prompt version's eval suite, offline; the gate ``prompt promote`` applies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from processors.actions.mcp import MissingSetting
from processors.cli.params import WorkflowName, WorkflowsDir, fail
from processors.offline.evals import REPORTS_DIR, EvalError, run_suite
from processors.workflow.workflow import WorkflowError, load_workflow


def eval_(workflow: WorkflowName,
          prompt_version: Annotated[Optional[str], typer.Option(help="The version to evaluate (default: the "
                                                                     "workflow file's).")] = None,
          dataset: Annotated[Optional[list[str]], typer.Option(help="Run only this dataset of the suite "
                                                                    "(repeatable): a look, not a gate.")] = None,
          report: Annotated[Optional[Path], typer.Option(help="Where the JSON report goes (default: "
                                                              ".local/evals/<workflow>-<version>.json).")] = None,
          workflows_dir: WorkflowsDir = None) -> None:
    """Run a prompt version's eval suite offline; print metric, target, value, pass; exit 1 on any miss."""
    try:
        flow = load_workflow(workflow, root=workflows_dir)
        flow = flow.with_prompt(prompt_version) if prompt_version else flow
        result = run_suite(flow, datasets=dataset, progress=True)
    except (WorkflowError, EvalError, MissingSetting) as exc:  # MissingSetting: a grounded workflow's tool server
        raise fail(str(exc))
    path = report or REPORTS_DIR / f"{workflow}-{result.prompt.version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.to_json())
    typer.echo(result.table())
    typer.echo(f"report: {path}")
    if not result.passed:
        raise typer.Exit(1)
