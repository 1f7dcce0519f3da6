"""``handoff run``: a workflow's stages in this process, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from processors.actions.mcp import MissingSetting
from processors.actions.webhook import MissingSecret
from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, fail, load, need_access, need_broker
from processors.control.store import ControlUnavailable
from processors.kafka.acls import AccessDenied
from processors.logs import LogFormat, setup
from processors.pipeline import Pipeline
from processors.runtime import metrics
from processors.runtime.options import Guarantee, RuntimeOptions
from processors.runtime.runtime import BrokerUnavailable
from processors.signing import SigningError
from processors.stages.registry import STAGES, stages_for
from processors.state.store import StoreUnusable
from processors.workflow.workflow import WorkflowError

log = logging.getLogger("handoff.run")


def run(workflow: WorkflowName,
        stage: Annotated[str, typer.Option(help="classify, validate, route, execute, review, join, or all (development).")] = "all",
        guarantee: Annotated[Guarantee, typer.Option(help="at_least_once or exactly_once.")] = Guarantee.at_least_once,
        max_in_flight: Annotated[int, typer.Option(help="Records in flight per stage.")] = 500,
        instance: Annotated[Optional[str], typer.Option(help="This process's stable instance name: its static group "
                                                               "membership and, under exactly_once, its transactional id "
                                                               "(default: the host name). An instance joining or leaving "
                                                               "gracefully pauses the group's outputs for seconds (make "
                                                               "bench: scale.*_pause_s); one that dies holds its "
                                                               "partitions for the session timeout, 45 s.")] = None,
        leave_group_on_stop: Annotated[bool, typer.Option(
            "--leave-group-on-stop/--keep-partitions-on-stop",
            help="On SIGTERM, hand this instance's partitions to the others at once (scale-in), or keep them for "
                 "the session timeout so a restart of the same instance takes them back without a rebalance.")] = True,
        state_dir: Annotated[Optional[Path], typer.Option(envvar="HANDOFF_STATE_DIR", help=(
            "Where stateful stages keep their partition-local stores (default .local/state): on a persistent "
            "volume a restart reads only the changelog written since its last checkpoint."))] = None,
        metrics_port: Annotated[int, typer.Option(envvar="HANDOFF_METRICS_PORT", help=(
            "Serve Prometheus metrics on ADDR:PORT/metrics, and /healthz and /readyz (0: any free port)."))]
        = metrics.DEFAULT_PORT,
        metrics_addr: Annotated[str, typer.Option(envvar="HANDOFF_METRICS_ADDR", help=(
            "Address the metrics server binds: loopback by default; 0.0.0.0 for a scraper on another host."))]
        = "127.0.0.1",
        log_format: Annotated[LogFormat, typer.Option(envvar="HANDOFF_LOG_FORMAT", help=(
            "json: one object a line; text: for a person; auto: text on a terminal, JSON anywhere else."))]
        = LogFormat.auto,
        bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Run a workflow's stages until SIGTERM or Ctrl-C (drains in-flight work, then commits)."""
    if stage != "all" and stage not in STAGES:
        raise fail(f"unknown stage {stage!r}; one of {', '.join(STAGES)} or all")
    flow, conf = load(workflow, bootstrap, workflows_dir)
    stages = stages_for(flow) if stage == "all" else [stage]
    options = RuntimeOptions(guarantee=guarantee, max_in_flight=max_in_flight, leave_group_on_stop=leave_group_on_stop,
                             **({"instance": instance} if instance else {}),
                             **({"state_dir": state_dir} if state_dir else {}))
    setup(log_format, workflow=workflow, instance=options.instance, **({"stage": stage} if stage != "all" else {}))
    need_broker(flow, conf)  # before any stage's clients exist
    try:
        need_access(flow, conf, stages)  # builds the stages: a malformed signing key says so here
    except SigningError as exc:
        raise fail(str(exc))
    try:
        served = metrics.serve(metrics_port, metrics_addr)
    except OSError as exc:
        raise fail(f"cannot serve metrics on {metrics_addr}:{metrics_port} ({exc.strerror}); "
                   f"give another --metrics-port (0: any free port)")
    log.info("running %s stages %s against %s (%s)", workflow, ", ".join(stages), conf.bootstrap_servers, guarantee)
    log.info("metrics on http://%s:%d/metrics, /healthz, /readyz", metrics_addr, served.server_port)
    try:
        Pipeline(flow, conf, stages, options).run()
    except (AccessDenied, BrokerUnavailable, ControlUnavailable, MissingSecret, MissingSetting, SigningError,
            StoreUnusable, WorkflowError) as exc:
        raise fail(str(exc))
