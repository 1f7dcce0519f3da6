"""``handoff kafka``: a local single-node broker for development (no Docker)."""

from __future__ import annotations

import typer

from processors.cli.params import DataDir, fail
from processors.dev import localkafka

app = typer.Typer(no_args_is_help=True, help="A local single-node Kafka broker on the JVM (no Docker).")


@app.command("up")
def kafka_up(data_dir: DataDir = localkafka.DEFAULT_DATA_DIR, port: int = localkafka.DEFAULT_PORT,
             timeout: float = 120.0) -> None:
    """Start the broker (or find it running) and wait until it answers."""
    try:
        bootstrap = localkafka.LocalKafka(data_dir, port).start(timeout)
    except localkafka.LocalKafkaError as exc:
        raise fail(str(exc))
    typer.echo(f"kafka is up at {bootstrap} (data in {data_dir})")


@app.command("down")
def kafka_down(data_dir: DataDir = localkafka.DEFAULT_DATA_DIR) -> None:
    """Stop the broker started by ``kafka up``."""
    stopped = localkafka.LocalKafka(data_dir).stop()
    typer.echo("kafka stopped" if stopped else "kafka was not running")
