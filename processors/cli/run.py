"""``handoff run``: a workflow's stages in this process, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from processors.actions.mcp import MissingSetting
from processors.actions.webhook import MissingSecret
from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, fail, load, need_broker
from processors.control.store import ControlUnavailable
from processors.pipeline import Pipeline
from processors.runtime import metrics
from processors.runtime.options import Guarantee, RuntimeOptions
from processors.runtime.runtime import BrokerUnavailable
from processors.stages.registry import STAGES, stages_for
from processors.state.changelog import RestoreIncomplete
from processors.state.store import StoreUnusable
from processors.workflow.workflow import WorkflowError


def run(workflow: WorkflowName,
        stage: Annotated[str, typer.Option(help="classify, validate, route, execute, review, join, or all (development).")] = "all",
        guarantee: Annotated[Guarantee, typer.Option(help="at_least_once or exactly_once.")] = Guarantee.at_least_once,
        max_in_flight: Annotated[int, typer.Option(help="Records in flight per stage.")] = 500,
        instance: Annotated[Optional[str], typer.Option(help="This process's stable instance name: its static group "
                                                               "membership and, under exactly_once, its transactional id "
                                                               "(default: the host name).")] = None,
        leave_group_on_stop: Annotated[bool, typer.Option(
            "--leave-group-on-stop/--keep-partitions-on-stop",
            help="On SIGTERM, hand this instance's partitions to the others at once (scale-in), or keep them for "
                 "the session timeout so a restart of the same instance takes them back without a rebalance.")] = True,
        state_dir: Annotated[Optional[Path], typer.Option(envvar="HANDOFF_STATE_DIR", help=(
            "Where stateful stages keep their partition-local stores (default .local/state): on a persistent "
            "volume a restart reads only the changelog written since its last checkpoint."))] = None,
        metrics_port: Annotated[Optional[int], typer.Option(envvar="HANDOFF_METRICS_PORT", help=(
            "Serve Prometheus metrics on ADDR:PORT/metrics (default: off)."))] = None,
        metrics_addr: Annotated[str, typer.Option(envvar="HANDOFF_METRICS_ADDR", help=(
            "Address the metrics server binds: loopback by default; 0.0.0.0 for a scraper on another host."))]
        = "127.0.0.1",
        bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Run a workflow's stages until SIGTERM or Ctrl-C (drains in-flight work, then commits)."""
    if stage != "all" and stage not in STAGES:
        raise fail(f"unknown stage {stage!r}; one of {', '.join(STAGES)} or all")
    flow, conf = load(workflow, bootstrap, workflows_dir)
    stages = stages_for(flow) if stage == "all" else [stage]
    need_broker(flow, conf)  # before any stage's clients exist
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = RuntimeOptions(guarantee=guarantee, max_in_flight=max_in_flight, leave_group_on_stop=leave_group_on_stop,
                             **({"instance": instance} if instance else {}),
                             **({"state_dir": state_dir} if state_dir else {}))
    typer.echo(f"running {workflow} stages {', '.join(stages)} against {conf.bootstrap_servers} ({guarantee})")
    if metrics_port is not None:
        typer.echo(f"metrics on http://{metrics_addr}:{metrics.serve(metrics_port, metrics_addr).server_port}/metrics")
    try:
        Pipeline(flow, conf, stages, options).run()
    except (BrokerUnavailable, ControlUnavailable, MissingSecret, MissingSetting, RestoreIncomplete, StoreUnusable,
            WorkflowError) as exc:
        raise fail(str(exc))
