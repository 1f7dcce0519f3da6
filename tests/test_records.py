"""Every record model round-trips through its Avro contract: models and schemas cannot drift."""

import orjson
import pytest

from processors import project, records
from processors.avro.contracts import ContractStore, default_store
from processors.avro.serde import AvroSerde

PROMPT = records.PromptRef(name="p", version="1")
DECISION = records.Decision(event_id="e", workflow="w", route="billing", rule="r", label="billing", confidence=0.9,
                            answer="{}", event="{}", prompt=PROMPT, model="m", decided_at_ms=1)
REQUEST = records.ActionRequest(event_id="e", workflow="w", action="a", idempotency_key="e:a", arguments="{}",
                                route="billing", decision=DECISION, requested_at_ms=1)
APPROVAL = records.ReviewItem(review_id="e:risky_action:a", event_id="e", workflow="w", reason="risky_action",
                              stage="execute", event="{}", answer="{}", action=REQUEST, prompt=PROMPT, model="m",
                              created_at_ms=1)
SAMPLES = {
    "handoff/prompt_ref": PROMPT,
    "handoff/work_item": records.WorkItem(event_id="e", workflow="w", event="{}", prompt=PROMPT, model="m",
                                          validation_errors=["x"], tokens_in=3, reviewed_by="ana"),
    "handoff/decision": DECISION,
    "handoff/review_item": records.ReviewItem(review_id="e:low", event_id="e", workflow="w", reason="low_confidence",
                                              stage="route", event="{}", prompt=PROMPT, model="m", created_at_ms=1),
    "handoff/action_request": REQUEST,
    "handoff/execution": records.Execution(event_id="e", workflow="w", action="a", idempotency_key="e:a", status="done",
                                           attempts=1, http_status=200, latency_ms=1.0, executed_at_ms=1),
    "handoff/action_done": records.ActionDone(idempotency_key="e:a", event_id="e", action="a", executed_at_ms=1),
    "handoff/seen_event": records.SeenEvent(event_id="e", partition=0, offset=7, at_ms=1),
    "handoff/first_verdict": records.FirstVerdict(review_id="r", partition=0, offset=7, at_ms=1),
    "handoff/notification": records.Notification(event_id="e", workflow="w", action="a", idempotency_key="e:a",
                                                 arguments="{}", at_ms=1),
    "handoff/trace": records.Trace(run_id="e", workflow="w", step="classify", at_ms=1, prompt=PROMPT, cost_usd=0.1),
    "handoff/outcome": records.Outcome(event_id="e", workflow="w", outcome_type="reopened", at_ms=1, source="crm"),
    "handoff/verdict": records.Verdict(verdict_id="v", review_id=APPROVAL.review_id, event_id="e", workflow="w",
                                       reviewer="ana", verdict="approve", at_ms=1, item=APPROVAL),
    "handoff/result": records.Result(event_id="e", workflow="w", route="billing", label="billing", confidence=0.9,
                                     source="model", prompt=PROMPT, decided_at_ms=1, outcome_type="reopened",
                                     outcome_source="crm", outcome_at_ms=2, joined_at_ms=3),
    "handoff/join_state": records.JoinState(
        event_id="e", owner_partition=3, updated_at_ms=4,
        decision=records.JoinedDecision(route="billing", label="billing", confidence=0.9, source="model", prompt=PROMPT,
                                        decided_at_ms=1),
        outcomes=[records.JoinedOutcome(
            outcome_id="e|reopened|2|crm", status="waiting", received_at_ms=3,
            outcome=records.Outcome(event_id="e", workflow="w", outcome_type="reopened", at_ms=2, source="crm"),
            original=records.Original(topic="w.outcomes", partition=1, offset=9, timestamp_ms=3, key=b"e",
                                      value=b"\xc3\x01", headers={"h": b"v", "n": None}))]),
    "handoff/control_state": records.ControlState(workflow="w", version=2, labels={"production": "1"}, mode="partial",
                                                  review_threshold=0.8, changed_by="ana", change="mode partial", at_ms=1),
    "handoff/signature": records.Signature(key_id="k1", signer="ana", roles=["reviewer", "approver"], mac="00ff"),
    "handoff/grounded_event": records.GroundedEvent(event_id="e", workflow="w", event="{}", lookups='{"plan": "pro"}',
                                                    trigger_timestamp_ms=1),
}


@pytest.mark.parametrize("contract", sorted(SAMPLES))
def test_model_round_trips_through_its_schema(contract):
    model = SAMPLES[contract]
    serde = AvroSerde(contract)
    decoded = serde.decode(serde.encode(model.model_dump(), check=True))
    assert type(model).model_validate(decoded) == model
    schema_fields = {f["name"] for f in default_store().get(contract).schema["fields"]}
    assert schema_fields == set(type(model).model_fields), "model and schema fields differ"


def test_every_handoff_schema_has_a_model():
    assert {n for n in default_store().by_name if n.startswith("handoff/")} == set(SAMPLES)


def test_nested_records_decode_as_records_of_their_own_type():
    serde = AvroSerde("handoff/verdict")
    verdict = records.Verdict.model_validate(serde.decode(serde.encode(SAMPLES["handoff/verdict"].model_dump())))
    assert verdict.item.action.decision == DECISION and verdict.item.reason is records.ReviewReason.risky_action


def test_a_nested_record_is_defined_once_and_changes_the_fingerprint_of_what_carries_it(tmp_path):
    (tmp_path / "handoff").mkdir()
    for name in ("prompt_ref", "decision", "signature", "action_request"):
        path = f"handoff/{name}.avsc"
        (tmp_path / path).write_bytes((project.schemas_dir() / path).read_bytes())
    before = ContractStore(tmp_path)
    decision = orjson.loads((tmp_path / "handoff/decision.avsc").read_bytes())
    decision["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    (tmp_path / "handoff/decision.avsc").write_bytes(orjson.dumps(decision))
    after = ContractStore(tmp_path)
    assert '"name":"handoff.Decision"' in after.get("handoff/action_request").canonical
    assert after.get("handoff/action_request").fingerprint != before.get("handoff/action_request").fingerprint
    assert after.get("handoff/prompt_ref").fingerprint == before.get("handoff/prompt_ref").fingerprint
