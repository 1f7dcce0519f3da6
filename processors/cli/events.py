"""``handoff produce`` and ``handoff tail``: records into a workflow's trigger topic, and out of any of its topics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import orjson
import typer

from processors.avro.serde import AvroSerde
from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, fail, load, need_broker
from processors.kafka.broker import QUIET
from processors.kafka.read import IncompleteRead, ReadError, describe, follow, records
from processors.kafka.topics import Role
from processors.ops.produce import produce_file


def produce(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON Lines, one trigger event a line.")],
            workflow: WorkflowName = "support_ticket", bootstrap: Bootstrap = None,
            schema: Annotated[Optional[str], typer.Option(help="Writer contract, e.g. support_ticket/created.v1; default: the topic's latest.")] = None,
            workflows_dir: WorkflowsDir = None) -> None:
    """Send trigger events, Avro-encoded and keyed; name bad lines by number and exit 1 if there were any."""
    flow, conf = load(workflow, bootstrap, workflows_dir)
    trigger = flow.spec(Role.triggers)
    need_broker(flow, conf, trigger.name)
    serde = AvroSerde(schema or trigger.value_schema, registry_url=conf.schema_registry_url)
    summary = produce_file(file, conf.producer(**QUIET), trigger.name, serde, trigger.key_field)
    for bad in summary.rejected:
        typer.secho(f"line {bad.line}: rejected: {bad.reason}", fg=typer.colors.YELLOW, err=True)
    for bad in summary.failed:
        typer.secho(f"line {bad.line}: not delivered: {bad.reason}", fg=typer.colors.RED, err=True)
    typer.echo(f"sent {summary.sent} to {trigger.name}, rejected {len(summary.rejected)}, failed {len(summary.failed)}")
    if summary.failed or summary.rejected:
        raise typer.Exit(1)


def tail(topic: Annotated[str, typer.Argument(help="Declared topic name, e.g. support_ticket.review.")],
         follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records.")] = False,
         timeout: Annotated[float, typer.Option(help="Seconds to read the topic to its end (without --follow); "
                                                     "short of it, exit 1 saying how far it got.")] = 30.0,
         bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Print a handoff topic's records decoded as JSON, one per line: all of them, or exit 1 saying where it stopped."""
    flow, conf = load(topic.split(".")[0], bootstrap, workflows_dir)
    spec = flow.topics.get(topic)
    if spec is None:
        raise fail(f"{topic} is not a topic of {flow.name} (its topics: {', '.join(sorted(flow.topics))})")
    need_broker(flow, conf, spec.name)
    serde = spec.serde(conf) if spec.value_schema else None
    try:
        for msg in follow(conf, spec.name) if follow_ else records(conf, spec.name, timeout):
            typer.echo(orjson.dumps(describe(msg, serde)).decode())
    except (IncompleteRead, ReadError) as exc:
        raise fail(str(exc))
