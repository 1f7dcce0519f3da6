"""Topics as code: derived as the files declared them, each kept as long as its workflow needs; against the
real broker, created, re-applied idempotently, a short retention raised, other drift reported not fixed."""

import re
import time
from pathlib import Path

import pytest
import yaml
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, ResourceType
from typer.testing import CliRunner

from processors.avro.serde import RegistryFraming
from processors.cli.main import app
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import FOREVER, Keep, Role, TopicSpec, Windows, apply, plan, workflow_topics
from processors.project import DataFileError
from processors.workflow.workflow import Retention, WorkflowError, load_topics, load_workflow

DAY_MS = 86_400_000
WINDOWS = Retention().windows()  # replay reach 30 days, report window 90 days


def retention_ms(kafka, name: str) -> str:
    admin, resource = kafka.admin(), ConfigResource(ResourceType.TOPIC, name)  # kept until the future resolves
    return admin.describe_configs([resource])[resource].result(timeout=10)["retention.ms"].value


def set_retention(kafka, name: str, value: str) -> None:
    admin = kafka.admin()
    resource = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
        ConfigEntry("retention.ms", value, incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(timeout=10)
    while retention_ms(kafka, name) != value:
        time.sleep(0.1)  # the broker applies the controller's config change a moment later


def test_apply_creates_then_changes_nothing(kafka):
    specs = list(load_topics("support_ticket", kafka.namespace).values())
    admin = kafka.admin()
    dry = apply(admin, specs, dry_run=True)
    assert {c.action for c in dry} == {"create"}
    assert not any(s.name in admin.list_topics(timeout=10).topics for s in specs), "dry run created topics"

    first = apply(admin, specs)
    assert [c.action for c in first] == ["create"] * len(specs)
    second = apply(admin, specs)
    assert [c.action for c in second] == ["ok"] * len(specs)

    ledger = next(s for s in specs if s.name.endswith("actions.done"))
    resource = ConfigResource(ResourceType.TOPIC, ledger.name)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["cleanup.policy"].value == "compact"


def test_a_short_retention_is_raised_other_drift_reported_and_left_alone(kafka):
    specs = load_topics("support_ticket", kafka.namespace)
    admin = kafka.admin()
    apply(admin, list(specs.values()))
    triggers = specs["support_ticket.triggers"]
    admin.create_partitions([NewPartitions(triggers.name, triggers.partitions + 2)])[triggers.name].result(timeout=10)
    while len(admin.list_topics(timeout=10).topics[triggers.name].partitions) != triggers.partitions + 2:
        time.sleep(0.1)  # the broker's metadata catches up with the controller
    dlq, shadow = specs["support_ticket.dlq"], specs["support_ticket.shadow"]
    set_retention(kafka, dlq.name, "1000")  # keeps less than declared: raised
    set_retention(kafka, shadow.name, "-1")  # keeps more than declared: never shortened

    changes = {c.topic: c for c in apply(admin, list(specs.values()))}
    assert changes[triggers.name].action == "drift"
    assert f"partitions {triggers.partitions + 2} != declared {triggers.partitions}" in changes[triggers.name].detail
    assert changes[dlq.name].action == "alter" and "retention.ms 1000" in changes[dlq.name].detail
    assert retention_ms(kafka, dlq.name) == str(dlq.retention_ms) == str(90 * DAY_MS)
    assert changes[shadow.name].action == "drift" and "not shortened" in changes[shadow.name].detail
    assert retention_ms(kafka, shadow.name) == "-1"
    # nothing was changed back or destroyed
    assert len(admin.list_topics(timeout=10).topics[triggers.name].partitions) == triggers.partitions + 2
    assert {c.action for t, c in changes.items() if t not in (triggers.name, dlq.name, shadow.name)} == {"ok"}
    assert plan(admin, [triggers])[0].action == "drift" and plan(admin, [dlq])[0].action == "ok"


# ---- derived, not declared: the engine's topics and one decisions topic per route ---------------------

DECLARED = Path(__file__).parent / "data" / "declared_topics"
SHIPPED = ("support_ticket", "banking77")


def declared(workflow: str, namespace: str = "") -> dict[str, TopicSpec]:
    """What topics/<workflow>.yaml declared, topic by topic, before the engine's topics were derived."""
    prefix = f"{namespace}." if namespace else ""
    specs = [TopicSpec.model_validate(t) for t in yaml.safe_load((DECLARED / f"{workflow}.yaml").read_text())["topics"]]
    return {s.name: s.model_copy(update={"name": prefix + s.name}) for s in specs}


CHANGELOGS_SINCE = ("taken", "verdicts.first", "review.open")  # the state stores' changelogs, added after the record
LEDGERS_RESTATED = ("seen", "actions.done")  # their docs say what the state stores made of them

RETAINED = {  # by the workflow's default retention: replay reach 30d, report window 90d
    Keep.replay_reach: 30 * DAY_MS, Keep.report_window: 90 * DAY_MS, Keep.report_and_replay: 90 * DAY_MS,
    Keep.until_decided: FOREVER, Keep.state: FOREVER, Keep.in_flight: 7 * DAY_MS}


@pytest.mark.parametrize("workflow", SHIPPED)
def test_the_derived_topics_are_what_the_files_declared_kept_as_the_workflow_needs(workflow):
    """Names, partitions, replication, configs, schemas, keys and docs as declared; retention from the workflow;
    and the state stores' changelogs since."""
    derived, old = load_topics(workflow, "ns"), declared(workflow, "ns")
    def made(name: str, spec: TopicSpec) -> dict:  # as on the cluster, with the doc of what did not change since
        restated = name.removeprefix(f"{workflow}.") in LEDGERS_RESTATED
        return spec.model_dump(exclude={"retention_ms", "keep", *(["doc"] if restated else [])})

    assert {n: made(n, s) for n, s in derived.items() if n in old} == {n: made(n, s) for n, s in old.items()}
    assert set(derived) - set(old) == {f"{workflow}.{t}" for t in CHANGELOGS_SINCE}
    assert {n: s.retention_ms for n, s in derived.items()} == {n: RETAINED[s.keep] for n, s in derived.items()}
    keeps = {n.removeprefix(f"{workflow}."): s.keep for n, s in derived.items() if ".decisions." not in n}
    assert keeps["triggers"] == Keep.replay_reach
    assert keeps["review"] == keeps["verdicts"] == Keep.until_decided
    assert {keeps[t] for t in ("repair", "shadow", "traces", "results")} == {Keep.report_window}
    assert keeps["dlq"] == Keep.report_and_replay and {s.keep for n, s in derived.items() if ".decisions." in n} == {
        Keep.report_and_replay}
    assert {n for n, s in derived.items() if s.keep == Keep.state} == {
        f"{workflow}.{t}" for t in ("seen", "actions.done", "joins", "control", *CHANGELOGS_SINCE)}
    for name in (n for n, s in old.items() if s.retention_ms == FOREVER):
        assert derived[name].retention_ms == FOREVER, f"{name}: was kept forever, must still be"


def test_a_cluster_made_from_the_old_declaration_only_keeps_more(kafka):
    admin = kafka.admin()
    for workflow in SHIPPED:
        old = declared(workflow, kafka.namespace)
        apply(admin, list(old.values()))
        new = list(load_topics(workflow, kafka.namespace).values())
        changes = {c.topic: c for c in apply(admin, new)}
        assert {c.action for c in changes.values()} == {"ok", "alter", "create"}, [str(c) for c in changes.values()]
        assert {t for t, c in changes.items() if c.action == "create"} == {
            f"{kafka.namespace}.{workflow}.{t}" for t in CHANGELOGS_SINCE}
        assert {t for t, c in changes.items() if c.action == "alter"} == {
            s.name for s in new if s.name.removeprefix(f"{kafka.namespace}.") in old
            and s.retention_ms != old[s.name.removeprefix(f"{kafka.namespace}.")].retention_ms}
        assert {c.action for c in plan(admin, new)} == {"ok"}


def topic_file(root: Path, **fields) -> Path:
    body = {"workflow": "flow", "trigger": {"value_schema": "flow/event", "key_field": "id"}} | fields
    (root / "flow.yaml").write_text(yaml.safe_dump(body))
    return root


def test_an_override_changes_only_the_topic_it_names(tmp_path):
    root = topic_file(tmp_path, overrides={"classified": {"retention_ms": 1000}, "decisions.b": {"partitions": 12},
                                           "traces": {"retention_ms": -1}})
    topics = workflow_topics("flow", ["a", "b", "a"], WINDOWS, "t1", root)
    assert list(topics)[:6] == ["flow.triggers", "flow.classified", "flow.repair", "flow.validated",
                                "flow.decisions.a", "flow.decisions.b"]  # a route named twice has one topic
    # every role one topic but decisions (one per route) and grounded (only a workflow with lookups has it)
    assert len(topics) == len(Role) - 2 + 2 and topics["flow.dlq"].name == "t1.flow.dlq"
    classified = topics["flow.classified"]
    assert classified.retention_ms == 1000 and classified.value_schema == "handoff/work_item"
    assert topics["flow.traces"].retention_ms == FOREVER, "a retention longer than the workflow needs is kept"
    assert topics["flow.decisions.b"].partitions == 12 and topics["flow.decisions.a"].partitions == 6
    assert topics["flow.triggers"] == TopicSpec(name="t1.flow.triggers", value_schema="flow/event", key_field="id",
                                                retention_ms=30 * DAY_MS, keep=Keep.replay_reach)
    untouched = load_topics("support_ticket")["support_ticket.validated"]
    assert topics["flow.validated"].model_dump(exclude={"name"}) == untouched.model_dump(exclude={"name"})


def test_retention_follows_the_workflows_windows(tmp_path):
    topics = workflow_topics("flow", ["a"], Windows(replay_reach_ms=2 * DAY_MS, report_window_ms=DAY_MS),
                             root=topic_file(tmp_path))
    assert topics["flow.triggers"].retention_ms == 2 * DAY_MS and topics["flow.traces"].retention_ms == DAY_MS
    assert topics["flow.decisions.a"].retention_ms == topics["flow.dlq"].retention_ms == 2 * DAY_MS  # the longer
    assert topics["flow.review"].retention_ms == topics["flow.verdicts"].retention_ms == FOREVER
    assert str(topics["flow.triggers"].retention) == "2d (replay reach)"


@pytest.mark.parametrize("fields, message", [
    ({"trigger": {"value_schema": "flow/event", "retention_ms": 7 * DAY_MS}},
     f"trigger.retention_ms: {7 * DAY_MS} (7d) keeps flow.triggers shorter than its workflow needs: "
     f"{30 * DAY_MS} (30d; retention.replay_reach)"),
    ({"overrides": {"review": {"retention_ms": 30 * DAY_MS}}},
     f"overrides.review.retention_ms: {30 * DAY_MS} (30d) keeps flow.review shorter than its workflow needs: "
     f"-1 (forever; a pending item may wait however long)"),
    ({"overrides": {"results": {"retention_ms": 1000}}},
     f"overrides.results.retention_ms: 1000 (1s) keeps flow.results shorter than its workflow needs: "
     f"{90 * DAY_MS} (90d; retention.report_window)"),
])
def test_a_retention_shorter_than_the_workflow_needs_fails_with_file_field_and_both_numbers(tmp_path, fields, message):
    with pytest.raises(DataFileError) as failure:
        workflow_topics("flow", ["a"], WINDOWS, root=topic_file(tmp_path, **fields))
    assert str(failure.value).startswith(f"{tmp_path / 'flow.yaml'}: {message}")


def edit_yaml(path: Path, change) -> None:
    body = yaml.safe_load(path.read_text())
    change(body)
    path.write_text(yaml.safe_dump(body))


def test_a_workflow_whose_topic_file_keeps_too_little_does_not_load(project):
    topics = project / "topics/support_ticket.yaml"
    edit_yaml(topics, lambda body: body["trigger"].update(retention_ms=7 * DAY_MS))
    with pytest.raises(WorkflowError, match=re.escape(f"{topics}: trigger.retention_ms: {7 * DAY_MS} (7d) keeps "
                                                      f"support_ticket.triggers shorter than its workflow needs")):
        load_workflow("support_ticket")
    edit_yaml(project / "workflows/support_ticket/workflow.yaml",
              lambda body: body.update(retention={"replay_reach": "7d", "dedupe_window": "7d", "report_window": "30d"}))
    workflow = load_workflow("support_ticket")  # a reach the file keeps
    assert workflow.spec(Role.triggers).retention_ms == 7 * DAY_MS
    assert workflow.spec(Role.traces).retention_ms == 30 * DAY_MS


def test_triggers_kept_past_what_the_effects_ledger_remembers_do_not_load(project):
    """A replay reaches as far as the trigger topic keeps; an effect it re-requests must still be in the ledger."""
    edit_yaml(project / "topics/support_ticket.yaml", lambda body: body["trigger"].update(retention_ms=60 * DAY_MS))
    with pytest.raises(WorkflowError, match=re.escape("retention.effects_kept: 30d is shorter than "
                                                      "topics/support_ticket.yaml keeps the triggers (60d)")):
        load_workflow("support_ticket")
    edit_yaml(project / "workflows/support_ticket/workflow.yaml",
              lambda body: body.update(retention={"effects_kept": "60d"}))
    assert load_workflow("support_ticket").spec(Role.triggers).retention_ms == 60 * DAY_MS


@pytest.mark.parametrize("fields, message", [
    ({"overrides": {"decisions.c": {"partitions": 3}}}, "overrides: decisions.c: no such topic of flow"),
    ({"overrides": {"seen": {"cleanup_policy": "delete"}}}, "overrides.seen.cleanup_policy"),
    ({"trigger": {"partitions": 0}}, "trigger.partitions"),
    ({"workflow": "other"}, "workflow: 'other', expected 'flow'"),
])
def test_a_wrong_topic_file_names_the_file_and_the_field(tmp_path, fields, message):
    with pytest.raises(DataFileError) as failure:
        workflow_topics("flow", ["a", "b"], WINDOWS, root=topic_file(tmp_path, **fields))
    assert str(tmp_path / "flow.yaml") in str(failure.value) and message in str(failure.value)


def test_a_topic_owns_its_serde_one_per_schema_and_registry():
    topics = load_topics("support_ticket")
    plain, framed = KafkaSettings(schema_registry_url=None), KafkaSettings(schema_registry_url="http://127.0.0.1:9")
    review = topics["support_ticket.review"]
    assert review.serde(plain) is review.serde(plain) is topics["support_ticket.review"].serde(plain)
    assert review.serde(plain).writer.name.startswith("handoff/review_item")
    assert isinstance(review.serde(framed).framing, RegistryFraming) and review.serde(framed) is not review.serde(plain)
    with pytest.raises(ValueError, match="support_ticket.dlq carries raw bytes"):
        topics["support_ticket.dlq"].serde(plain)


def test_the_dry_run_shows_the_workflows_reach_and_each_topics_retention(kafka):
    result = CliRunner().invoke(app, ["topics", "apply", "--workflow", "support_ticket", "--dry-run", "--bootstrap",
                                      kafka.bootstrap_servers], env={"HANDOFF_NAMESPACE": kafka.namespace})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("support_ticket: replay reach 30d, report window 90d, dedupe window 30d, "
                               "effects kept 30d")
    assert f"would create {kafka.namespace}.support_ticket.triggers  retention 30d (replay reach)" in lines[1]
    assert any(f"{kafka.namespace}.support_ticket.review  retention forever (until decided)" in line for line in lines)
    assert any(f"{kafka.namespace}.support_ticket.seen  retention compacted (state)" in line for line in lines)
    assert lines[-1].startswith(f"planned: {len(load_topics('support_ticket'))} to create, 0 retention raised")
    assert not any(t.startswith(f"{kafka.namespace}.") for t in kafka.admin().list_topics(timeout=10).topics)
