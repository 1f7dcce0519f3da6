"""The stage runtime against the real broker: order within a key, poison to the dead letters."""

import asyncio
import random
import threading
import time

import pytest
from confluent_kafka import Producer

from processors.avro.serde import AvroSerde
from processors.kafka.read import count, snapshot
from processors.kafka.topics import apply
from processors.runtime.runtime import RuntimeOptions, StageRuntime
from processors.runtime.stage import DeadLetter, Emit, Record, Stage
from processors.workflow.workflow import load_topics
from tests.test_serde import TICKET_V1


class EchoStage(Stage):
    """Writes one outcome per trigger, after a latency chosen per event, so later records
    often finish before earlier ones."""

    name = "echo"
    inputs = ["support_ticket.triggers"]

    def __init__(self, delays: dict[str, float]):
        self.delays = delays
        self.running_per_key: dict[bytes, int] = {}
        self.overlaps = 0

    async def process(self, record: Record) -> list[Emit]:
        self.running_per_key[record.key] = self.running_per_key.get(record.key, 0) + 1
        self.overlaps += self.running_per_key[record.key] > 1
        await asyncio.sleep(self.delays.get(record.value["event_id"], 0))
        self.running_per_key[record.key] -= 1
        if record.value["ticket"]["subject"] == "poison":
            raise DeadLetter("test_poison", "this record is poison by design", attempts=3)
        return [Emit("support_ticket.outcomes", key=record.key, value={
            "event_id": record.value["event_id"], "workflow": "support_ticket", "outcome_type": "closed",
            "value": str(record.offset), "at_ms": record.timestamp_ms, "source": record.key.decode()})]


def produce_tickets(kafka, topics, tickets, extra=()):
    serde = AvroSerde("support_ticket/created.v1")
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for t in tickets:
        producer.produce(topics["support_ticket.triggers"].name, key=t["customer"]["id"], value=serde.encode(t))
    for key, value in extra:
        producer.produce(topics["support_ticket.triggers"].name, key=key, value=value)
    producer.flush(10)


def run_until(runtime: StageRuntime, done, timeout=60):
    thread = threading.Thread(target=runtime.run, kwargs={"until": done}, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "runtime did not finish in time"


def test_order_within_key_and_poison_paths(kafka):
    topics = load_topics("support_ticket", kafka.namespace)
    apply(kafka.admin(), list(topics.values()))
    rng = random.Random(3)
    tickets, delays = [], {}
    for i in range(120):
        customer = f"cus_{i % 7}"
        event_id = f"evt_{i:03d}"
        subject = "poison" if i in (10, 50) else "hello"
        tickets.append({**TICKET_V1, "event_id": event_id, "ticket": {**TICKET_V1["ticket"], "subject": subject},
                        "customer": {**TICKET_V1["customer"], "id": customer}})
        delays[event_id] = rng.choice([0.0, 0.01, 0.05, 0.2])
    produce_tickets(kafka, topics, tickets, extra=[(b"cus_0", b"not avro at all"),
                                                   (b"cus_1", b"\xc3\x01" + b"\x11" * 8 + b"\x00")])
    stage = EchoStage(delays)
    outcomes = topics["support_ticket.outcomes"].name
    dlq = topics["support_ticket.dlq"].name
    runtime = StageRuntime(stage, "support_ticket", topics, kafka, RuntimeOptions(max_in_flight=16, commit_interval_s=0.2))
    run_until(runtime, every(0.5, lambda: count(kafka, outcomes, dlq) >= 122))

    out = snapshot(kafka, outcomes)
    assert len(out) == 118
    assert stage.overlaps == 0, "two records of one key ran at once"
    by_customer: dict[str, list[int]] = {}
    for m in out:
        record = AvroSerde("handoff/outcome").decode(m.value())
        by_customer.setdefault(record["source"], []).append(int(record["value"]))
    for customer, offsets in by_customer.items():
        assert offsets == sorted(offsets), f"{customer} outputs out of input order"

    dead = snapshot(kafka, dlq)
    reasons = sorted(dict(m.headers())["handoff.error.reason"].decode() for m in dead)
    assert reasons == ["not_avro", "test_poison", "test_poison", "unknown_schema"]
    poison = next(m for m in dead if dict(m.headers())["handoff.error.reason"] == b"test_poison")
    headers = dict(poison.headers())
    assert headers["handoff.original.topic"].decode() == topics["support_ticket.triggers"].name
    assert headers["handoff.attempts"] == b"3" and headers["handoff.stage"] == b"echo"
    assert AvroSerde("support_ticket/created").decode(poison.value())["ticket"]["subject"] == "poison"
    not_avro = next(m for m in dead if dict(m.headers())["handoff.error.reason"] == b"not_avro")
    assert not_avro.value() == b"not avro at all" and not_avro.key() == b"cus_0"

    # every input offset is committed: lag is zero after the poison
    consumer = kafka.consumer(runtime.group)
    parts = consumer.list_topics(topics["support_ticket.triggers"].name).topics[topics["support_ticket.triggers"].name].partitions
    from confluent_kafka import TopicPartition
    committed = consumer.committed([TopicPartition(topics["support_ticket.triggers"].name, p) for p in parts], timeout=10)
    for tp in committed:
        low, high = consumer.get_watermark_offsets(tp, timeout=10)
        assert tp.offset == high or (high == 0 and tp.offset < 0), f"lag on partition {tp.partition}"
    consumer.close()


def every(seconds: float, check):
    """``check`` for a runtime's ``until``, evaluated at most once per ``seconds``."""
    state = {"next": 0.0, "result": False}

    def until() -> bool:
        if time.monotonic() >= state["next"]:
            state["next"] = time.monotonic() + seconds
            state["result"] = check()
        return state["result"]
    return until


def test_a_missing_broker_is_a_clear_error_not_a_hang():
    """No broker answers: the runtime gives up after broker_timeout_s with BrokerUnavailable."""
    from processors.dev.localkafka import free_port
    from processors.kafka.settings import KafkaSettings
    from processors.runtime.runtime import BrokerUnavailable

    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", namespace="nobroker")
    topics = load_topics("support_ticket", settings.namespace)
    runtime = StageRuntime(EchoStage({}), "support_ticket", topics, settings, RuntimeOptions(broker_timeout_s=2))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="answered"):
        runtime.run(until=lambda: time.monotonic() - started > 60)


