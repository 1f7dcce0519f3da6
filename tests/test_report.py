"""``handoff report`` against the real broker: a fixed set of decisions, review items, verdicts,
repairs, dead letters, traces and outcomes is written straight to a test namespace's topics, and
every figure of the report must equal the one worked out by hand below.

The story, prompt version v1 (support_ticket; escalation = billing and high urgency):

    a1  model -> billing                                  automated
    a2  model -> escalation; outcomes closed_won, reopened (reopened on the escalation route: not a miss)
    a3  model -> bug; outcome reopened                    a missed escalation
    a4  model -> how_to; its risky action approved        touched by a person: not automated
    a5  review low_confidence, model said billing/high (escalation); corrected to bug/low -> decided bug
        (a later second verdict, approve, loses: only the first counts)
    a6  review low_confidence, model said billing/low; corrected to billing/high -> decided escalation
    a7  first answer invalid (repair), invalid again -> review invalid_output; no verdict yet
    a8  review low_confidence, model said billing/high; approved -> decided escalation
    a9  first answer invalid (repair), repaired -> model -> billing   automated
    a10 dead-lettered by validate (a work item of v1)
    a11 review low_confidence, model said sales/low; rejected
    o1  model -> billing, ten days ago (outside --since)

v2: b1 model -> escalation; b2 model -> billing; b3 repair, then the model was down on the repair
(dead letter from classify, a work item of v2); b4 review low_confidence, no verdict.
No version: x1 a trigger the model never answered (classify, model_unavailable); x2 bytes that
are not Avro. Ignored: a dead letter of execute (an action of a1 failed).

Every classify call costs 100 tokens in, 10 out and $0.002 (a retry's earlier attempt: nothing).
"""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from processors.avro.serde import AvroSerde
from processors.cli.main import app
from processors.clock import now_ms
from processors.ops.report import ALL_VERSIONS, build, parse_since
from processors.records import Decision, PromptRef, Result, ReviewItem, Trace, Verdict, WorkItem, dumps
from processors.views.histogram import RELATIVE_ERROR
from processors.workflow.workflow import WorkflowError, load_workflow
from tests.conftest import deployed, signed, tickets

NOW = now_ms()
DAY = 86_400_000
EVENT = dumps({"customer": {"id": "c1", "plan": "starter"}, "ticket": {"subject": "s", "body": "b"}})


def answer(category: str, urgency: str, confidence: float = 0.9) -> str:
    return dumps({"category": category, "urgency": urgency, "confidence": confidence, "reason": "a reason given"})


def prompt(version: str) -> PromptRef:
    return PromptRef(name="support_ticket_classifier", version=version)


def decision(event_id: str, version: str, route: str, latency_ms: int = 0, model_ms: float = 0.0,
             source: str = "model", at: int = NOW) -> Decision:
    return Decision(event_id=event_id, workflow="support_ticket", route=route, rule="r", label=route, confidence=0.9,
                    answer=answer("billing", "low"), event=EVENT, prompt=prompt(version), model="m", source=source,
                    decided_at_ms=at, trigger_timestamp_ms=at - latency_ms, latency_ms=model_ms)


def review(event_id: str, version: str, reason: str = "low_confidence", model_answer: str | None = None,
           stage: str = "validate") -> ReviewItem:
    suffix = ":open_escalation" if reason == "risky_action" else ""
    return ReviewItem(review_id=f"{event_id}:{reason}{suffix}", event_id=event_id, workflow="support_ticket",
                      reason=reason, stage=stage, event=EVENT, answer=model_answer, prompt=prompt(version), model="m",
                      created_at_ms=NOW)


def verdict(item: ReviewItem, kind: str, corrected: str | None = None, reviewer: str = "ana") -> Verdict:
    return signed(Verdict(verdict_id=f"{item.review_id}:{reviewer}", review_id=item.review_id,
                          event_id=item.event_id, workflow="support_ticket", reviewer=reviewer, verdict=kind,
                          answer=corrected, at_ms=NOW, item=item))


def work_item(event_id: str, version: str) -> WorkItem:
    return WorkItem(event_id=event_id, workflow="support_ticket", event=EVENT, prompt=prompt(version), model="m",
                    raw_answer="not json", validation_errors=["the answer is not a JSON object"])


def spend(event_id: str, version: str, at: int = NOW, **usage) -> Trace:
    usage = usage or {"tokens_in": 100, "tokens_out": 10, "cost_usd": 0.002}
    return Trace(run_id=event_id, workflow="support_ticket", step="classify", at_ms=at, prompt=prompt(version),
                 model="m", **usage)


