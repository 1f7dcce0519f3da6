"""Topics as code: derived exactly as the files declared them; against the real broker, created, re-applied
idempotently, drift reported not fixed."""

import time
from pathlib import Path

import pytest
import yaml
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, ResourceType

from processors.avro.serde import RegistryFraming
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role, TopicSpec, apply, plan, workflow_topics
from processors.project import DataFileError
from processors.workflow.workflow import load_topics


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


def test_drift_is_reported_and_left_alone(kafka):
    specs = load_topics("support_ticket", kafka.namespace)
    admin = kafka.admin()
    apply(admin, list(specs.values()))
    triggers = specs["support_ticket.triggers"]
    admin.create_partitions([NewPartitions(triggers.name, triggers.partitions + 2)])[triggers.name].result(timeout=10)
    while len(admin.list_topics(timeout=10).topics[triggers.name].partitions) != triggers.partitions + 2:
        time.sleep(0.1)  # the broker's metadata catches up with the controller
    dlq = specs["support_ticket.dlq"]
    resource = ConfigResource(ResourceType.TOPIC, dlq.name, incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(timeout=10)
    described = ConfigResource(ResourceType.TOPIC, dlq.name)
    while admin.describe_configs([described])[described].result(timeout=10)["retention.ms"].value != "1000":
        time.sleep(0.1)  # the broker applies the controller's config change a moment later

    changes = {c.topic: c for c in apply(admin, list(specs.values()))}
    assert changes[triggers.name].action == "drift"
    assert f"partitions {triggers.partitions + 2} != declared {triggers.partitions}" in changes[triggers.name].detail
    assert changes[dlq.name].action == "drift" and "retention.ms 1000" in changes[dlq.name].detail
    # nothing was changed back or destroyed
    assert len(admin.list_topics(timeout=10).topics[triggers.name].partitions) == triggers.partitions + 2
    assert {c.action for t, c in changes.items() if t not in (triggers.name, dlq.name)} == {"ok"}
    assert plan(admin, [triggers])[0].action == "drift"


# ---- derived, not declared: the engine's topics and one decisions topic per route ---------------------

DECLARED = Path(__file__).parent / "data" / "declared_topics"
SHIPPED = ("support_ticket", "banking77")


def declared(workflow: str, namespace: str = "") -> dict[str, TopicSpec]:
    """What topics/<workflow>.yaml declared, topic by topic, before the engine's topics were derived."""
    prefix = f"{namespace}." if namespace else ""
    specs = [TopicSpec.model_validate(t) for t in yaml.safe_load((DECLARED / f"{workflow}.yaml").read_text())["topics"]]
    return {s.name: s.model_copy(update={"name": prefix + s.name}) for s in specs}


@pytest.mark.parametrize("workflow", SHIPPED)
def test_the_derived_topics_are_exactly_what_the_files_declared(workflow):
    """Names, partitions, replication, configs, schemas, keys and docs: nothing changes on a cluster."""
    assert load_topics(workflow, "ns") == declared(workflow, "ns")


def test_a_cluster_made_from_the_old_declaration_plans_nothing_new(kafka):
    admin = kafka.admin()
    for workflow in SHIPPED:
        apply(admin, list(declared(workflow, kafka.namespace).values()))
        changes = plan(admin, list(load_topics(workflow, kafka.namespace).values()))
        assert {c.action for c in changes} == {"ok"}, [str(c) for c in changes if c.action != "ok"]


def topic_file(root: Path, **fields) -> Path:
    body = {"workflow": "flow", "trigger": {"value_schema": "flow/event", "key_field": "id"}} | fields
    (root / "flow.yaml").write_text(yaml.safe_dump(body))
    return root


def test_an_override_changes_only_the_topic_it_names(tmp_path):
    root = topic_file(tmp_path, overrides={"review": {"retention_ms": 1000}, "decisions.b": {"partitions": 12}})
    topics = workflow_topics("flow", ["a", "b", "a"], "t1", root)
    assert list(topics)[:6] == ["flow.triggers", "flow.classified", "flow.repair", "flow.validated",
                                "flow.decisions.a", "flow.decisions.b"]  # a route named twice has one topic
    assert len(topics) == len(Role) - 1 + 2 and topics["flow.dlq"].name == "t1.flow.dlq"
    assert topics["flow.review"].retention_ms == 1000 and topics["flow.review"].value_schema == "handoff/review_item"
    assert topics["flow.decisions.b"].partitions == 12 and topics["flow.decisions.a"].partitions == 6
    assert topics["flow.triggers"] == TopicSpec(name="t1.flow.triggers", value_schema="flow/event", key_field="id")
    untouched = load_topics("support_ticket")["support_ticket.traces"]
    assert topics["flow.traces"].model_dump(exclude={"name"}) == untouched.model_dump(exclude={"name"})


@pytest.mark.parametrize("fields, message", [
    ({"overrides": {"decisions.c": {"partitions": 3}}}, "overrides: decisions.c: no such topic of flow"),
    ({"overrides": {"seen": {"cleanup_policy": "delete"}}}, "overrides.seen.cleanup_policy"),
    ({"trigger": {"partitions": 0}}, "trigger.partitions"),
    ({"workflow": "other"}, "workflow: 'other', expected 'flow'"),
])
def test_a_wrong_topic_file_names_the_file_and_the_field(tmp_path, fields, message):
    with pytest.raises(DataFileError) as failure:
        workflow_topics("flow", ["a", "b"], root=topic_file(tmp_path, **fields))
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
