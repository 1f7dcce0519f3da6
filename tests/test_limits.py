"""Output size limits against the real broker: just under each limit is written, just over is dead-lettered.

Every topic a trigger's data flows into is tried, under each of the two limits: the topic's
``max.message.bytes`` (declared on its TopicSpec, or set on the broker only and read from there) and
the producer's ``message.max.bytes``. A dead letter over the dead-letter topic's limit keeps its
headers and a cut value. An output the broker refuses anyway (its limit is lower than declared)
becomes a dead letter of its input, and the partition carries on.
"""

import base64
import random
import threading
import time

import orjson
import pytest
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from processors.avro.serde import AvroSerde
from processors.clock import now_ms
from processors.kafka.read import snapshot
from processors.kafka.topics import apply
from processors.records import Original
from processors.runtime.dead_letter import Header, dead_letter
from processors.runtime.limits import BATCH_OVERHEAD, size
from processors.runtime.options import Guarantee
from processors.runtime.output import Output
from processors.runtime.runtime import RuntimeOptions, StageRuntime
from processors.runtime.stage import DeadLetter, Emit, Record, Stage
from processors.stages.classify import Classify
from processors.workflow.prompt import CUT_NOTE, DEFAULT_INPUT_CHARS, PromptSpec
from processors.workflow.workflow import load_topics, load_workflow
from tests.conftest import WORKFLOWS, deployed
from tests.test_records import SAMPLES
from tests.test_runtime import every, produce_tickets, run_until
from tests.test_serde import TICKET_V1

FLOWS = {  # declared topic -> its contract: every topic a trigger's data flows into, but the dead letters
    "support_ticket.classified": "handoff/work_item",
    "support_ticket.repair": "handoff/work_item",
    "support_ticket.validated": "handoff/work_item",
    "support_ticket.decisions.billing": "handoff/decision",
    "support_ticket.actions": "handoff/action_request",
    "support_ticket.review": "handoff/review_item",
    "support_ticket.traces": "handoff/trace",
}
DLQ = "support_ticket.dlq"
KEY = TICKET_V1["customer"]["id"].encode()
TOPIC_LIMIT = 20_000
PRODUCER_LIMIT = 30_000
POISON = "this record is poison by design"


class Scripted(Stage):
    """Writes, for each trigger, the record planned for its event id; a planned ``None`` dead-letters it."""

    name = "scripted"
    inputs = ["support_ticket.triggers"]

    def __init__(self, plans: dict[str, tuple[str, dict] | None]):
        self.plans = plans

    async def process(self, record: Record) -> list[Emit]:
        plan = self.plans[record.value["event_id"]]
        if plan is None:
            raise DeadLetter("test_poison", POISON)
        topic, value = plan
        return [Emit(topic, value, key=record.key)]


def padded(contract: str, topic: str, pad: int, fill: str = "w") -> tuple[dict, int]:
    """The contract's sample record, its ``workflow`` padded by ``pad`` characters (of ``fill``, repeated),
    and its size as the runtime counts it."""
    value = {**SAMPLES[contract].model_dump(), "workflow": (fill * (pad + 1))[:pad + 1]}
    return value, size(Output(topic, KEY, AvroSerde(contract).encode(value), []))


def largest_pad_within(contract: str, topic: str, most: int) -> int:
    low, high = 0, most
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if padded(contract, topic, mid)[1] <= most else (low, mid - 1)
    return low


def ticket(event_id: str, body: str = "short") -> dict:
    return {**TICKET_V1, "event_id": event_id, "ticket": {**TICKET_V1["ticket"], "body": body}}


def poison_near(triggers: str, dlq: str, target: int, event_id: str) -> dict:
    """A trigger whose dead letter is ``target`` bytes as the runtime counts it (give or take a digit of
    partition and offset)."""
    serde = AvroSerde("support_ticket/created.v1")

    def letter_size(body: int) -> int:
        record = Original(topic=triggers, partition=0, offset=10, timestamp_ms=now_ms(), key=KEY,
                          value=serde.encode(ticket(event_id, "b" * body)))
        return size(dead_letter(dlq, Scripted.name, record, "test_poison", DeadLetter("test_poison", POISON)))

    body = target - letter_size(0)
    return ticket(event_id, "b" * (body - (letter_size(body) - target)))


def by_event_id(kafka, topics, messages) -> dict[str, object]:
    """Dead letters by the event id of the trigger at their original partition and offset."""
    serde = AvroSerde("support_ticket/created")
    triggers = {(m.partition(), m.offset()): serde.decode(m.value())["event_id"]
                for m in snapshot(kafka, topics["support_ticket.triggers"].name)}
    found = {}
    for msg in messages:
        headers = dict(msg.headers())
        found[triggers[(int(headers[Header.original_partition]), int(headers[Header.original_offset]))]] = msg
    return found


def lag_is_zero(kafka, runtime: StageRuntime, topic: str) -> bool:
    """Every record of ``topic`` committed by the runtime's group (False while the broker cannot tell yet)."""
    consumer = kafka.consumer(runtime.group)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        highs = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in committed]
        return all(tp.offset == high or (high == 0 and tp.offset < 0) for tp, high in zip(committed, highs))
    except KafkaException:  # topics just created: their leaders are not known everywhere yet
        return False
    finally:
        consumer.close()


