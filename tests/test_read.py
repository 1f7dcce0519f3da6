"""Reads outside a consumer group against the real broker: whole, or an error saying how far they got.

A read sets out for each partition's end when it starts (the last stable offset: the reader is
read_committed) and either reaches every one or raises ``IncompleteRead``; it never hands back
part of a topic as if it were all of it. The deadline is forced small here, so the tests need
no big topic."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import NewTopic
from typer.testing import CliRunner

from processors.cli.main import app
from processors.kafka.read import IncompleteRead, ReadError, count, records, snapshot
from tests.test_cli_errors import one_clear_line

PARTITIONS = 3


def topic(kafka, name: str, partitions: int = PARTITIONS) -> str:
    full = f"{kafka.namespace}.{name}"
    admin = kafka.admin()
    for future in admin.create_topics([NewTopic(full, partitions, 1)]).values():
        future.result()
    return full


def filled(kafka, name: str, per_partition: int = 4) -> str:
    full = topic(kafka, name)
    producer = kafka.producer()
    for p in range(PARTITIONS):
        for i in range(per_partition):
            producer.produce(full, value=f"{p}-{i}".encode(), partition=p)
    assert producer.flush(10) == 0
    return full


def test_a_read_past_its_deadline_fails_and_says_how_far_it_got(kafka):
    name = filled(kafka, "slow")
    with pytest.raises(IncompleteRead) as failure:
        snapshot(kafka, name, timeout=0)
    assert failure.value.topic == name and failure.value.records == 0
    assert [(p.partition, p.reached, p.target) for p in failure.value.progress] == [(0, 0, 4), (1, 0, 4), (2, 0, 4)]
    assert str(failure.value).startswith(f"reading {name} did not reach its end within 0s: partition 0 at offset 0 "
                                         f"of 4, partition 1 at offset 0 of 4, partition 2 at offset 0 of 4 "
                                         f"(0 of 3 partitions complete, 0 records read)")

    got = []
    with pytest.raises(IncompleteRead) as failure:  # the deadline passes while the caller holds a record
        for msg in records(kafka, name, timeout=2):
            got.append(msg)
            time.sleep(2.1)
    assert failure.value.records == len(got) <= 1, "nothing read past the deadline"
    reached = {p.partition: p.reached for p in failure.value.progress}
    assert reached == {p: (1 if any(m.partition() == p for m in got) else 0) for p in range(PARTITIONS)}
    assert not all(p.complete for p in failure.value.progress)

    assert sorted(m.value() for m in snapshot(kafka, name)) == sorted(
        f"{p}-{i}".encode() for p in range(PARTITIONS) for i in range(4)), "with time, the whole topic"


def test_a_transactional_topic_is_read_whole_past_its_markers_and_aborted_records(kafka):
    """Partition 0 ends in an aborted transaction (its last offsets are aborted records and a marker,
    none of them returned); partition 1 has an open transaction past its last stable offset."""
    name = topic(kafka, "tx", partitions=2)
    producer = kafka.producer(**{"transactional.id": f"{name}.writer"})
    producer.init_transactions()
    for txn, commit in enumerate([True, False, True, False]):
        producer.begin_transaction()
        for i in range(3):
            producer.produce(name, value=f"{txn}-{i}".encode(), partition=0)
        (producer.commit_transaction if commit else producer.abort_transaction)()
    producer.begin_transaction()
    producer.produce(name, value=b"committed", partition=1)
    producer.commit_transaction()
    producer.begin_transaction()
    producer.produce(name, value=b"open", partition=1)
    producer.flush(10)

    read = snapshot(kafka, name, timeout=20)  # a read that waited for the open transaction would fail
    assert sorted((m.partition(), m.value()) for m in read) == sorted(
        [(0, f"{txn}-{i}".encode()) for txn in (0, 2) for i in range(3)] + [(1, b"committed")])

    producer.commit_transaction()
    assert [m.value() for m in snapshot(kafka, name) if m.partition() == 1] == [b"committed", b"open"]


def test_a_topic_the_broker_lacks_is_an_error_not_an_empty_read(kafka):
    missing = f"{kafka.namespace}.never.created"
    for read in (snapshot, count):
        with pytest.raises(ReadError, match=f"topic {missing}: "):
            read(kafka, missing)


def test_tail_short_of_the_end_exits_with_one_line(kafka):
    triggers = topic(kafka, "support_ticket.triggers", partitions=1)
    producer = kafka.producer()
    producer.produce(triggers, value=b"not avro")
    assert producer.flush(10) == 0

    env = {"HANDOFF_NAMESPACE": kafka.namespace}
    result = CliRunner().invoke(app, ["tail", "support_ticket.triggers", "--timeout", "0",
                                      "--bootstrap", kafka.bootstrap_servers], env=env)
    assert result.exit_code == 1
    line = one_clear_line(result.stderr)
    assert line.startswith(f"reading {triggers} did not reach its end within 0s: ") and "1 records" not in line

    result = CliRunner().invoke(app, ["tail", "support_ticket.triggers", "--bootstrap", kafka.bootstrap_servers],
                                env=env)
    assert result.exit_code == 0 and result.stdout.count('"undecoded"') == 1, result.output
