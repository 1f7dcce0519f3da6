"""The views against the real broker, on SQLite and on a real PostgreSQL server: the same answers
as reading the topics, a views stage that resumes where its store left off, and a review item
that outlives the review topic's retention."""

from __future__ import annotations

import copy

import numpy as np
import orjson
import pytest
from confluent_kafka import TopicPartition
from sqlalchemy import select

from processors.avro.serde import AvroSerde
from processors.clock import now_ms
from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.offline.outputs import SETTLING_STAGES, dead_letters, decision_suffixes, read
from processors.offline.replay.places import found_records, placed, places
from processors.ops.report import ALL_VERSIONS, build, compute
from processors.ops.review_queue import ReviewQueue, VerdictRefused
from processors.pipeline import Pipeline
from processors.providers.scripted import ScriptedProvider
from processors.records import Decision, DecisionSource, ReviewItem, ReviewReason, Trace, VerdictKind
from processors.views.histogram import RELATIVE_ERROR
from processors.views.rows import Rows
from processors.views.schema import report_hours, report_latency
from processors.views.store import VIEWS_URL_ENV, ViewStore, Writer, open_store
from processors.views.totals import HOUR_MS, hour_of, recount, recount_due
from processors.workflow.verdict_log import first_verdicts
from processors.workflow.workflow import load_workflow
from tests.conftest import deployed, produce, tickets
from tests.test_report import answer, decision, prompt, review, verdict

BILLING = {"category": "billing", "urgency": "low", "confidence": 0.95, "reason": "A question about an invoice."}
LOW = BILLING | {"confidence": 0.4}
MINUTE = 60_000


@pytest.fixture(params=["sqlite", "postgresql"])
def views_url(request, tmp_path, monkeypatch) -> str:
    """The views of this test in a SQLite file of its own, or in the session's PostgreSQL server."""
    url = f"sqlite:///{tmp_path / 'views.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres")
    monkeypatch.setenv(VIEWS_URL_ENV, url)
    return url


# ---- the reference: what the commands read from the topics before the views -----------------------

def topic_open_items(workflow, kafka) -> list[str]:
    items: dict[str, ReviewItem] = {}
    for item in read(workflow, kafka, "review", ReviewItem):
        items.setdefault(item.review_id, item)
    spec = workflow.spec("verdicts")
    decided = first_verdicts(snapshot(kafka, spec.name), spec.serde(kafka))
    return [i.review_id for i in sorted((i for i in items.values() if i.review_id not in decided),
                                        key=lambda i: (i.reason != ReviewReason.event_rule, i.created_at_ms))]


def topic_totals(workflow, kafka) -> dict:
    """The all-versions row's counts as the report computed them from the topics."""
    decisions = {d.event_id: d for s in decision_suffixes(workflow, shadow=True)
                 for d in read(workflow, kafka, s, Decision)}
    reviews = read(workflow, kafka, "review", ReviewItem)
    settling = {r.event_id: r for r in reviews if r.stage in SETTLING_STAGES}
    dead = {m.key() for m, h in dead_letters(workflow, kafka) if h.get("handoff.stage") in SETTLING_STAGES}
    touched = {r.event_id for r in reviews}
    by_model = {e: d for e, d in decisions.items() if d.source == DecisionSource.model}
    settled = decisions.keys() | settling.keys()
    spend = [t for t in read(workflow, kafka, "traces", Trace) if t.step == "classify" and t.prompt
             and t.run_id in settled]
    spec = workflow.spec("verdicts")
    verdicts = [v.verdict for v in first_verdicts(snapshot(kafka, spec.name), spec.serde(kafka)).values()]
    latency = [d.latency_ms for d in by_model.values()]
    return {"events": len(settled) + len(dead), "decided": len(decisions), "reviewed": len(settling),
            "automated": len(by_model.keys() - touched), "dead_lettered": len(dead), "verdicts": len(verdicts),
            "overrides": sum(v.verdict != VerdictKind.approve for v in verdicts),
            "tokens_in": sum(t.tokens_in for t in spend), "tokens_out": sum(t.tokens_out for t in spend),
            "model_p50_ms": float(np.percentile(latency, 50)), "model_p95_ms": float(np.percentile(latency, 95))}


