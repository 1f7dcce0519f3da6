"""Produce and confirm against the real broker: a record counts only once acknowledged; one it
refuses is named (by its line, for ``handoff produce``) and a command fails with one clear error."""

from __future__ import annotations

import json
import os

import pytest
from confluent_kafka.admin import NewTopic

from processors.kafka.read import snapshot
from processors.kafka.topics import Role
from processors.kafka.write import NotDelivered, deliver, write
from processors.ops.produce import produce_file
from processors.workflow.workflow import load_workflow
from tests.test_serde import TICKET_V1

MAX_BYTES = 4096


@pytest.fixture
def small_topic(kafka) -> str:
    """A topic whose broker refuses records over MAX_BYTES (``max.message.bytes``): a real delivery failure."""
    name = f"{kafka.namespace}.support_ticket.triggers"
    admin = kafka.admin()
    admin.create_topics([NewTopic(name, 1, 1, config={"max.message.bytes": str(MAX_BYTES)})])[name].result(timeout=30)
    return name


def one_per_batch(kafka):
    """A producer sending each record in its own batch: the broker refuses a whole batch, so only the
    record over the limit fails."""
    return kafka.producer(**{"batch.num.messages": 1})


def too_big() -> str:
    return os.urandom(MAX_BYTES * 2).hex()  # random: compression cannot bring it under the limit


def test_write_returns_the_acknowledged_records_and_raises_naming_the_topic_on_a_refusal(kafka, small_topic):
    acknowledged = write(kafka.producer(), small_topic, [(b"a", b"1"), ("b", b"2")], what="test records")
    assert sorted((m.key(), m.value()) for m in acknowledged) == [(b"a", b"1"), (b"b", b"2")]
    assert all(m.offset() >= 0 for m in acknowledged)

    deliveries = deliver(one_per_batch(kafka), small_topic, [(b"c", b"3"), (b"d", too_big().encode()), (b"e", b"5")])
    assert deliveries.sent == 3 and list(deliveries.failed) == [1] and deliveries.unanswered == 0
    assert sorted(m.key() for m in deliveries.acknowledged) == [b"c", b"e"]
    with pytest.raises(NotDelivered) as failure:
        write(kafka.producer(), small_topic, [(b"f", too_big().encode())], what="test records", then="do this")
    message = str(failure.value)
    assert message.startswith(f"{small_topic}: 1 of 1 test records not acknowledged by the broker (")
    assert "too large" in message.lower() and message.endswith("; do this") and "\n" not in message
    assert sorted(m.key() for m in snapshot(kafka, small_topic)) == [b"a", b"b", b"c", b"e"]


def test_handoff_produce_names_the_line_the_broker_refused(kafka, small_topic, tmp_path):
    big = {**TICKET_V1, "event_id": "evt_2", "ticket": {**TICKET_V1["ticket"], "body": too_big()}}
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(t) for t in ({**TICKET_V1, "event_id": "evt_1"}, big,
                                                       {**TICKET_V1, "event_id": "evt_3"})) + "\n")
    trigger = load_workflow("support_ticket", kafka.namespace).spec(Role.triggers)
    summary = produce_file(path, one_per_batch(kafka), small_topic, trigger.serde(kafka), trigger.key_field)
    assert summary.sent == 2 and not summary.rejected
    assert [f.line for f in summary.failed] == [2] and "too large" in summary.failed[0].reason.lower()
