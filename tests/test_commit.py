"""The committers against the real broker: one per guarantee, and each commits only what is durable."""

import os
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from processors.kafka.read import snapshot
from processors.runtime.commit import (
    COMMITTERS,
    AtLeastOnceCommitter,
    DeliveryFailed,
    ExactlyOnceCommitter,
    Moment,
    TransactionLost,
    committer_for,
)
from processors.runtime.options import Guarantee
from processors.runtime.output import Output
from processors.runtime.partition import PartitionBook
from processors.runtime.runtime import _refused_to


def topic(kafka, name: str, **config: str) -> str:
    full = f"{kafka.namespace}.{name}"
    admin = kafka.admin()  # kept until the futures resolve: a destroyed client fails them
    for future in admin.create_topics([NewTopic(full, 1, 1, config=config)]).values():
        future.result()
    return full


def released(committer, producer, book: PartitionBook) -> None:
    """Hand the book's released outputs to the producer, as the runtime does."""
    for offset, outputs in book.release():
        for out in outputs:
            producer.produce(out.topic, value=out.value, key=out.key, on_delivery=committer.delivery(book, offset))


def committed(consumer, name: str) -> int:
    return consumer.committed([TopicPartition(name, 0)], timeout=10)[0].offset


def test_each_guarantee_has_its_committer():
    assert set(COMMITTERS) == set(Guarantee)
    assert type(committer_for(Guarantee.at_least_once)) is AtLeastOnceCommitter
    assert type(committer_for(Guarantee.exactly_once)) is ExactlyOnceCommitter
    assert committer_for(Guarantee.exactly_once).producer_config("member") == {"transactional.id": "member"}
    assert committer_for(Guarantee.at_least_once).producer_config("member") == {}


def test_at_least_once_commits_what_the_broker_acknowledged(kafka):
    name = topic(kafka, "io")
    producer, consumer = kafka.producer(), kafka.consumer("commit")
    committer = committer_for(Guarantee.at_least_once)
    committer.start(producer, consumer)
    book = PartitionBook(epoch=1)
    book.expect(0)
    book.expect(1)
    book.finish(1, [Output(name, b"k", b"one")])
    assert book.release() == [], "offset 0 is still running: nothing after it leaves"
    book.finish(0, [Output(name, b"k", b"zero")])
    released(committer, producer, book)
    committer.commit({(name, 0): book}, Moment.interval)
    assert book.committed_to is None, "no acknowledgement served yet: an interval commit does not wait"
    committer.commit({(name, 0): book}, Moment.revoke)
    assert book.committed_to == 2 and committed(consumer, name) == 2
    committer.close()
    consumer.close()


def test_at_least_once_stops_before_committing_past_a_failed_delivery(kafka):
    name = topic(kafka, "small", **{"max.message.bytes": "1024"})
    producer, consumer = kafka.producer(), kafka.consumer("commit")
    committer = committer_for(Guarantee.at_least_once)
    committer.start(producer, consumer)
    book = PartitionBook(epoch=1)
    book.finish(0, [Output(name, b"k", os.urandom(20_000))])  # the broker refuses it: too large for the topic
    released(committer, producer, book)
    with pytest.raises(DeliveryFailed, match="errors: .*too large"):
        committer.commit({(name, 0): book}, Moment.revoke)
    assert book.committed_to is None and committed(consumer, name) < 0
    committer.close()
    consumer.close()


def test_exactly_once_publishes_outputs_and_offsets_together(kafka):
    name = topic(kafka, "tx")
    consumer = kafka.consumer("commit")
    committer = committer_for(Guarantee.exactly_once)
    producer = kafka.producer(**committer.producer_config(f"{kafka.namespace}.commit.a"))
    committer.start(producer, consumer)
    book = PartitionBook(epoch=1)
    book.finish(0, [Output(name, b"k", b"zero")])
    released(committer, producer, book)
    producer.flush(10)
    assert snapshot(kafka, name) == [], "read_committed: nothing before the transaction commits"
    committer.commit({(name, 0): book}, Moment.interval)
    # the commit markers reach the partition just after commit_transaction returns: until then the
    # last stable offset, where a strict read_committed snapshot ends, is still before the record
    deadline = time.monotonic() + 10
    while not (values := [m.value() for m in snapshot(kafka, name)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert values == [b"zero"]
    assert book.committed_to == 1 and committed(consumer, name) == 1
    committer.close()
    consumer.close()
    producer.flush(10)


def test_an_authorization_failure_is_named_not_retried():
    """A transactional id the principal may not use fails the start at once with what was refused; a
    lost transaction (any other error) is retried (runtime._retried)."""
    lost = TransactionLost("init_transactions failed")
    lost.__cause__ = KafkaException(KafkaError(KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED))
    assert "transactional id" in _refused_to(lost)
    assert _refused_to(KafkaException(KafkaError(KafkaError._TIMED_OUT))) is None