def result(event_id: str, version: str, route: str, outcome: str) -> Result:
    return Result(event_id=event_id, workflow="support_ticket", route=route, label=route, confidence=0.9,
                  source="model", prompt=prompt(version), decided_at_ms=NOW, outcome_type=outcome,
                  outcome_source="crm", outcome_at_ms=NOW + 1000, joined_at_ms=NOW + 1001)


@pytest.fixture
def written(kafka):
    """The story of the module docstring, on the topics of a fresh namespace."""
    workflow = deployed("support_ticket", kafka)
    producer = kafka.producer()

    def write(suffix: str, records: list, key=lambda r: r.event_id) -> None:
        spec = workflow.topics[workflow.topic(suffix)]
        serde = AvroSerde(spec.value_schema)
        for record in records:
            producer.produce(spec.name, key=key(record), value=serde.encode(record.model_dump()))

    def dead_letter(origin: str, value: bytes, stage: str, reason: str, offset: int = 0) -> None:
        headers = {"handoff.original.topic": workflow.topics[workflow.topic(origin)].name,
                   "handoff.original.partition": "0", "handoff.original.offset": str(offset),
                   "handoff.original.timestamp": str(NOW), "handoff.stage": stage, "handoff.error.reason": reason,
                   "handoff.error.class": "DeadLetter", "handoff.error.message": reason, "handoff.attempts": "1",
                   "handoff.first.failure.ms": str(NOW)}
        producer.produce(workflow.topics[workflow.topic("dlq")].name, key=b"c1", value=value,
                         headers=list(headers.items()))

    def decisions(records: list[Decision]) -> None:
        for d in records:
            write(f"decisions.{d.route}", [d])

    decisions([decision("a1", "v1", "billing", 100, 10), decision("a2", "v1", "escalation", 200, 20),
               decision("a3", "v1", "bug", 300, 30), decision("a4", "v1", "how_to", 400, 40),
               decision("a9", "v1", "billing", 500, 50),
               # decided after review: an hour of waiting for a person is not latency
               decision("a5", "v1", "bug", 3_600_000, 10, source="review"),
               decision("a6", "v1", "escalation", 3_600_000, 10, source="review"),
               decision("a8", "v1", "escalation", 3_600_000, 10, source="review"),
               decision("o1", "v1", "billing", 100, 10, at=NOW - 10 * DAY),
               decision("b1", "v2", "escalation", 150, 15), decision("b2", "v2", "billing", 250, 25)])
    a4 = review("a4", "v1", "risky_action", answer("how_to", "low"), stage="execute")
    a5 = review("a5", "v1", model_answer=answer("billing", "high", 0.6))
    a6 = review("a6", "v1", model_answer=answer("billing", "low", 0.5))
    a7 = review("a7", "v1", "invalid_output", model_answer=None)
    a8 = review("a8", "v1", model_answer=answer("billing", "high", 0.7))
    a11 = review("a11", "v1", model_answer=answer("sales", "low", 0.4))
    b4 = review("b4", "v2", model_answer=answer("bug", "low", 0.3))
    write("review", [a4, a5, a6, a7, a8, a11, b4])
    write("verdicts", [verdict(a4, "approve"), verdict(a5, "correct", answer("bug", "low", 1.0)),
                       verdict(a5, "approve", reviewer="ben"),  # second on the same item: void
                       verdict(a6, "correct", answer("billing", "high", 1.0)), verdict(a8, "approve"),
                       verdict(a11, "reject")], key=lambda v: v.review_id)
    write("repair", [work_item("a7", "v1"), work_item("a9", "v1"), work_item("b3", "v2")])
    write("results", [result("a2", "v1", "escalation", "closed_won"), result("a2", "v1", "escalation", "reopened"),
                      result("a3", "v1", "bug", "reopened"), result("a1", "v1", "billing", "closed_won")])
    classify_calls = {"a1": 1, "a2": 1, "a3": 1, "a4": 1, "a5": 1, "a6": 1, "a7": 2, "a8": 1, "a9": 2, "a10": 1,
                      "a11": 1, "b1": 1, "b2": 1, "b3": 1, "b4": 1}
    traces = [spend(e, "v2" if e.startswith("b") else "v1") for e, n in classify_calls.items() for _ in range(n)]
    traces += [spend("a1", "v1", latency_ms=5000.0),  # an earlier attempt that timed out: its cost is in the answer's
               spend("o1", "v1", at=NOW - 10 * DAY),
               Trace(run_id="a1", workflow="support_ticket", step="route", at_ms=NOW)]
    write("traces", traces, key=lambda t: t.run_id)
    item_serde = AvroSerde("handoff/work_item")
    dead_letter("classified", item_serde.encode(work_item("a10", "v1").model_dump()), "validate", "stage_error")
    dead_letter("repair", item_serde.encode(work_item("b3", "v2").model_dump()), "classify", "model_unavailable")
    trigger = {k: v for k, v in tickets()[0].items() if k != "expected"} | {"event_id": "x1"}
    dead_letter("triggers", AvroSerde(workflow.topics[workflow.topic("triggers")].value_schema).encode(trigger),
                "classify", "model_unavailable")
    dead_letter("triggers", b"not avro", "classify", "not_avro", offset=7)
    dead_letter("actions", b"an action request", "execute", "action_http_4xx")
    assert producer.flush(10) == 0
    return workflow


