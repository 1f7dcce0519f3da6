"""The ``handoff`` command line."""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Optional

import orjson
import typer

from processors.dev import localkafka
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import apply as apply_topics
from processors.kafka.topics import load_topics
from processors.records import Mode, VerdictKind
from processors.runtime.runtime import Guarantee, RuntimeOptions

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


def load(workflow: str, bootstrap: str | None, workflows_dir: Path | None = None):
    """The workflow, in the namespace of the Kafka settings, and those settings; exit 1 with the
    reason when the workflow does not load."""
    from processors.workflow.workflow import WorkflowError, load_workflow

    conf = settings(bootstrap)
    try:
        return load_workflow(workflow, conf.namespace, workflows_dir), conf
    except WorkflowError as exc:
        raise fail(str(exc))


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
    from processors.avro.serde import AvroSerde
    from processors.ops.produce import produce_file

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
        stage: Annotated[str, typer.Option(help="classify, validate, route, execute, review, join, or all (development).")] = "all",
        guarantee: Annotated[Guarantee, typer.Option(help="at_least_once or exactly_once.")] = Guarantee.at_least_once,
        max_in_flight: Annotated[int, typer.Option(help="Records in flight per stage.")] = 500,
        instance: Annotated[Optional[str], typer.Option(help="exactly_once: this process's stable instance name "
                                                               "(default: the host name).")] = None,
        metrics_port: Annotated[Optional[int], typer.Option(envvar="HANDOFF_METRICS_PORT", help=(
            "Serve Prometheus metrics on ADDR:PORT/metrics (default: off)."))] = None,
        metrics_addr: Annotated[str, typer.Option(envvar="HANDOFF_METRICS_ADDR", help=(
            "Address the metrics server binds: loopback by default; 0.0.0.0 for a scraper on another host."))]
        = "127.0.0.1",
        bootstrap: Bootstrap = None) -> None:
    """Run a workflow's stages until SIGTERM or Ctrl-C (drains in-flight work, then commits)."""
    from processors.pipeline import STAGES, Pipeline

    stages = list(STAGES) if stage == "all" else [stage]
    if not set(stages) <= set(STAGES):
        raise fail(f"unknown stage {stage!r}; one of {', '.join(STAGES)} or all")
    flow, conf = load(workflow, bootstrap)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = RuntimeOptions(guarantee=guarantee, max_in_flight=max_in_flight,
                             **({"instance": instance} if instance else {}))
    typer.echo(f"running {workflow} stages {', '.join(stages)} against {conf.bootstrap_servers} ({guarantee})")
    if metrics_port is not None:
        from processors.runtime import metrics

        typer.echo(f"metrics on http://{metrics_addr}:{metrics.serve(metrics_port, metrics_addr).server_port}/metrics")
    Pipeline(flow, conf, stages, options).run()