def test_the_views_answer_as_the_topics_did_on_sqlite_and_postgresql(kafka, receiver, postgres):
    workflow = deployed("support_ticket", kafka)
    events = [copy.deepcopy(t) | {"event_id": f"e{i}"} for i, t in enumerate(tickets()[:10])]
    answers = {f"e{i}": [LOW if i % 3 == 0 else BILLING] for i in range(10)} | {"e9": ["not json", "still not"]}
    produce(kafka, workflow, events, raw=[(b"k-bad", b"not avro")])
    assert Pipeline(workflow, kafka, provider=ScriptedProvider(answers)).run_until_drained(timeout=120)
    ReviewQueue(workflow, kafka).decide("e0:low_confidence", VerdictKind.reject, reviewer="ana", reason="spam")
    ReviewQueue(workflow, kafka).decide("e3:low_confidence", VerdictKind.approve, reviewer="ana")

    expected_queue, expected = topic_open_items(workflow, kafka), topic_totals(workflow, kafka)
    expected_places = placed(found_records(workflow, kafka))
    assert expected_queue == ["e6:low_confidence", "e9:invalid_output"] and expected["dead_lettered"] == 1
    for store in (open_store(), open_store(postgres)):  # the session's SQLite views, kept by the views stage
        assert [i.review_id for i in ReviewQueue(workflow, kafka, store).open_items()] == expected_queue
        total = build(workflow, kafka, store=store).total
        assert total.prompt_version == ALL_VERSIONS
        exact = {name: value for name, value in expected.items() if not name.startswith("model_p")}
        assert {name: getattr(total, name) for name in exact} == pytest.approx(exact)
        assert (total.model_p50_ms, total.model_p95_ms) == pytest.approx(
            (expected["model_p50_ms"], expected["model_p95_ms"]), rel=RELATIVE_ERROR)  # from the histogram
        assert places(workflow, kafka, store=store) == expected_places


def test_a_restarted_views_stage_reads_only_what_came_since(kafka, views_url):
    workflow = deployed("support_ticket", kafka)
    spec = workflow.spec("review")
    serde = AvroSerde(spec.value_schema)

    def write(ids: range) -> None:
        producer = kafka.producer()
        for n in ids:
            item = ReviewItem(review_id=f"e{n}:low_confidence", event_id=f"e{n}", workflow=workflow.name,
                              reason="low_confidence", stage="validate", event="{}", answer=orjson.dumps(BILLING).decode(),
                              prompt=workflow.prompt_spec.ref, model="scripted", created_at_ms=n)
            producer.produce(spec.name, key=f"c{n % 7}", value=serde.encode(item.model_dump()))
        assert producer.flush(10) == 0

    def run_views() -> int:
        pipeline = Pipeline(workflow, kafka, ["views"])
        assert pipeline.run_until_drained(timeout=60)
        return pipeline.runtimes[0].stage.consumed

    write(range(30))
    assert run_views() == 30
    write(range(30, 35))
    assert run_views() == 5, "a restart resumes from the store's offsets, not from the beginning"
    assert len(ReviewQueue(workflow, kafka).open_items()) == 35


def test_an_item_older_than_the_review_topics_retention_is_listed_and_decided(kafka, views_url):
    workflow = deployed("support_ticket", kafka)
    spec = workflow.spec("review")
    item = ReviewItem(review_id="old:low_confidence", event_id="old", workflow=workflow.name, reason="low_confidence",
                      stage="validate", event=orjson.dumps({k: v for k, v in tickets()[0].items() if k != "expected"})
                      .decode(), answer=orjson.dumps(LOW).decode(), prompt=workflow.prompt_spec.ref, model="scripted",
                      created_at_ms=1)
    producer = kafka.producer()
    producer.produce(spec.name, key="c1", value=AvroSerde(spec.value_schema).encode(item.model_dump()))
    assert producer.flush(10) == 0
    queue = ReviewQueue(workflow, kafka)
    assert [i.review_id for i in queue.open_items()] == [item.review_id]

    # Retention deletes whole segments from the start of the log: moving the log start past the item is what it does.
    admin = kafka.admin()
    ends = {p: TopicPartition(spec.name, p, -1) for p in admin.list_topics(spec.name, timeout=10).topics[spec.name].partitions}
    for future in admin.delete_records(list(ends.values()), request_timeout=10).values():
        future.result()
    assert snapshot(kafka, spec.name) == [], "the review topic no longer holds the item"

    assert [i.review_id for i in queue.open_items()] == [item.review_id], "the view still does"
    verdict = queue.decide(item.review_id, VerdictKind.correct, reviewer="ana", fields={"category": "bug"})
    assert queue.open_items() == [] and queue.get(item.review_id)[1].verdict.verdict_id == verdict.verdict_id
    with pytest.raises(VerdictRefused, match="correct by ana"):
        queue.decide(item.review_id, VerdictKind.approve, reviewer="bob")


