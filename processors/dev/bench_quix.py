"""``make bench``, the peer: the same work run by a Quix Streams application instead of the runtime.

Run as its own process by :mod:`.bench` (``python -m processors.dev.bench_quix``), one per stage as
handoff's stages are deployed, so only this module imports Quix Streams (a bench-only install:
``make bench`` puts it in; see the Makefile for why it is not a package extra):

* ``passthrough``: decode one trigger and encode it again with the topic's serde, as (a1)'s two other
  runners do;
* ``validate`` / ``route``: the stage's own work per record, :meth:`StageRuntime.handle` — decode,
  ``Stage.process``, encode every output, exactly what the ceiling line times and the runtime runs —
  called from a Quix ``StreamingDataFrame``; each output goes to its own topic, keyed as the stage
  keyed it. The stage's duplicate check keeps its memory in this process (the runtime's tables are
  not driven here) and its changelog records are still written: the work per record is the same.

Quix runs at-least-once (its default, as the runtime's), committing every second like the runtime,
with the same client settings (compression, idempotence, read_committed).
"""

from __future__ import annotations

import logging

import typer
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message
from quixstreams import Application, message_context
from quixstreams.models.serializers import Serializer

from processors.kafka.settings import PRODUCER_TUNABLE, KafkaSettings
from processors.kafka.topics import Role
from processors.runtime.output import Output
from processors.runtime.runtime import StageRuntime
from processors.stages.registry import build_stage
from processors.workflow.workflow import load_workflow

IDLE_S = 10.0
"""The application stops once nothing new arrived for this long (the input is written before it starts)."""


class OutputValue(Serializer):
    """An :class:`Output`'s value, already encoded by the stage's work."""

    def __call__(self, value: Output, ctx) -> bytes:
        return value.value


def _application(settings: KafkaSettings, group: str) -> Application:
    """With the client settings handoff's stages use (lz4, idempotence, read_committed): the same work on the wire."""
    return Application(broker_address=settings.bootstrap_servers, consumer_group=settings.group_id(group),
                       auto_offset_reset="earliest", commit_interval=1.0, use_changelog_topics=False,
                       auto_create_topics=False, loglevel=logging.WARNING,
                       producer_extra_config={**PRODUCER_TUNABLE, "enable.idempotence": True},
                       consumer_extra_config={"isolation.level": "read_committed"})


def passthrough(settings: KafkaSettings, workflow_name: str, target: str) -> None:
    workflow = load_workflow(workflow_name, settings.namespace)
    source = workflow.spec(Role.triggers)
    serde = source.serde(settings)
    app = _application(settings, "quix.passthrough")
    frame = app.dataframe(app.topic(source.name, key_deserializer="bytes", value_deserializer="bytes"))
    frame = frame.apply(lambda value: serde.encode(serde.decode(value)))
    frame.to_topic(app.topic(target, key_serializer="bytes", value_serializer="bytes"))
    app.run(timeout=IDLE_S)


def stage_work(settings: KafkaSettings, workflow_name: str, stage: str) -> None:
    workflow = load_workflow(workflow_name, settings.namespace)
    runtime = StageRuntime(build_stage(stage, workflow), workflow.name, workflow.topics, settings)
    runtime.tune_gc()  # as a stage process runs
    app = _application(settings, f"quix.{stage}")
    outputs = {spec.name: app.topic(spec.name, key_serializer="bytes", value_serializer=OutputValue())
               for spec in workflow.topics.values()}
    [source] = runtime.input_topics

    def work(value: bytes, key: bytes, timestamp: int, headers) -> list[Output]:
        where = message_context()
        return runtime.handle(Message(topic=where.topic, partition=where.partition, offset=where.offset, key=key,
                                      value=value, timestamp=(TIMESTAMP_CREATE_TIME, timestamp)))

    frame = app.dataframe(app.topic(source, key_deserializer="bytes", value_deserializer="bytes"))
    frame = frame.apply(work, expand=True, metadata=True)
    frame.to_topic(lambda out, key, timestamp, headers: outputs[out.topic], key=lambda out: out.key)
    app.run(timeout=IDLE_S)


def main(bootstrap: str = typer.Option(...), namespace: str = typer.Option(...),
         workflow: str = typer.Option("banking77"), stage: str = typer.Option(..., help="passthrough, validate or route"),
         target: str = typer.Option("", help="passthrough: the topic to write")) -> None:
    settings = KafkaSettings(bootstrap_servers=bootstrap, namespace=namespace)
    if stage == "passthrough":
        passthrough(settings, workflow, target)
    else:
        stage_work(settings, workflow, stage)


if __name__ == "__main__":
    typer.run(main)