def test_every_figure_equals_the_hand_computed_one(written, kafka):
    report = build(written, kafka, since_ms=NOW - 3_600_000)  # o1 settled ten days ago: outside
    v1, v2 = report.versions
    assert (v1.prompt_version, v2.prompt_version, report.total.prompt_version) == ("v1", "v2", ALL_VERSIONS)

    # v1: settled a1..a11 (decisions a1-a4, a9 by the model, a5 a6 a8 after review; reviews a5 a6 a7 a8 a11; dead a10)
    assert v1.events == 11 and v1.decided == 8
    assert v1.automated == 4 and v1.automation_rate == pytest.approx(4 / 11)  # a1 a2 a3 a9 (a4: risky approval)
    assert v1.reviewed == 5 and v1.review_rate == pytest.approx(5 / 11)  # a5 a6 a7 a8 a11, not a4's approval
    assert (v1.verdicts, v1.overrides) == (5, 3)  # a4 approve, a5 correct, a6 correct, a8 approve, a11 reject
    assert v1.review_override_rate == pytest.approx(3 / 5)
    # needed: a2 (model, uncontradicted), a3 (reopened on bug), a6 (corrected to billing/high), a8 (approved
    # billing/high); not a5 (corrected away from it) nor a11 (rejected); a7 has no verdict yet.
    # The model escalated a2 and a8 of them; a3 it sent to bug, a6 to billing.
    assert (v1.escalations_needed, v1.escalations_caught) == (4, 2) and v1.escalation_recall == pytest.approx(2 / 4)
    assert v1.escalations_judged == 5  # verdicts on a5 a6 a8 a11, the outcome on a3
    assert v1.schema_failures == 2 and v1.schema_failure_rate == pytest.approx(2 / 11)  # a7 a9
    assert v1.dead_lettered == 1 and v1.dead_letter_rate == pytest.approx(1 / 11)  # a10
    # model decisions a1 a2 a3 a4 a9: 100..500 ms; p95 at rank 0.95*4 = 3.8: 400 + 0.8*100
    assert (v1.latency_p50_ms, v1.latency_p95_ms) == pytest.approx((300, 480), rel=RELATIVE_ERROR)
    assert (v1.model_p50_ms, v1.model_p95_ms) == pytest.approx((30, 48), rel=RELATIVE_ERROR)
    # 13 classify calls (a7 and a9 twice) of 110 tokens and $0.002, over 8 decisions
    assert (v1.tokens_in, v1.tokens_out, v1.cost_usd) == (1300, 130, pytest.approx(0.026))
    assert v1.tokens_per_decision == pytest.approx(13 * 110 / 8)
    assert v1.cost_per_decision_usd == pytest.approx(0.026 / 8)

    # v2: settled b1 b2 (model), b3 (dead), b4 (review, no verdict)
    assert (v2.events, v2.decided, v2.automated, v2.reviewed, v2.dead_lettered, v2.schema_failures) == (4, 2, 2, 1, 1, 1)
    assert (v2.automation_rate, v2.review_rate, v2.dead_letter_rate, v2.schema_failure_rate) == pytest.approx(
        (2 / 4, 1 / 4, 1 / 4, 1 / 4))
    assert v2.verdicts == 0 and v2.review_override_rate is None
    assert (v2.escalations_needed, v2.escalations_caught, v2.escalation_recall) == (1, 1, 1.0)  # b1
    assert v2.escalations_judged == 0  # b1 is the model's word only
    assert (v2.latency_p50_ms, v2.latency_p95_ms) == pytest.approx((200, 150 + 0.95 * 100), rel=RELATIVE_ERROR)
    assert (v2.model_p50_ms, v2.model_p95_ms) == pytest.approx((20, 15 + 0.95 * 10), rel=RELATIVE_ERROR)
    assert v2.tokens_per_decision == pytest.approx(4 * 110 / 2) and v2.cost_per_decision_usd == pytest.approx(0.008 / 2)

    # all versions: 11 + 4 + x1, x2 (dead letters without an answer, so without a version); execute's is not settling
    total = report.total
    assert (total.events, total.decided, total.automated, total.reviewed, total.dead_lettered) == (17, 10, 6, 6, 4)
    assert (total.automation_rate, total.review_rate, total.dead_letter_rate) == pytest.approx((6 / 17, 6 / 17, 4 / 17))
    assert total.schema_failure_rate == pytest.approx(3 / 17) and total.review_override_rate == pytest.approx(3 / 5)
    assert (total.escalations_needed, total.escalations_caught, total.escalations_judged) == (5, 3, 5)
    # 7 model decisions: 100 150 200 250 300 400 500; p95 at rank 0.95*6 = 5.7: 400 + 0.7*100
    assert (total.latency_p50_ms, total.latency_p95_ms) == pytest.approx((250, 470), rel=RELATIVE_ERROR)
    assert (total.model_p50_ms, total.model_p95_ms) == pytest.approx((25, 47), rel=RELATIVE_ERROR)
    assert total.tokens_per_decision == pytest.approx(17 * 110 / 10)
    assert total.cost_per_decision_usd == pytest.approx(17 * 0.002 / 10)

    table = report.render().splitlines()
    assert table[2].split()[:6] == ["v1", "11", "36.4%", "45.5%", "60.0%", "50.0%"]
    assert table[4].startswith(ALL_VERSIONS) and table[4].split()[2] == "17"

    everything = build(written, kafka)  # o1 too: one more automated v1 event, its call and its latency
    assert (everything.versions[0].events, everything.versions[0].automated) == (12, 5)
    assert everything.versions[0].tokens_in == 1400


