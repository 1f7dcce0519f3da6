"""``handoff review``: the review queue, what people must decide; the first verdict on an item wins."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import orjson
import typer

from processors.cli.params import Bootstrap, ViewsUrl, WorkflowName, WorkflowsDir, fail, load, need_broker, views
from processors.ops.review_queue import (
    InvalidVerdict,
    ReviewQueue,
    UnknownItem,
    VerdictRefused,
    context,
    line,
    next_step,
    parse_fields,
)
from processors.records import VerdictKind
from processors.signing import SigningError
from processors.views.catch_up import ViewsBehind
from processors.views.store import ViewsUnavailable

app = typer.Typer(no_args_is_help=True, help="The review queue: what people must decide. The first verdict "
                                             "on an item wins; a later one is refused. Served from the views "
                                             "(--views-url), caught up with the topics first.")
ReviewId = Annotated[str, typer.Argument(help="The review id, as `handoff review list` prints it.")]
Reviewer = Annotated[Optional[str], typer.Option(help=(
    "Who decides (default: $HANDOFF_IDENTITY, else $HANDOFF_REVIEWER, else the OS user); the verdict is signed "
    "for them with $HANDOFF_SIGNING_KEY, and their roles ($HANDOFF_ROLES) must allow it."))]
OptionalReason = Annotated[Optional[str], typer.Option(help="Why (optional).")]


def review_queue(workflow: str, bootstrap: str | None, workflows_dir: Path | None,
                 views_url: str | None = None) -> ReviewQueue:
    flow, conf = load(workflow, bootstrap, workflows_dir)
    need_broker(flow, conf)
    return ReviewQueue(flow, conf, views(views_url))


def decide(queue: ReviewQueue, review_id: str, kind: VerdictKind, reviewer: str | None, fields: list[str] = (),
           reason: str | None = None) -> None:
    """Write a verdict; exit 1 with the reason when it is refused or void."""
    try:
        verdict = queue.decide(review_id, kind, reviewer=reviewer, fields=parse_fields(list(fields)), reason=reason)
    except (InvalidVerdict, SigningError, UnknownItem, VerdictRefused, ViewsBehind, ViewsUnavailable) as exc:
        raise fail(str(exc))
    typer.echo(f"{kind} of {review_id} by {verdict.reviewer}: recorded, first verdict. {next_step(verdict)}")


@app.command("list")
def review_list(workflow: WorkflowName, bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None,
                views_url: ViewsUrl = None) -> None:
    """Open items, event_rule first, then oldest first: id, reason, age, the model's label (or the action), the event."""
    queue = review_queue(workflow, bootstrap, workflows_dir, views_url)
    try:
        items = queue.open_items()
    except (ViewsBehind, ViewsUnavailable) as exc:
        raise fail(str(exc))
    for item in items:
        typer.echo(line(queue.workflow, item))
    typer.echo(f"{len(items)} open")
    for where in sorted(queue.skipped):
        typer.secho(f"skipped, not a review item or verdict: {where}", fg=typer.colors.YELLOW, err=True)


@app.command("show")
def review_show(review_id: ReviewId, workflow: WorkflowName, bootstrap: Bootstrap = None,
                workflows_dir: WorkflowsDir = None, views_url: ViewsUrl = None) -> None:
    """The whole context of an item as JSON: event, answer, errors, action, and its verdict if any."""
    try:
        item, decided = review_queue(workflow, bootstrap, workflows_dir, views_url).get(review_id)
    except (UnknownItem, ViewsBehind, ViewsUnavailable) as exc:
        raise fail(str(exc))
    typer.echo(orjson.dumps(context(item, decided), option=orjson.OPT_INDENT_2).decode())


@app.command("approve")
def review_approve(review_id: ReviewId, workflow: WorkflowName, reviewer: Reviewer = None,
                   reason: OptionalReason = None, bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None,
                   views_url: ViewsUrl = None,
                   set_: Annotated[list[str], typer.Option("--set", help=(
                       "An action's adjustable argument=value (e.g. amount=40); repeat."))] = ()) -> None:
    """The model's answer stands (or the action may run, with the adjustable arguments --set changes)."""
    decide(review_queue(workflow, bootstrap, workflows_dir, views_url), review_id, VerdictKind.approve, reviewer,
           list(set_), reason=reason)


@app.command("correct")
def review_correct(review_id: ReviewId, workflow: WorkflowName,
                   set_: Annotated[list[str], typer.Option("--set", help="field=value on the model's answer; repeat.")],
                   reviewer: Reviewer = None, reason: OptionalReason = None, bootstrap: Bootstrap = None,
                   workflows_dir: WorkflowsDir = None, views_url: ViewsUrl = None) -> None:
    """Set answer fields; checked against the prompt's output schema and the workflow's rules."""
    decide(review_queue(workflow, bootstrap, workflows_dir, views_url), review_id, VerdictKind.correct, reviewer, set_, reason)


@app.command("reject")
def review_reject(review_id: ReviewId, workflow: WorkflowName,
                  reason: Annotated[str, typer.Option(help="Why: recorded with the verdict.")],
                  reviewer: Reviewer = None, bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None,
                  views_url: ViewsUrl = None) -> None:
    """Close the item: nothing continues."""
    decide(review_queue(workflow, bootstrap, workflows_dir, views_url), review_id, VerdictKind.reject, reviewer, reason=reason)
