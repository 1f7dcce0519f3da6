"""The ``handoff`` command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import orjson
import typer

from processors import localkafka
from processors.kafka import KafkaSettings
from processors.runtime import Guarantee, RuntimeOptions
from processors.topics import apply as apply_topics
from processors.topics import load_topics

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="handoff: AI model outputs to governed business actions, on Kafka.")
kafka_app = typer.Typer(no_args_is_help=True, help="A local single-node Kafka broker on the JVM (no Docker).")
topics_app = typer.Typer(no_args_is_help=True, help="Topics as code: topics/<workflow>.yaml.")
app.add_typer(kafka_app, name="kafka")
app.add_typer(topics_app, name="topics")

Bootstrap = Annotated[Optional[str], typer.Option("--bootstrap", "-b", envvar="KAFKA_BOOTSTRAP_SERVERS",
                                                  help="Kafka bootstrap servers.")]
WorkflowName = Annotated[str, typer.Option("--workflow", "-w", help="Workflow name (workflows/<name>/, topics/<name>.yaml).")]
DataDir = Annotated[Path, typer.Option(help="Where the broker keeps its data, pid and logs (git-ignored).")]


def settings(bootstrap: str | None) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=bootstrap) if bootstrap else KafkaSettings()


def fail(message: str) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(1)


@kafka_app.command("up")
def kafka_up(data_dir: DataDir = localkafka.DEFAULT_DATA_DIR, port: int = localkafka.DEFAULT_PORT,
             timeout: float = 120.0) -> None:
    """Start the broker (or find it running) and wait until it answers."""
    try:
        bootstrap = localkafka.LocalKafka(data_dir, port).start(timeout)
    except localkafka.LocalKafkaError as exc:
        raise fail(str(exc))
    typer.echo(f"kafka is up at {bootstrap} (data in {data_dir})")


@kafka_app.command("down")
def kafka_down(data_dir: DataDir = localkafka.DEFAULT_DATA_DIR) -> None:
    """Stop the broker started by ``kafka up``."""
    stopped = localkafka.LocalKafka(data_dir).stop()
    typer.echo("kafka stopped" if stopped else "kafka was not running")


@topics_app.command("apply")
def topics_apply(workflow: WorkflowName, bootstrap: Bootstrap = None,
                 dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan, change nothing.")] = False) -> None:
    """Create missing topics; report drift without touching existing ones."""
    conf = settings(bootstrap)
    specs = list(load_topics(workflow, conf.namespace).values())
    changes = apply_topics(conf.admin(), specs, dry_run=dry_run)
    for change in changes:
        typer.echo(("would " if dry_run and change.action == "create" else "") + str(change))
    counts = {a: sum(c.action == a for c in changes) for a in ("create", "ok", "drift")}
    typer.echo(f"{'planned' if dry_run else 'applied'}: {counts['create']} to create, "
               f"{counts['ok']} unchanged, {counts['drift']} drifted (not changed)")


@app.command()
def produce(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON Lines, one trigger event a line.")],
            workflow: WorkflowName = "support_ticket", bootstrap: Bootstrap = None,
            schema: Annotated[Optional[str], typer.Option(help="Writer contract, e.g. support_ticket/created.v1; default: the topic's latest.")] = None) -> None:
    """Send trigger events, Avro-encoded and keyed; report bad lines by number."""
    from processors.produce import produce_file
    from processors.serde import AvroSerde

    conf = settings(bootstrap)
    trigger = load_topics(workflow, conf.namespace)[f"{workflow}.triggers"]
    serde = AvroSerde(schema or trigger.value_schema, registry_url=conf.schema_registry_url)
    summary = produce_file(file, conf.producer(), trigger.name, serde, trigger.key_field)
    for bad in summary.rejected:
        typer.secho(f"line {bad.line}: rejected: {bad.reason}", fg=typer.colors.YELLOW, err=True)
    for bad in summary.failed:
        typer.secho(f"line {bad.line}: not delivered: {bad.reason}", fg=typer.colors.RED, err=True)
    typer.echo(f"sent {summary.sent} to {trigger.name}, rejected {len(summary.rejected)}, failed {len(summary.failed)}")
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def run(workflow: WorkflowName,
        stage: Annotated[str, typer.Option(help="classify, validate, route, execute, or all (development).")] = "all",
        guarantee: Annotated[Guarantee, typer.Option(help="at_least_once or exactly_once.")] = Guarantee.at_least_once,
        max_in_flight: Annotated[int, typer.Option(help="Records in flight per stage.")] = 500,
        instance: Annotated[Optional[str], typer.Option(help="exactly_once: this process's stable instance name "
                                                               "(default: the host name).")] = None,
        bootstrap: Bootstrap = None) -> None:
    """Run a workflow's stages until SIGTERM or Ctrl-C (drains in-flight work, then commits)."""
    from processors.pipeline import STAGES, Pipeline
    from processors.workflow import WorkflowError, load_workflow

    conf = settings(bootstrap)
    stages = list(STAGES) if stage == "all" else [stage]
    if not set(stages) <= set(STAGES):
        raise fail(f"unknown stage {stage!r}; one of {', '.join(STAGES)} or all")
    try:
        flow = load_workflow(workflow, conf.namespace)
    except WorkflowError as exc:
        raise fail(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = RuntimeOptions(guarantee=guarantee, max_in_flight=max_in_flight,
                             **({"instance": instance} if instance else {}))
    typer.echo(f"running {workflow} stages {', '.join(stages)} against {conf.bootstrap_servers} ({guarantee})")
    Pipeline(flow, conf, stages, options).run()


@app.command()
def tail(topic: Annotated[str, typer.Argument(help="Declared topic name, e.g. support_ticket.review.")],
         follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records.")] = False,
         bootstrap: Bootstrap = None) -> None:
    """Print a handoff topic's records decoded as JSON, one per line."""
    from processors.serde import AvroSerde
    from processors.tail import describe, follow, snapshot

    conf = settings(bootstrap)
    try:
        spec = load_topics(topic.split(".")[0], conf.namespace)[topic]
    except (FileNotFoundError, KeyError):
        raise fail(f"{topic} is not a declared topic (topics/<workflow>.yaml)")
    serde = AvroSerde(spec.value_schema, registry_url=conf.schema_registry_url) if spec.value_schema else None
    for msg in follow(conf, spec.name) if follow_ else snapshot(conf, spec.name):
        typer.echo(orjson.dumps(describe(msg, serde)).decode())


if __name__ == "__main__":
    app()