def test_the_command_prints_the_same_figures(written, kafka):
    runner = CliRunner()
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "HANDOFF_NAMESPACE": kafka.namespace}
    out = runner.invoke(app, ["report", "--workflow", "support_ticket", "--since", "1h", "--json"], env=env)
    assert out.exit_code == 0, out.output
    printed = orjson.loads(out.output)
    expected = build(written, kafka, since_ms=printed["since_ms"]).model_dump(mode="json")
    assert printed == expected and printed["total"]["events"] == 17
    assert [v["prompt_version"] for v in printed["versions"]] == ["v1", "v2"]

    table = runner.invoke(app, ["report", "-w", "support_ticket"], env=env)
    rows = [line.split()[:2] for line in table.output.splitlines()[2:4]]
    assert table.exit_code == 0 and rows == [["v1", "12"], ["v2", "4"]]  # o1 too: no --since
    bad = runner.invoke(app, ["report", "-w", "support_ticket", "--since", "yesterday"], env=env)
    assert bad.exit_code == 1 and "expected an ISO time" in bad.output


def test_since_takes_an_iso_time_or_a_span():
    assert parse_since("2h", now=10_000_000) == 10_000_000 - 7_200_000
    assert parse_since("7d", now=DAY * 30) == DAY * 23
    assert parse_since("2026-05-29T10:00") == parse_since("2026-05-29T12:00+02:00") == 1_780_048_800_000
    with pytest.raises(ValueError, match="span back from now"):
        parse_since("last tuesday")


def test_an_escalation_route_that_is_not_a_route_fails_at_load(tmp_path):
    folder = tmp_path / "support_ticket"
    source = load_workflow("support_ticket").folder
    folder.mkdir()
    for path in source.rglob("*"):
        if path.is_file() and "datasets" not in path.parts:
            (folder / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (folder / path.relative_to(source)).write_bytes(path.read_bytes())
    text = (folder / "workflow.yaml").read_text()
    (folder / "workflow.yaml").write_text(text.replace("  route: escalation", "  route: urgent"))
    with pytest.raises(WorkflowError, match="escalation.route: 'urgent' is not a route"):
        load_workflow("support_ticket", root=tmp_path)
