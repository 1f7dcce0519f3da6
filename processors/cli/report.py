"""``handoff report``: per prompt version, how a workflow did (defined in processors/ops/report.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from processors.cli.params import Bootstrap, ViewsUrl, WorkflowName, WorkflowsDir, fail, load, need_broker, views
from processors.ops.report import build, parse_since
from processors.views.catch_up import ViewsBehind
from processors.views.store import ViewsUnavailable


def report(workflow: WorkflowName,
           since: Annotated[Optional[str], typer.Option(help="Only events settled since: an ISO time (UTC unless it "
                                                             "names a zone) or a span back from now: 30m, 2h, 7d.")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
           bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None, views_url: ViewsUrl = None) -> None:
    """Per prompt version: automation, review, override and schema-failure rates, escalation recall, dead
    letters, p50/p95 latency, tokens and cost per completed workflow (defined in processors/ops/report.py),
    from the views (--views-url), caught up with the topics first."""
    flow, conf = load(workflow, bootstrap, workflows_dir)
    try:
        since_ms = parse_since(since) if since else None
    except ValueError as exc:
        raise fail(str(exc))
    need_broker(flow, conf)
    try:
        result = build(flow, conf, since_ms, views(views_url))
    except (ViewsBehind, ViewsUnavailable) as exc:
        raise fail(str(exc))
    typer.echo(result.model_dump_json(indent=2) if as_json else result.render())
