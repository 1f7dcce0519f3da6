"""``handoff outcome``: a business outcome reported by hand, for the join stage to join to its decision."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, fail, load, need_broker
from processors.clock import now_ms
from processors.kafka.topics import Role
from processors.ops.outcomes import send_outcome
from processors.records import Outcome


def outcome(event_id: Annotated[str, typer.Argument(metavar="EVENT_ID", help="The decided event's id.")],
            outcome_type: Annotated[str, typer.Argument(metavar="TYPE", help="One of the workflow's outcomes.types, "
                                                                              "e.g. reopened, closed_won.")],
            workflow: WorkflowName = "support_ticket",
            value: Annotated[Optional[str], typer.Option(help="Free-form value: an amount, the edited text.")] = None,
            source: Annotated[str, typer.Option(help="Who reports it.")] = "handoff-cli",
            bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Report a business outcome by hand; the join stage joins it to its decision on <workflow>.results."""
    flow, conf = load(workflow, bootstrap, workflows_dir)
    topic = flow.spec(Role.outcomes).name
    need_broker(flow, conf, topic)
    try:
        send_outcome(flow, conf, Outcome(event_id=event_id, workflow=workflow, outcome_type=outcome_type, value=value,
                                         at_ms=now_ms(), source=source))
    except (ValueError, RuntimeError) as exc:
        raise fail(str(exc))
    typer.echo(f"sent {outcome_type} for {event_id} to {topic}")