def test_the_reports_hours_move_with_each_event_and_count_each_record_once(namespace, views_url):
    """An event reviewed in one hour and decided in the next: its part of the report moves from the
    review's hour to the decision's as its row changes, a window from any hour counts it as the
    per-event definitions do, and a batch applied again changes no hour."""
    workflow, store = load_workflow("support_ticket", namespace), open_store()
    rows, hour = Rows(workflow, KafkaSettings()), hour_of(1_780_000_000_000)
    item = review("e1", "v1", model_answer=answer("billing", "low", 0.5)).model_copy(
        update={"created_at_ms": hour + 10 * MINUTE})
    records = [("review", item), ("verdicts", verdict(item, "correct", answer("billing", "high", 1.0))),
               ("decisions.billing", decision("e2", "v1", "billing", latency_ms=100, model_ms=10,
                                              at=hour + 5 * MINUTE)),
               ("decisions.escalation", decision("e1", "v1", "escalation", latency_ms=80 * MINUTE, model_ms=10,
                                                 source="review", at=hour + 90 * MINUTE))]
    batch = []
    for offset, (suffix, record) in enumerate(records):
        spec = workflow.topics[workflow.topic(suffix)]
        batch.append(rows.of(spec.name, 0, offset, b"c1", AvroSerde(spec.value_schema).encode(record.model_dump()),
                             {}, 0))

    def figures(since: int) -> tuple:
        total = compute(workflow, store, since).total
        return (total.events, total.decided, total.automated, total.reviewed, total.verdicts, total.overrides,
                total.escalations_needed, total.escalations_caught, total.latency_p50_ms is not None)

    assert store.apply(batch[:3]) == 3
    assert figures(hour + HOUR_MS)[0] == 0, "e1 settled in the first hour, by review"
    assert store.apply(batch) == 1 and store.apply(batch) == 0, "applied offsets are skipped"
    # from the first hour: e1 (reviewed, corrected to an escalation the model had sent to billing; decided after
    # review) and e2 (the model's, uncontradicted billing); from the second: e1 alone, by its decision
    assert figures(hour) == (2, 2, 1, 1, 1, 1, 1, 0, True)
    assert figures(hour + HOUR_MS) == (1, 1, 0, 0, 1, 1, 1, 0, False)
    assert figures(hour + 2 * HOUR_MS)[0] == 0

    def hours() -> set:
        with store.read() as conn:
            return {tuple(r) for table in (report_hours, report_latency) for r in conn.execute(
                select(table).where(table.c.scope == rows.scope)) if any(r[3:] if table is report_hours else r[-1:])}

    kept = hours()
    with store.engine.begin() as conn:
        recount(Writer(conn), rows.scope, workflow.escalation.route)
    assert hours() == kept, "the hours kept record by record are the ones worked out from the rows at once"

    with store.engine.begin() as conn:  # a database kept before the hours existed
        for table in (report_hours, report_latency):
            table.drop(conn)
    recount_due(ViewStore(store.url), rows.scope, rows.target)
    assert hours() == kept, "its hours are worked out from its rows when it is opened"


def test_a_cascade_shows_its_offline_share_and_saving_and_an_older_database_gains_the_counts(namespace, views_url):
    """Model decisions that spent no token were answered offline (a cascade's embedded tier); the report
    prices them at what the LLM's answers cost. A database kept before these counts gains them, worked out
    from its rows."""
    workflow, store = load_workflow("support_ticket", namespace), open_store()
    rows = Rows(workflow, KafkaSettings())
    spent = {"e1": (0, 0, 0.0), "e2": (0, 0, 0.0), "e3": (0, 0, 0.0), "e4": (900, 100, 0.004)}  # the classify calls
    records = [("decisions.billing", decision(e, "v1", "billing", latency_ms=100, model_ms=10)) for e in spent]
    records += [("traces", Trace(run_id=e, workflow=workflow.name, step="classify", at_ms=now_ms(), prompt=prompt("v1"),
                                 **dict(zip(("tokens_in", "tokens_out", "cost_usd"), spent[e])))) for e in spent]
    batch = []
    for offset, (suffix, record) in enumerate(records):
        spec = workflow.topics[workflow.topic(suffix)]
        batch.append(rows.of(spec.name, 0, offset, b"c1", AvroSerde(spec.value_schema).encode(record.model_dump()),
                             {}, 0))
    assert store.apply(batch) == 8
    [v1] = compute(workflow, store).versions
    assert (v1.offline, v1.online, v1.offline_share) == (3, 1, 0.75)
    assert v1.cascade_saved_usd == pytest.approx(0.012)
    assert "cascade v1: 75.0% of the model's decisions answered offline (3 of 4)" in compute(workflow, store).render()

    with store.engine.begin() as conn:  # a database kept before the counts existed
        for name in ("offline", "online"):
            conn.exec_driver_sql(f"ALTER TABLE {report_hours.name} DROP COLUMN {name}")
    reopened = ViewStore(store.url)
    recount_due(reopened, rows.scope, rows.target)
    [again] = compute(workflow, reopened).versions
    assert (again.offline, again.online, again.events) == (3, 1, 4)