def run_to_the_end(kafka, stage: Stage, topics, options: RuntimeOptions) -> None:
    runtime = StageRuntime(stage, "support_ticket", topics, kafka, options)
    run_until(runtime, every(0.5, lambda: lag_is_zero(kafka, runtime, topics["support_ticket.triggers"].name)), 90)


def lowered(topics, names, limit: int) -> dict:
    return {n: s.model_copy(update={"max_message_bytes": limit}) if n in names else s for n, s in topics.items()}


@pytest.mark.parametrize("limit, guarantee", [("topic", Guarantee.exactly_once), ("producer", Guarantee.at_least_once)])
def test_just_under_each_limit_is_written_and_just_over_is_dead_lettered(kafka, limit, guarantee):
    """Every flow topic and the dead letters, at the topic's limit (set on the broker and read from there, or
    only declared in the topic file) under exactly_once, and at the producer's under at_least_once."""
    topics = load_topics("support_ticket", kafka.namespace)
    if limit == "topic":
        on_the_broker = set(list(FLOWS)[::2]) | {DLQ}  # the broker has the limit; the rest only declare it
        apply(kafka.admin(), list(lowered(topics, on_the_broker, TOPIC_LIMIT).values()))
        given = lowered(topics, set(FLOWS) - on_the_broker, TOPIC_LIMIT)
        options = RuntimeOptions(guarantee=guarantee, commit_interval_s=0.2)
        most = TOPIC_LIMIT - BATCH_OVERHEAD
    else:
        apply(kafka.admin(), list(topics.values()))
        given = topics
        options = RuntimeOptions(guarantee=guarantee, commit_interval_s=0.2, max_message_bytes=PRODUCER_LIMIT)
        most = PRODUCER_LIMIT
    plans, tickets, sizes = {}, [], {}
    for topic, contract in FLOWS.items():
        pad = largest_pad_within(contract, given[topic].name, most)
        for case, extra in (("under", 0), ("over", 1)):
            value, sizes[case, topic] = padded(contract, given[topic].name, pad + extra)
            plans[f"{case}:{topic}"] = (topic, value)
            tickets.append(ticket(f"{case}:{topic}"))
        assert most - 2 <= sizes["under", topic] <= most < sizes["over", topic]
    names = given["support_ticket.triggers"].name, given[DLQ].name
    for case, delta in (("letter_under", -20), ("letter_over", 20)):
        plans[case] = None
        tickets.append(poison_near(*names, most + delta, case))
    produce_tickets(kafka, topics, tickets)

    run_to_the_end(kafka, Scripted(plans), given, options)

    for topic in FLOWS:
        (written,) = snapshot(kafka, given[topic].name)
        assert size(Output(written.topic(), written.key(), written.value(), list(written.headers() or []))) \
            == sizes["under", topic], f"{topic}: the record just under its limit"
    dead = by_event_id(kafka, topics, snapshot(kafka, given[DLQ].name))
    assert sorted(dead) == sorted([f"over:{t}" for t in FLOWS] + ["letter_under", "letter_over"])
    sent = {t["event_id"]: AvroSerde("support_ticket/created.v1").encode(t) for t in tickets}
    for topic in FLOWS:
        headers = dict(dead[f"over:{topic}"].headers())
        assert headers[Header.error_reason] == b"output_too_large"
        message = headers[Header.error_message].decode()
        assert given[topic].name in message and str(sizes["over", topic]) in message and str(most) in message
        assert dead[f"over:{topic}"].value() == sent[f"over:{topic}"]
    whole, cut = dead["letter_under"], dead["letter_over"]
    assert Header.value_truncated not in dict(whole.headers()) and whole.value() == sent["letter_under"]
    headers = dict(cut.headers())
    assert headers[Header.value_truncated] == str(len(sent["letter_over"])).encode()
    assert headers[Header.error_reason] == b"test_poison" and headers[Header.stage] == b"scripted"
    assert sent["letter_over"].startswith(cut.value()) and len(cut.value()) < len(sent["letter_over"])
    assert size(Output(cut.topic(), cut.key(), cut.value(), list(cut.headers()))) <= most


