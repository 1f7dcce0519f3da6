"""Flow under rebalances: a partition paused by backpressure is fetched again after it comes back."""

import asyncio
import threading
import time

import pytest
from confluent_kafka import TopicPartition

from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import apply
from processors.runtime.options import Guarantee
from processors.runtime.runtime import RuntimeOptions, StageRuntime
from processors.runtime.stage import Emit, Record, Stage
from processors.workflow.workflow import load_topics
from tests.test_runtime import produce_tickets
from tests.test_serde import TICKET_V1

PARTITIONS = 6
PROGRESS_WAIT_S = 90  # a bound, not a figure: progress normally comes within seconds


class QuickLeave(KafkaSettings):
    """A short session timeout: a member that stops (static membership sends no leave) gives its
    partitions back in seconds, not the default 45 s."""

    def consumer(self, group: str, **overrides):
        return super().consumer(group, **{"session.timeout.ms": 6000, "heartbeat.interval.ms": 500, **overrides})


class SlowModel(Stage):
    """A scripted slow model: every record takes 250 ms, so a backlog builds and pauses intake.
    ``done`` counts the records this instance processed, per partition; ``group`` those of every instance."""

    name = "slow"
    inputs = ["support_ticket.triggers"]

    def __init__(self, group: dict[int, int]):
        self.done: dict[int, int] = {}
        self.group = group

    async def process(self, record: Record) -> list[Emit]:
        await asyncio.sleep(0.25)
        for counts in (self.done, self.group):
            counts[record.partition] = counts.get(record.partition, 0) + 1
        return []


def wait_for_progress_everywhere(done: dict[int, int], sizes: dict[int, int], what: str) -> None:
    """Every partition processes at least one more record than now, within the bound; none has run dry
    (a partition with nothing left proves nothing)."""
    before = dict(done)
    assert all(before.get(p, 0) < sizes[p] for p in sizes), f"{what}: a partition may have run dry ({before}, of {sizes})"
    deadline = time.monotonic() + PROGRESS_WAIT_S
    while time.monotonic() < deadline:
        stuck = [p for p in sizes if done.get(p, 0) <= before.get(p, 0)]
        if not stuck:
            return
        time.sleep(0.2)
    pytest.fail(f"{what}: partitions {stuck} made no progress in {PROGRESS_WAIT_S}s (before {before}, now {dict(done)})")


def partition_sizes(kafka, topic: str) -> dict[int, int]:
    consumer = kafka.consumer("sizes")
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
    finally:
        consumer.close()


def start(runtime: StageRuntime) -> threading.Thread:
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("guarantee", [Guarantee.at_least_once, Guarantee.exactly_once])
def test_partitions_paused_by_a_backlog_are_fetched_again_after_each_rebalance(kafka, guarantee):
    """A paused first instance; a second joins (the first's partitions are revoked and reassigned while
    it is paused), then leaves (they all come back): every partition makes progress after each."""
    settings = QuickLeave(**kafka.model_dump())
    topics = load_topics("support_ticket", kafka.namespace)
    apply(kafka.admin(), list(topics.values()))
    tickets = [{**TICKET_V1, "event_id": f"evt_{i:05d}", "customer": {**TICKET_V1["customer"], "id": f"cus_{i % 600}"}}
               for i in range(12_000)]
    produce_tickets(kafka, topics, tickets)
    sizes = partition_sizes(kafka, topics["support_ticket.triggers"].name)
    group: dict[int, int] = {}
    options = dict(guarantee=guarantee, max_in_flight=2, max_buffered=40, commit_interval_s=0.5, drain_timeout_s=2)
    first = StageRuntime(SlowModel(group), "support_ticket", topics, settings, RuntimeOptions(instance="first", **options))
    second = StageRuntime(SlowModel(group), "support_ticket", topics, settings, RuntimeOptions(instance="second", **options))
    threads = [start(first)]
    try:
        wait_for_progress_everywhere(first.stage.done, sizes, "first instance alone")
        threads.append(start(second))
        deadline = time.monotonic() + PROGRESS_WAIT_S
        while not second.stage.done:  # it has partitions: the first's were revoked and assigned again
            assert time.monotonic() < deadline, "the second instance never got partitions"
            time.sleep(0.1)
        wait_for_progress_everywhere(group, sizes, "after the second instance joined")
        second.stop()
        threads[1].join(60)
        assert not threads[1].is_alive(), "the second instance did not stop"
        wait_for_progress_everywhere(first.stage.done, {p: sizes[p] for p in second.stage.done},
                                     "the first instance takes the second's partitions")  # the rebalance is over
        wait_for_progress_everywhere(first.stage.done, sizes, "after the second instance left")
    finally:
        first.stop()
        second.stop()
        for thread in threads:
            thread.join(60)