class ForgetfulTicker(EchoStage):
    """A buggy stage: its tick dead-letters a record it never kept."""

    def tick(self, now_ms, partitions):
        return [DeadLetter("expired", "waited too long")]


def test_a_tick_dead_letter_without_its_record_stops_the_stage_with_a_clear_error(kafka):
    """Such a dead letter has no bytes to keep: a stage bug, reported as one, never an AttributeError."""
    topics = load_topics("support_ticket", kafka.namespace)
    apply(kafka.admin(), list(topics.values()))
    runtime = StageRuntime(ForgetfulTicker({}), "support_ticket", topics, kafka)
    started = time.monotonic()
    with pytest.raises(TypeError, match="tick\\(\\) must carry the original record"):
        runtime.run(until=lambda: time.monotonic() - started > 30)


class Blunt(EchoStage):
    """Fails every record with an error message holding commas and a line break."""

    async def process(self, record: Record) -> list[Emit]:
        raise ValueError("expected a, b, or c,\ngot d=e")


def test_a_tombstone_is_dead_lettered_null_and_dead_letter_headers_hold_no_separator(kafka):
    """A null value stays null in its dead letter (not empty); kcat's %h joins headers with commas, so no
    handoff.* header value holds a comma or a line break."""
    topics = load_topics("support_ticket", kafka.namespace)
    apply(kafka.admin(), list(topics.values()))
    produce_tickets(kafka, topics, [TICKET_V1], extra=[(b"cus_0", None)])
    dlq = topics["support_ticket.dlq"].name
    runtime = StageRuntime(Blunt({}), "support_ticket", topics, kafka, RuntimeOptions(commit_interval_s=0.2))
    run_until(runtime, every(0.5, lambda: count(kafka, dlq) >= 2))

    dead = {dict(m.headers())["handoff.error.reason"]: m for m in snapshot(kafka, dlq)}
    assert sorted(dead) == [b"not_avro", b"stage_error"]
    assert dead[b"not_avro"].value() is None and dead[b"not_avro"].key() == b"cus_0"
    assert dict(dead[b"stage_error"].headers())["handoff.error.message"] == b"expected a; b; or c; got d=e"
    for letter in dead.values():
        for name, value in letter.headers():
            if name.startswith("handoff."):
                assert b"," not in value and b"\n" not in value, f"{name}: {value!r}"
