"""With ``SCHEMA_REGISTRY_URL`` set, against the real broker and a registry on loopback
(``tests/registry_server.py``, the Confluent REST subset the serde uses): what a stage writes to
its ledger and what a command writes to the control topic are Confluent-framed, and whoever
reads them again — a restarted stage, another command — decodes them through the registry. The
whole pipeline runs against a registry that wants basic auth, with another subject-name strategy,
and is restarted in the middle."""

from __future__ import annotations

import pytest

from processors.avro.registry import Registry, RegistryUnavailable, SubjectNameStrategy
from processors.avro.serde import AvroSerde
from processors.control.store import ControlStore
from processors.kafka.read import count, snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.kafka.write import write
from processors.offline.outputs import decision_suffixes, read
from processors.ops.summary import collect
from processors.pipeline import Pipeline
from processors.records import PromptRef, SeenEvent, Trace, WorkItem, dumps
from processors.workflow.workflow import Workflow
from tests.conftest import deployed, tickets
from tests.registry_server import RegistryServer

CONFLUENT_MAGIC = 0
ANSWER = {"category": "billing", "urgency": "low", "confidence": 0.95, "reason": "A question about an invoice."}


@pytest.fixture(scope="module")
def registry():
    """One per module: serdes are shared per registry URL for the life of the process."""
    with RegistryServer() as server:
        yield server


@pytest.fixture
def framed(kafka, registry) -> KafkaSettings:
    """The test's Kafka settings with the registry set, as ``SCHEMA_REGISTRY_URL`` sets it."""
    return kafka.model_copy(update={"schema_registry_url": registry.url})


def classified(workflow: Workflow, settings: KafkaSettings, model: str) -> None:
    """One work item for event e1 on ``<wf>.classified``, as classify writes it (with the registry)."""
    spec = workflow.spec(Role.classified)
    event = {k: v for k, v in tickets()[0].items() if k != "expected"}
    item = WorkItem(event_id="e1", workflow=workflow.name, event=dumps(event), model=model, answer=dumps(ANSWER),
                    raw_answer=dumps(ANSWER), prompt=PromptRef(name=workflow.prompt_spec.name,
                                                               version=workflow.prompt_spec.version))
    write(settings.producer(), spec.name, [(event["customer"]["id"], spec.serde(settings).encode(
        item.model_dump(), spec.name))], what="work items")


def test_a_restarted_validate_stage_reads_its_registry_framed_ledger(framed, registry):
    workflow = deployed("support_ticket", framed)
    classified(workflow, framed, "first")
    assert Pipeline(workflow, framed, ["validate"]).run_until_drained(timeout=120)
    seen = workflow.spec(Role.seen)
    entries = snapshot(framed, seen.name)
    assert [m.key() for m in entries] == [b"e1"]
    assert entries[0].value()[0] == CONFLUENT_MAGIC, "the ledger entry is in the Confluent wire format"
    assert f"{seen.name}-value" in registry.subjects

    classified(workflow, framed, "second")  # another record for the same event: a duplicate
    restarted = Pipeline(workflow, framed, ["validate"])  # a new stage: it loads the ledger from the topic
    assert restarted.run_until_drained(timeout=120)
    assert [w.model for w in read(workflow, framed, Role.validated, WorkItem)] == ["first"]
    assert [SeenEvent.model_validate(seen.serde(framed).decode(m.value())).event_id
            for m in snapshot(framed, seen.name)] == ["e1"]
    assert any("duplicate event id" in (t.error or "") for t in read(workflow, framed, Role.traces, Trace)
               if t.step == "validate")


def test_the_control_store_publishes_and_reads_a_state_through_the_registry(framed, registry):
    workflow = deployed("support_ticket", framed)
    published = ControlStore(framed, workflow).publish("mode shadow", mode="shadow", changed_by="test")
    control = workflow.spec(Role.control)
    [record] = snapshot(framed, control.name)
    assert record.value()[0] == CONFLUENT_MAGIC
    assert f"{control.name}-value" in registry.subjects
    assert ControlStore(framed, workflow).current() == published  # another reader: decoded by registry id


def test_each_subject_name_strategy_names_the_subject_it_says(registry):
    for strategy, subject in [(SubjectNameStrategy.topic, "t.decisions.billing-value"),
                              (SubjectNameStrategy.record, "handoff.Decision"),
                              (SubjectNameStrategy.topic_record, "t.decisions.billing-handoff.Decision")]:
        serde = AvroSerde("handoff/decision", registry=Registry(url=registry.url, strategy=strategy))
        serde.framing.header(serde.writer, "t.decisions.billing")  # registers the writer schema
        assert subject in registry.subjects, strategy


def test_a_registry_refusing_the_credentials_is_named_before_anything_runs():
    with RegistryServer(users={"handoff": "right"}) as guarded:
        Registry(url=guarded.url, properties=(("basic.auth.user.info", "handoff:right"),)).check()
        with pytest.raises(RegistryUnavailable, match="refused: HTTP 401.*SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"):
            Registry(url=guarded.url, properties=(("basic.auth.user.info", "handoff:wrong"),)).check()
    with pytest.raises(RegistryUnavailable, match="no Schema Registry answers"):
        Registry(url=guarded.url, properties=(("max.retries", "0"),)).check()


def test_the_whole_pipeline_runs_through_an_authenticated_registry_with_a_restart_in_the_middle(kafka, receiver):
    with RegistryServer(users={"handoff": "registry-secret"}) as guarded:
        framed = kafka.model_copy(update={"schema_registry_url": guarded.url,
                                          "schema_registry": {"basic.auth.user.info": "handoff:registry-secret"},
                                          "subject_name_strategy": SubjectNameStrategy.topic_record})
        workflow = deployed("support_ticket", framed)
        ControlStore(framed, workflow).publish("review threshold 0.75", review_threshold=0.75, changed_by="test")
        trigger = workflow.spec(Role.triggers)
        events = [{k: v for k, v in t.items() if k != "expected"} for t in tickets()[:30]]

        def send(batch: list[dict]) -> None:
            write(framed.producer(), trigger.name, [(e["customer"]["id"], trigger.serde(framed).encode(e, trigger.name))
                                                    for e in batch], what="triggers")

        send(events[:15])
        assert Pipeline(workflow, framed).run_until_drained(timeout=180)
        send(events[15:] + events[:5])  # the rest, and five again: the restored duplicate ledger must know them
        assert Pipeline(workflow, framed).run_until_drained(timeout=180)  # every stage restarted in the middle

        summary = collect(workflow, framed)
        assert summary.triggers == 35 and summary.placed == 30 and not summary.in_two_places()
        decided = [workflow.topics[workflow.topic(s)].name for s in decision_suffixes(workflow)]
        assert count(framed, *decided) == len(summary.decided), "no event decided twice"
        assert guarded.refused == 0
        assert f"{workflow.spec(Role.seen).name}-handoff.SeenEvent" in guarded.subjects
        assert f"{workflow.spec(Role.control).name}-handoff.ControlState" in guarded.subjects
        assert all(m.value()[0] == CONFLUENT_MAGIC for m in snapshot(framed, workflow.spec(Role.actions_done).name))

