"""``handoff model``: retrain the embedded model on what reviewers corrected and outcomes showed."""

from __future__ import annotations

from typing import Annotated

import typer

from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, fail, load, need_broker
from processors.offline.training import TrainError, embedded, retrain
from processors.ops import corrections, evidence

app = typer.Typer(no_args_is_help=True, help="The embedded model: retrain it on corrections and outcomes.")

SOURCES = ("corrections", "outcomes")


@app.command("train")
def model_train(workflow: WorkflowName,
                with_: Annotated[str, typer.Option("--with", help=(
                    "What to learn from, comma-separated: corrections (reviewers' corrected answers), outcomes "
                    "(joined outcomes under the workflow's datasets.outcomes rules)."))] = "corrections,outcomes",
                bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Retrain on the held-out split's complement plus what was learned; print old and new held-out figures."""
    chosen = [name.strip() for name in with_.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SOURCES))
    if unknown or not chosen:
        raise fail(f"--with {with_!r}: name corrections, outcomes or both (comma-separated)")
    flow, conf = load(workflow, bootstrap, workflows_dir)
    try:
        embedded(flow)  # before anything is read: a model that cannot be retrained says so at once
    except TrainError as exc:
        raise fail(str(exc)) from None
    need_broker(flow, conf)
    sources = {}
    if "corrections" in chosen:
        sources["corrections"] = corrections.rows(flow, corrections.corrections(flow, conf))
    if "outcomes" in chosen:
        sources["outcomes"] = evidence.from_topics(flow, conf)
    typer.echo(retrain(flow, sources).table())