def test_an_output_the_broker_refuses_is_dead_lettered_and_the_partition_carries_on(kafka):
    """The topics' limits are lowered on the broker after the runtime read them: the refused output's input,
    and the refused dead letter's headers, still get to the dead letters; the record behind them is written."""
    topics = load_topics("support_ticket", kafka.namespace)
    apply(kafka.admin(), list(topics.values()))
    classified, validated = "support_ticket.classified", "support_ticket.validated"
    name = topics[classified].name
    noise = base64.b64encode(random.Random(7).randbytes(TOPIC_LIMIT * 2)).decode()  # lz4 cannot shrink it below the limit
    big, _ = padded(FLOWS[classified], name, TOPIC_LIMIT + 5000, noise)
    small, _ = padded(FLOWS[validated], topics[validated].name, 10)  # another topic: not in the refused batch
    plans = {"big": (classified, big), "poison": None, "small": (validated, small)}
    tickets = [ticket("big"), ticket("poison", noise[:TOPIC_LIMIT + 5000]), ticket("small")]  # one key: one partition
    runtime = StageRuntime(Scripted(plans), "support_ticket", topics, kafka, RuntimeOptions(commit_interval_s=0.2))
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: name in runtime.limits.topic_bytes)  # read at start, before the first record
        lowered_on_the_broker = [ConfigResource(ResourceType.TOPIC, topics[t].name, incremental_configs=[
            ConfigEntry("max.message.bytes", str(TOPIC_LIMIT), incremental_operation=AlterConfigOpType.SET)])
            for t in (classified, DLQ)]
        admin = kafka.admin()
        for future in admin.incremental_alter_configs(lowered_on_the_broker).values():
            future.result(timeout=30)
        produce_tickets(kafka, topics, tickets)
        wait_until(lambda: lag_is_zero(kafka, runtime, topics["support_ticket.triggers"].name))
    finally:
        runtime.stop()
        thread.join(60)

    assert snapshot(kafka, name) == []
    (written,) = snapshot(kafka, topics[validated].name)
    assert AvroSerde(FLOWS[validated]).decode(written.value())["workflow"] == small["workflow"]
    dead = by_event_id(kafka, topics, snapshot(kafka, topics[DLQ].name))
    assert sorted(dead) == ["big", "poison"]
    headers = dict(dead["big"].headers())
    assert headers[Header.error_reason] == b"output_too_large" and name in headers[Header.error_message].decode()
    assert dead["big"].value() == AvroSerde("support_ticket/created.v1").encode(tickets[0])
    headers = dict(dead["poison"].headers())
    assert headers[Header.error_reason] == b"test_poison" and dead["poison"].value() == b""
    assert int(headers[Header.value_truncated]) > TOPIC_LIMIT


def wait_until(check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.2)


def test_a_ticket_of_pasted_logs_is_dead_lettered_and_classify_carries_on(kafka):
    """The reported case: a valid ticket whose body is ~900 KB of JSON log lines. Its work item is over the
    producer's limit: dead-lettered (output_too_large), not a crash loop. A 100 KB body is cut for the model
    (the trace's inputs say so) and classified; the ticket behind both, on the same partition, too."""
    workflow = deployed("support_ticket", kafka)
    line = '{"ts": "2026-05-29T14:22:10Z", "level": "error", "msg": "upstream timeout, retrying", "req": "a1b2c3"}'
    logs = "Our sync fails, logs below:\n" + "\n".join([line] * (900_000 // len(line)))
    tickets = [ticket("evt_logs", logs), ticket("evt_long", logs[:100_000]), ticket("evt_plain")]
    produce_tickets(kafka, workflow.topics, tickets)

    run_to_the_end(kafka, Classify(workflow, workflow.provider()), workflow.topics, RuntimeOptions(commit_interval_s=0.2))

    dead = by_event_id(kafka, workflow.topics, snapshot(kafka, workflow.topics[DLQ].name))
    assert sorted(dead) == ["evt_logs"]
    headers = dict(dead["evt_logs"].headers())
    classified = workflow.topics["support_ticket.classified"].name
    assert headers[Header.error_reason] == b"output_too_large"
    assert f"for {classified} is over" in headers[Header.error_message].decode()
    assert "producer message.max.bytes 1000000" in headers[Header.error_message].decode()
    items = [AvroSerde("handoff/work_item").decode(m.value()) for m in snapshot(kafka, classified)]
    assert sorted(item["event_id"] for item in items) == ["evt_long", "evt_plain"]
    traces = [AvroSerde("handoff/trace").decode(m.value()) for m in snapshot(kafka, workflow.topics["support_ticket.traces"].name)]
    (long_inputs,) = [orjson.loads(t["inputs"]) for t in traces if t["run_id"] == "evt_long" and t["inputs"]]
    body = long_inputs["ticket.body"]
    assert body.endswith(CUT_NOTE.format(kept=DEFAULT_INPUT_CHARS, length=len(logs[:100_000])))


def test_input_limits_name_declared_inputs_and_cut_only_text_over_them():
    spec = deployed_spec(input_limits={"ticket.subject": 5})
    inputs = spec.select_inputs({"ticket": {"subject": "Charged twice", "body": "short"}, "customer": {"arr": 10 ** 30}})
    assert inputs["ticket.subject"] == "Charg" + CUT_NOTE.format(kept=5, length=13)
    assert inputs["ticket.body"] == "short" and inputs["customer.arr"] == 10 ** 30
    with pytest.raises(ValueError, match="undeclared inputs: \\['ticket.secret'\\]"):
        deployed_spec(input_limits={"ticket.secret": 5})


def deployed_spec(**changes) -> PromptSpec:
    """The shipped prompt spec with ``changes``, validated again."""
    spec = load_workflow("support_ticket", "", WORKFLOWS).prompt_spec
    return PromptSpec.model_validate({**spec.model_dump(), **changes})
