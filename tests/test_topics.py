"""Topics as code against the real broker: create, idempotent re-apply, drift reported not fixed."""

import time

from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    ResourceType,
)

from processors.kafka.topics import apply, load_topics, plan


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

    changes = {c.topic: c for c in apply(admin, list(specs.values()))}
    assert changes[triggers.name].action == "drift"
    assert f"partitions {triggers.partitions + 2} != declared {triggers.partitions}" in changes[triggers.name].detail
    assert changes[dlq.name].action == "drift" and "retention.ms 1000" in changes[dlq.name].detail
    # nothing was changed back or destroyed
    assert len(admin.list_topics(timeout=10).topics[triggers.name].partitions) == triggers.partitions + 2
    assert {c.action for t, c in changes.items() if t not in (triggers.name, dlq.name)} == {"ok"}
    assert plan(admin, [triggers])[0].action == "drift"