@app.command()
def report(workflow: WorkflowName,
           since: Annotated[Optional[str], typer.Option(help="Only events settled since: an ISO time (UTC unless it "
                                                             "names a zone) or a span back from now: 30m, 2h, 7d.")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
           bootstrap: Bootstrap = None) -> None:
    """Per prompt version: automation, review, override and schema-failure rates, escalation recall, dead
    letters, p50/p95 latency, tokens and cost per completed workflow (defined in processors/report.py)."""
    from processors.ops.report import build, parse_since

    flow, conf = load(workflow, bootstrap)
    try:
        since_ms = parse_since(since) if since else None
    except ValueError as exc:
        raise fail(str(exc))
    result = build(flow, conf, since_ms)
    typer.echo(result.model_dump_json(indent=2) if as_json else result.render())


@app.command()
def outcome(event_id: Annotated[str, typer.Argument(metavar="EVENT_ID", help="The decided event's id.")],
            outcome_type: Annotated[str, typer.Argument(metavar="TYPE", help="One of the workflow's outcomes.types, "
                                                                              "e.g. reopened, closed_won.")],
            workflow: WorkflowName = "support_ticket",
            value: Annotated[Optional[str], typer.Option(help="Free-form value: an amount, the edited text.")] = None,
            source: Annotated[str, typer.Option(help="Who reports it.")] = "handoff-cli",
            bootstrap: Bootstrap = None) -> None:
    """Report a business outcome by hand; the join stage joins it to its decision on <workflow>.results."""
    from processors.ops.outcomes import send_outcome
    from processors.records import Outcome
    from processors.runtime.stage import now_ms

    flow, conf = load(workflow, bootstrap)
    try:
        send_outcome(flow, conf, Outcome(event_id=event_id, workflow=workflow, outcome_type=outcome_type, value=value,
                                         at_ms=now_ms(), source=source))
    except (ValueError, RuntimeError) as exc:
        raise fail(str(exc))
    typer.echo(f"sent {outcome_type} for {event_id} to {flow.topics[flow.topic('outcomes')].name}")


@app.command()
def tail(topic: Annotated[str, typer.Argument(help="Declared topic name, e.g. support_ticket.review.")],
         follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records.")] = False,
         bootstrap: Bootstrap = None) -> None:
    """Print a handoff topic's records decoded as JSON, one per line."""
    from processors.avro.serde import AvroSerde
    from processors.kafka.read import describe, follow, snapshot

    conf = settings(bootstrap)
    try:
        spec = load_topics(topic.split(".")[0], conf.namespace)[topic]
    except (FileNotFoundError, KeyError):
        raise fail(f"{topic} is not a declared topic (topics/<workflow>.yaml)")
    serde = AvroSerde(spec.value_schema, registry_url=conf.schema_registry_url) if spec.value_schema else None
    for msg in follow(conf, spec.name) if follow_ else snapshot(conf, spec.name):
        typer.echo(orjson.dumps(describe(msg, serde)).decode())


review_app = typer.Typer(no_args_is_help=True, help="The review queue: what people must decide. The first verdict "
                                                    "on an item wins; a later one is refused.")
dataset_app = typer.Typer(no_args_is_help=True, help="Datasets made from what people decided.")
app.add_typer(review_app, name="review")
app.add_typer(dataset_app, name="dataset")
ReviewId = Annotated[str, typer.Argument(help="The review id, as `handoff review list` prints it.")]
Reviewer = Annotated[Optional[str], typer.Option(help="Who decides (default: $HANDOFF_REVIEWER, else the OS user).")]
OptionalReason = Annotated[Optional[str], typer.Option(help="Why (optional).")]


def review_queue(workflow: str, bootstrap: str | None):
    from processors.ops.review_queue import ReviewQueue

    return ReviewQueue(*load(workflow, bootstrap))


def decide(workflow: str, bootstrap: str | None, review_id: str, kind: VerdictKind, reviewer: str | None,
           fields: list[str] = (), reason: str | None = None) -> None:
    """Write a verdict; exit 1 with the reason when it is refused or void."""
    from processors.ops.review_queue import (
        InvalidVerdict,
        UnknownItem,
        VerdictRefused,
        next_step,
        parse_fields,
    )

    queue = review_queue(workflow, bootstrap)
    try:
        verdict = queue.decide(review_id, kind, reviewer=reviewer, fields=parse_fields(list(fields)), reason=reason)
    except (InvalidVerdict, UnknownItem, VerdictRefused) as exc:
        raise fail(str(exc))
    typer.echo(f"{kind} of {review_id} by {verdict.reviewer}: recorded, first verdict. {next_step(verdict)}")


@review_app.command("list")
def review_list(workflow: WorkflowName, bootstrap: Bootstrap = None) -> None:
    """Open items, event_rule first, then oldest first: id, reason, age, the model's label (or the action), the event."""
    from processors.ops.review_queue import line

    queue = review_queue(workflow, bootstrap)
    items = queue.open_items()
    for item in items:
        typer.echo(line(queue.workflow, item))
    typer.echo(f"{len(items)} open")
    for where in sorted(queue.skipped):
        typer.secho(f"skipped, not a review item or verdict: {where}", fg=typer.colors.YELLOW, err=True)


@review_app.command("show")
def review_show(review_id: ReviewId, workflow: WorkflowName, bootstrap: Bootstrap = None) -> None:
    """The whole context of an item as JSON: event, answer, errors, action, and its verdict if any."""
    from processors.ops.review_queue import UnknownItem, context

    try:
        item, decided = review_queue(workflow, bootstrap).get(review_id)
    except UnknownItem as exc:
        raise fail(str(exc))
    typer.echo(orjson.dumps(context(item, decided), option=orjson.OPT_INDENT_2).decode())


@review_app.command("approve")
def review_approve(review_id: ReviewId, workflow: WorkflowName, reviewer: Reviewer = None,
                   reason: OptionalReason = None, bootstrap: Bootstrap = None) -> None:
    """The model's answer stands (or the risky action may run)."""
    decide(workflow, bootstrap, review_id, VerdictKind.approve, reviewer, reason=reason)


@review_app.command("correct")
def review_correct(review_id: ReviewId, workflow: WorkflowName,
                   set_: Annotated[list[str], typer.Option("--set", help="field=value on the model's answer; repeat.")],
                   reviewer: Reviewer = None, reason: OptionalReason = None, bootstrap: Bootstrap = None) -> None:
    """Set answer fields; checked against the prompt's output schema and the workflow's rules."""
    decide(workflow, bootstrap, review_id, VerdictKind.correct, reviewer, set_, reason)


@review_app.command("reject")
def review_reject(review_id: ReviewId, workflow: WorkflowName,
                  reason: Annotated[str, typer.Option(help="Why: recorded with the verdict.")],
                  reviewer: Reviewer = None, bootstrap: Bootstrap = None) -> None:
    """Close the item: nothing continues."""
    decide(workflow, bootstrap, review_id, VerdictKind.reject, reviewer, reason=reason)


class DatasetSource(StrEnum):
    corrections = "corrections"


@dataset_app.command("export")
def dataset_export(workflow: WorkflowName,
                   source: Annotated[DatasetSource, typer.Option("--from", help="corrections: every answer a "
                                                                               "reviewer corrected.")],
                   out: Annotated[Optional[Path], typer.Option(help="Default: workflows/<wf>/datasets/evals/"
                                                                    "regression.jsonl.")] = None,
                   bootstrap: Bootstrap = None) -> None:
    """Write the regression set evals read: the trigger event plus the expected answer, one per line."""
    from processors.ops.corrections import export

    done = export(*load(workflow, bootstrap), out)
    typer.echo(f"wrote {done.rows} examples ({done.corrections} corrections) to {done.path}")


prompt_app = typer.Typer(no_args_is_help=True, help="Prompt versions (files) and the labels that point at them "
                                                    "(production, candidate…), kept on the control topic.")
control_app = typer.Typer(no_args_is_help=True, help="What a workflow's running stages obey — rollout mode, kill "
                                                     "switch, thresholds — in force within a second, no restart.")
app.add_typer(prompt_app, name="prompt")
app.add_typer(control_app, name="control")
WorkflowsDir = Annotated[Optional[Path], typer.Option("--workflows-dir", envvar="HANDOFF_WORKFLOWS_DIR",
                                                      help="Where workflow folders are (default: the shipped ones).")]
Version = Annotated[str, typer.Argument(help="A prompt version: a file prompts/<prompt>/<version>.yaml.")]
Label = Annotated[str, typer.Option(help="The label to move.")]
Reason = Annotated[Optional[str], typer.Option(help="Why: recorded on the control state.")]
ChangedBy = Annotated[Optional[str], typer.Option("--by", help="Who makes the change (default: the OS user).")]


def control_store(workflow: str, bootstrap: str | None, workflows_dir: Path | None):
    from processors.control.store import ControlStore, ControlUnavailable

    flow, conf = load(workflow, bootstrap, workflows_dir)
    store = ControlStore(conf, flow)
    try:
        store.check()
    except ControlUnavailable as exc:
        raise fail(str(exc))
    return store


def prompt_file(store, version: str) -> Path:
    from processors.workflow.workflow import WorkflowError

    try:
        store.workflow.prompt_spec_for(version)
    except WorkflowError as exc:
        raise fail(str(exc))
    return store.workflow.prompt_dir / f"{version}.yaml"


def echo_state(state) -> None:
    typer.echo(f"control version {state.version}: {state.change} (by {state.changed_by}"
               + (f", forced: {state.reason}" if state.forced else f": {state.reason}" if state.reason else "") + ")")


@prompt_app.command("list")
def prompt_list(workflow: WorkflowName, bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Every version on disk: the labels pointing at it, its owner, rollback version and eval suite."""
    store = control_store(workflow, bootstrap, workflows_dir)
    state = store.current()
    for version in store.workflow.prompt_versions():
        spec = store.workflow.prompt_spec_for(version)
        labels = ",".join(label for label, v in sorted(state.labels.items()) if v == version) or "-"
        typer.echo(f"{version:<16} {labels:<22} owner {spec.owner}, rollback to {spec.rollback_version or '-'}, "
                   f"evals {spec.eval_suite or '-'}")
    echo_state(state)


@prompt_app.command("show")
def prompt_show(version: Version, workflow: WorkflowName, bootstrap: Bootstrap = None,
                workflows_dir: WorkflowsDir = None) -> None:
    """The version's file, as reviewed."""
    typer.echo(prompt_file(control_store(workflow, bootstrap, workflows_dir), version).read_text(), nl=False)


@prompt_app.command("diff")
def prompt_diff(old: Version, new: Version, workflow: WorkflowName, bootstrap: Bootstrap = None,
                workflows_dir: WorkflowsDir = None) -> None:
    """A unified diff of two versions' files."""
    import difflib

    store = control_store(workflow, bootstrap, workflows_dir)
    a, b = prompt_file(store, old), prompt_file(store, new)
    typer.echo("".join(difflib.unified_diff(a.read_text().splitlines(keepends=True),
                                            b.read_text().splitlines(keepends=True),
                                            fromfile=f"{store.workflow.prompt_spec.name}@{old}",
                                            tofile=f"{store.workflow.prompt_spec.name}@{new}")), nl=False)


@prompt_app.command("promote")
def prompt_promote(version: Version, workflow: WorkflowName, label: Label = "production",
                   force: Annotated[bool, typer.Option("--force", help="Promote even if its evals fail "
                                                                       "(needs --reason; recorded).")] = False,
                   reason: Reason = None, by: ChangedBy = None, bootstrap: Bootstrap = None,
                   workflows_dir: WorkflowsDir = None) -> None:
    """Run the version's eval suite; point the label at it only if every target is met (or --force)."""
    from processors.offline.promote import promote

    store = control_store(workflow, bootstrap, workflows_dir)
    prompt_file(store, version)
    try:
        state, report = promote(store, version, label=label, force=force, reason=reason, changed_by=by, progress=True)
    except ValueError as exc:  # a WorkflowError too
        raise fail(str(exc))
    typer.echo(report.table())
    if state is None:
        raise fail(f"refused: {version} misses its eval targets; {label} stays at "
                   f"{store.current().labels.get(label, '-')} (--force --reason TEXT to override)")
    echo_state(state)


@prompt_app.command("rollback")
def prompt_rollback(workflow: WorkflowName,
                    to: Annotated[Optional[str], typer.Option(help="Default: the rollback_version the current "
                                                                   "version's spec names.")] = None,
                    label: Label = "production", reason: Reason = None, by: ChangedBy = None,
                    bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Point the label back at the previous version, at once (no evals)."""
    from processors.offline.promote import rollback

    store = control_store(workflow, bootstrap, workflows_dir)
    try:
        echo_state(rollback(store, to, label=label, reason=reason, changed_by=by))
    except ValueError as exc:  # a WorkflowError too
        raise fail(str(exc))


def change_control(workflow: str, bootstrap: str | None, change: str, reason: str | None, by: str | None,
                   **fields) -> None:
    echo_state(control_store(workflow, bootstrap, None).publish(change, changed_by=by, reason=reason, **fields))


Bound = Annotated[str, typer.Argument(help="0..1, or 'default' (the workflow file's).")]


def bound(value: str, name: str) -> float | None:
    """A 0..1 bound, or None for 'default' (the workflow file's value)."""
    if value == "default":
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number <= 1:
        raise fail(f"{name}: {value!r} is neither a number from 0 to 1 nor 'default'")
    return number


@control_app.command("show")
def control_show(workflow: WorkflowName, history: Annotated[bool, typer.Option(help="Every change still on the "
                                                                                   "topic, oldest first.")] = False,
                 bootstrap: Bootstrap = None) -> None:
    """The state in force, as JSON (the workflow file's defaults when nothing was published)."""
    store = control_store(workflow, bootstrap, None)
    for state in store.history() if history else [store.current()]:
        typer.echo(state.model_dump_json())


@control_app.command("mode")
def control_mode(mode: Annotated[Mode, typer.Argument(help="shadow, suggest, partial or full.")],
                 workflow: WorkflowName, reason: Reason = None, by: ChangedBy = None, bootstrap: Bootstrap = None) -> None:
    """Set the rollout mode (processors/stages/route.py says what each does)."""
    change_control(workflow, bootstrap, f"mode {mode}", reason, by, mode=mode)


@control_app.command("kill-switch")
def control_kill_switch(switch: Annotated[Literal["on", "off"], typer.Argument(help="on: no model calls, new "
                                                                                  "items to review.")],
                        workflow: WorkflowName, reason: Reason = None, by: ChangedBy = None,
                        bootstrap: Bootstrap = None) -> None:
    """Stop (on) or resume (off) model calls; while on, every new trigger goes to review."""
    change_control(workflow, bootstrap, f"kill switch {switch}", reason, by, kill_switch=switch == "on")


@control_app.command("threshold")
def control_threshold(value: Bound, workflow: WorkflowName, reason: Reason = None, by: ChangedBy = None,
                      bootstrap: Bootstrap = None) -> None:
    """Set the review threshold: less confident answers go to a person."""
    change_control(workflow, bootstrap, f"review threshold {value}", reason, by,
                   review_threshold=bound(value, "threshold"))


@control_app.command("approval-risk")
def control_approval_risk(value: Bound, workflow: WorkflowName, reason: Reason = None, by: ChangedBy = None,
                          bootstrap: Bootstrap = None) -> None:
    """Set the approval risk: riskier actions wait for a person."""
    change_control(workflow, bootstrap, f"approval risk {value}", reason, by, approval_risk=bound(value, "approval-risk"))


@app.command()
def replay(workflow: WorkflowName,
           start: Annotated[Optional[str], typer.Option("--from", help="ISO time (UTC unless it names a zone): "
                                                                        "triggers at or after it.")] = None,
           end: Annotated[Optional[str], typer.Option("--to", help="ISO time: triggers before it.")] = None,
           offsets: Annotated[Optional[str], typer.Option(help="Trigger offsets P:FROM-TO[,…], both ends included.")] = None,
           source: Annotated[Optional[str], typer.Option(help="review or dlq: the events waiting there now.")] = None,
           prompt_version: Annotated[Optional[str], typer.Option(help="Default: the version production points to.")] = None,
           mode: Annotated[str, typer.Option(help="shadow: decide again, act on nothing, report what changes; "
                                                  "live: send through the running stages (actions stay idempotent).")] = "shadow",
           replay_id: Annotated[Optional[str], typer.Option("--id", help="Marks everything the replay writes "
                                                                          "(default: generated).")] = None,
           show_events: Annotated[bool, typer.Option("--show-events", help="List every changed event, "
                                                                          "not the first 20.")] = False,
           wait: Annotated[float, typer.Option(help="live: wait up to SECONDS for the running stages to settle "
                                                    "every re-injected event, then report what changed.")] = 0.0,
           bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Replay past triggers after a fix, through a prompt version: shadow or live.

    A live replay acts through its version, so a version production does not point to must pass
    its eval suite first, the same gate as ``prompt promote``."""
    import asyncio

    from processors.offline.replay import (
        ReplayMode,
        Selection,
        before,
        gate,
        new_id,
        reinject,
        select,
        settle,
        shadow,
    )

    store = control_store(workflow, bootstrap, workflows_dir)
    flow, conf = store.workflow, store.settings
    try:
        chosen = ReplayMode(mode)
        selection = Selection.parse(start=start, end=end, offsets=offsets, source=source)
        state = store.current()
        production = state.labels.get("production", flow.prompt_spec.version)
        version = prompt_version or production
        flow.prompt_spec_for(version)
    except ValueError as exc:  # a WorkflowError too
        raise fail(str(exc))
    if chosen == ReplayMode.live and (missed := gate(flow, version, production)) is not None:
        typer.echo(missed.table())
        raise fail(f"refused: a live replay acts through {version}, which misses its eval targets (production "
                   f"runs {production}); replay it in shadow, or fix it and promote it first")
    replay_id = replay_id or new_id()
    try:
        selected = select(flow, conf, selection)
    except ValueError as exc:
        raise fail(str(exc))
    if chosen == ReplayMode.shadow:
        shadowed = asyncio.run(shadow(flow, conf, selected, version, None, replay_id, state=state))
        typer.echo(shadowed.render(None if show_events else 20))
        return
    typer.echo(f"replay {replay_id} (live, prompt {version}): {selected.render()}")
    was = before(flow, conf, selected) if wait else {}
    sent = reinject(flow, conf, selected, replay_id, version)
    typer.echo(f"re-injected {sent} into {flow.topics[flow.topic('triggers')].name}; the running stages decide them "
               f"again, and an action already executed is answered already_done, not repeated")
    if wait:
        typer.echo(settle(flow, conf, selected, replay_id, version, was, sent, wait).render(None if show_events else 20))


@app.command("eval")
def eval_(workflow: WorkflowName,
          prompt_version: Annotated[Optional[str], typer.Option(help="The version to evaluate (default: the "
                                                                     "workflow file's).")] = None,
          dataset: Annotated[Optional[list[str]], typer.Option(help="Run only this dataset of the suite "
                                                                    "(repeatable): a look, not a gate.")] = None,
          report: Annotated[Optional[Path], typer.Option(help="Where the JSON report goes (default: "
                                                              ".local/evals/<workflow>-<version>.json).")] = None,
          workflows_dir: WorkflowsDir = None) -> None:
    """Run a prompt version's eval suite offline; print metric, target, value, pass; exit 1 on any miss."""
    from processors.offline.evals import REPORTS_DIR, EvalError, run_suite
    from processors.workflow.workflow import WorkflowError, load_workflow

    try:
        flow = load_workflow(workflow, root=workflows_dir)
        flow = flow.with_prompt(prompt_version) if prompt_version else flow
        result = run_suite(flow, datasets=dataset, progress=True)
    except (WorkflowError, EvalError) as exc:
        raise fail(str(exc))
    path = report or REPORTS_DIR / f"{workflow}-{result.prompt.version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.to_json())
    typer.echo(result.table())
    typer.echo(f"report: {path}")
    if not result.passed:
        raise typer.Exit(1)

if __name__ == "__main__":
    app()
