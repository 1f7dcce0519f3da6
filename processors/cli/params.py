"""What the commands share: their common options and the steps before a command's own work.

Every option that more than one command takes is declared here once (``--bootstrap``,
``--workflow``, ``--workflows-dir``, ``--data-dir``, ``--kafka-config``…), and so are the steps that can fail before a
command does anything — loading the workflow, asking the broker for its topics, reading the
control topic — each failing in one line that says what is wrong and what to do (:func:`fail`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from processors.avro.registry import RegistryConfigError, RegistryUnavailable
from processors.control.store import ControlStore, ControlUnavailable
from processors.kafka.acls import AccessDenied, check
from processors.kafka.broker import BrokerUnreachable, missing_topics
from processors.kafka.settings import CONFIG_ENV, ClientConfigError, KafkaSettings
from processors.project import PROJECT_ENV
from processors.stages.access import grants
from processors.views.store import ViewStore, ViewsUnavailable, open_store
from processors.workflow.workflow import Workflow, WorkflowError, load_workflow

Bootstrap = Annotated[Optional[str], typer.Option("--bootstrap", "-b", envvar="KAFKA_BOOTSTRAP_SERVERS",
                                                  help="Kafka bootstrap servers.")]
WorkflowName = Annotated[str, typer.Option("--workflow", "-w", help="Workflow name (workflows/<name>/, topics/<name>.yaml).")]
WorkflowsDir = Annotated[Optional[Path], typer.Option("--workflows-dir", envvar="HANDOFF_WORKFLOWS_DIR",
                                                      help="Where workflow folders are (default: the project's "
                                                           "workflows/).")]
Project = Annotated[Optional[Path], typer.Option("--project", envvar=PROJECT_ENV, exists=True, file_okay=False,
                                                 resolve_path=True, help="The folder holding workflows/, schemas/ "
                                                                         "and topics/ (default: the shipped examples).")]
ViewsUrl = Annotated[Optional[str], typer.Option("--views-url", envvar="HANDOFF_VIEWS_URL", help=(
    "The views database: sqlite:///path or postgresql://user@host:port/db (default: .local/views.db)."))]
DataDir = Annotated[Path, typer.Option(help="Where the broker keeps its data, pid and logs (git-ignored).")]


KafkaConfig = Annotated[Optional[Path], typer.Option("--kafka-config", envvar=CONFIG_ENV, exists=True, dir_okay=False,
                                                     resolve_path=True, help=(
    "A properties file (key=value lines) of librdkafka and schema.registry.* client settings: SASL, TLS… "
    "Secrets go here or in HANDOFF_KAFKA_* variables, never on the command line."))]


def settings(bootstrap: str | None) -> KafkaSettings:
    """The Kafka settings in force (properties file, environment, ``--bootstrap``); exit 1 when they do not read."""
    try:
        return KafkaSettings.load(bootstrap_servers=bootstrap)
    except ClientConfigError as exc:
        raise fail(str(exc))


def fail(message: str) -> typer.Exit:
    """Print ``message`` in red on stderr; raise what this returns to exit 1, without a traceback."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(1)


def load(workflow: str, bootstrap: str | None, workflows_dir: Path | None = None) -> tuple[Workflow, KafkaSettings]:
    """The workflow, in the namespace of the Kafka settings, and those settings; exit 1 with the
    reason when the workflow does not load (an unknown one: the known ones are listed)."""
    conf = settings(bootstrap)
    try:
        return load_workflow(workflow, conf.namespace, workflows_dir), conf
    except WorkflowError as exc:
        raise fail(str(exc))


def need_broker(flow: Workflow, conf: KafkaSettings, *topics: str) -> None:
    """Exit 1 in one line unless a broker answers and has the ``topics``, and the Schema Registry (when
    one is set) answers to these credentials: asked before the command makes clients of its own,
    which would log every refused connection, or fail every record they write."""
    try:
        missing = missing_topics(conf, topics)
        if conf.registry is not None:
            conf.registry.check()
    except (BrokerUnreachable, ClientConfigError, RegistryConfigError, RegistryUnavailable) as exc:
        raise fail(str(exc))
    if missing:
        raise fail(f"topic {missing[0]} does not exist at {conf.bootstrap_servers}: create the workflow's topics "
                   f"with `handoff topics apply --workflow {flow.name}`")


def need_access(flow: Workflow, conf: KafkaSettings, stages: list[str]) -> None:
    """Exit 1 in one line naming the principal, the resource and the operation when this process may not
    do something the ``stages`` do (:mod:`processors.stages.access`); on an open cluster everything is allowed."""
    try:
        for stage in stages:
            check(conf, grants(flow, stage, conf))
    except AccessDenied as exc:
        raise fail(f"stage {stage}: {exc}")


def control_store(workflow: str, bootstrap: str | None, workflows_dir: Path | None) -> ControlStore:
    """The workflow's control store, its topic checked; exit 1 when it cannot be read."""
    flow, conf = load(workflow, bootstrap, workflows_dir)
    need_broker(flow, conf)
    store = ControlStore(conf, flow)
    try:
        store.check()
    except ControlUnavailable as exc:
        raise fail(str(exc))
    return store


def views(url: str | None) -> ViewStore:
    """The views database (``--views-url``); exit 1 in one line when it cannot be opened."""
    try:
        return open_store(url)
    except ViewsUnavailable as exc:
        raise fail(str(exc))
