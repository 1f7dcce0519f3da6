"""The ``handoff`` command: every command group's module assembled under one app.

Each group lives in its own module (``processors/cli/<group>.py``), its options shared through
:mod:`processors.cli.params`; this module only names them. ``--project`` and ``--kafka-config``
come before the command (``handoff --project ~/flows --kafka-config prod.properties run -w mine``)
because they decide where every command reads from and how it talks to the broker.
"""

from __future__ import annotations

import os

import typer

from processors.cli import (
    acls,
    broker,
    console,
    control,
    dataset,
    deploy,
    evals,
    events,
    init,
    model,
    outcome,
    prompt,
    replay,
    report,
    review,
    run,
    topics,
    trace,
)
from processors.cli.params import KafkaConfig, Project, fail
from processors.kafka.read import IncompleteRead, ReadError
from processors.kafka.settings import CONFIG_ENV
from processors.project import use


class Handoff(typer.Typer):
    """The app: a read that failed (:class:`IncompleteRead`, :class:`ReadError`: the broker slow, a topic
    missing), in whichever command, ends it with one line and exit 1, never a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except (IncompleteRead, ReadError) as exc:
            fail(str(exc))
            raise SystemExit(1) from None


app = Handoff(no_args_is_help=True, add_completion=False,
              help="handoff: AI model outputs to governed business actions, on Kafka.")


@app.callback()
def main(project: Project = None, kafka_config: KafkaConfig = None) -> None:
    """Options before the command: they decide where every command reads from, and how it talks to Kafka."""
    if project is not None:  # every loader asks processors.project: they agree on the one root
        use(project)
    if kafka_config is not None:  # KafkaSettings reads it: every client of the command gets the same properties
        os.environ[CONFIG_ENV] = str(kafka_config)


app.add_typer(broker.app, name="kafka")
app.add_typer(topics.app, name="topics")
app.command()(events.produce)
app.command()(events.tail)
app.command()(run.run)
app.command()(report.report)
app.command()(outcome.outcome)
app.add_typer(review.app, name="review")
app.add_typer(console.app, name="console")
app.add_typer(dataset.app, name="dataset")
app.add_typer(model.app, name="model")
app.add_typer(prompt.app, name="prompt")
app.add_typer(control.app, name="control")
app.command()(replay.replay)
app.command()(trace.trace)
app.command("eval")(evals.eval_)
app.add_typer(deploy.app, name="deploy")
app.command()(init.init)
app.add_typer(init.app, name="workflow")
app.command("acls")(acls.acls_)
