"""The sample system of record, through the MCP client the engine uses (processors.actions.mcp), over
streamable HTTP on loopback: its lookups, effects applied once per idempotency key (the ledger shows
one refund however often it is asked), refusals, and the fail mode (timeouts, 5xx, refusals)."""

from __future__ import annotations

import asyncio

import pytest

from processors.actions.mcp import (
    IdempotencyPlacement,
    ToolCallFailed,
    ToolFailure,
    ToolGrant,
    ToolRetries,
    Tools,
    ToolServer,
)
from processors.dev.sample_records import sample
from processors.dev.system_of_record import FailKind, Failure, SystemOfRecordThread

RETRIES = ToolRetries(unavailable=2, timeout=1, tool_error=0, backoff_initial_s=0.01, backoff_max_s=0.05)
TOOLS = ("lookup_contact", "find_leads", "lookup_owner", "find_owners", "lookup_order", "lookup_payment",
         "lookup_policy", "refunds_for", "update_lead", "assign_owner", "create_task", "issue_refund", "add_crm_note")


@pytest.fixture(scope="module")
def sor(tmp_path_factory):
    with SystemOfRecordThread(tmp_path_factory.mktemp("sor") / "records.sqlite", hang_s=1.5) as server:
        yield server


def tools(sor, timeout_s: float = 5.0) -> Tools:
    grants = {name: ToolGrant(server="sor", scope="records", retries=RETRIES, timeout_s=timeout_s,
                              idempotency=IdempotencyPlacement.argument) for name in TOOLS}
    grants["note_by_meta"] = ToolGrant(server="sor", tool="add_crm_note", scope="records", retries=RETRIES)
    return Tools({"sor": ToolServer(url=sor.url)}, grants)


def calls(sor, *steps, timeout_s: float = 5.0) -> list:
    """Each (tool, arguments, idempotency key) in order on one connection: results, or the exception raised."""
    async def run():
        client = tools(sor, timeout_s)
        out = []
        try:
            for name, arguments, key in steps:
                try:
                    out.append((await client.call(name, arguments, idempotency_key=key)).result)
                except Exception as exc:  # noqa: BLE001 - the test reads what was raised
                    out.append(exc)
        finally:
            await client.close()
        return out
    return asyncio.run(run())


def an_order(kind: str = "physical", refunded: bool = False, skip: int = 0):
    refunded_ids = {r.order_id for r in sample().refunds}
    return [o for o in sample().orders if o.kind == kind and (o.order_id in refunded_ids) == refunded][skip]


def test_lookups_answer_the_sample_records(sor) -> None:
    order = an_order()
    contact = next(c for c in sample().contacts if c.contact_id == order.contact_id)
    found, by_email, leads, owner, owners, looked, payment, policy, unknown = calls(
        sor, ("lookup_contact", {"contact_id": contact.contact_id}, None),
        ("lookup_contact", {"email": contact.email.upper()}, None),
        ("find_leads", {"contact_id": sample().leads[0].contact_id}, None),
        ("lookup_owner", {"owner_id": "OW-03"}, None),
        ("find_owners", {"territory": "DACH", "service": "training"}, None),
        ("lookup_order", {"order_id": order.order_id}, None), ("lookup_payment", {"order_id": order.order_id}, None),
        ("lookup_policy", {}, None), ("lookup_order", {"order_id": "O-0"}, None))
    assert found["found"] and found["email"] == contact.email and by_email["contact_id"] == contact.contact_id
    assert sample().leads[0].lead_id in [lead["lead_id"] for lead in leads["leads"]]
    assert owner["territories"] == ["Nordics"] and owner["active"] is True
    assert [o["owner_id"] for o in owners["owners"]] == ["OW-02"], "the inactive OW-12 does not count"
    assert (looked["total"], looked["kind"], looked["refunded"], looked["left"]) == (order.total, "physical", 0,
                                                                                    order.total)
    assert payment["amount"] == order.total and payment["status"] == "captured"
    assert [c["id"] for c in policy["clauses"]][:3] == ["1.1", "1.2", "2.1"] and policy["version"]
    assert unknown == {"found": False, "order_id": "O-0"}


def test_a_refund_is_issued_once_per_idempotency_key_and_checked_against_what_is_left(sor) -> None:
    order = an_order(skip=1)
    half = round(order.total / 2, 2)
    refund = {"order_id": order.order_id, "amount": half, "currency": order.currency}
    first, again, other, too_much, wrong, ledger, looked = calls(
        sor, ("issue_refund", refund, "rf-1:refund"), ("issue_refund", refund | {"amount": 1.0}, "rf-1:refund"),
        ("issue_refund", refund | {"amount": 1.0}, "rf-2:refund"),
        ("issue_refund", refund, "rf-3:refund"), ("issue_refund", refund | {"currency": "JPY"}, "rf-4:refund"),
        ("refunds_for", {"order_id": order.order_id}, None), ("lookup_order", {"order_id": order.order_id}, None))
    assert again == first, "the same key answers the first result"
    assert (first["amount"], first["idempotency_key"], other["amount"]) == (half, "rf-1:refund", 1.0)
    assert isinstance(too_much, ToolCallFailed) and too_much.kind == ToolFailure.tool_error
    assert "is left to refund" in str(too_much) and "not JPY" in str(wrong)
    assert [(r["amount"], r["idempotency_key"]) for r in ledger["refunds"]] == [(half, "rf-1:refund"),
                                                                                (1.0, "rf-2:refund")]
    assert looked["refunded"] == round(half + 1.0, 2)


def test_crm_effects_are_once_per_key_in_an_argument_or_in_meta(sor) -> None:
    lead = sample().leads[1]
    note = {"contact_id": lead.contact_id, "text": "called back", "about": lead.lead_id}
    updated, assigned, inactive, task, task_again, by_meta, meta_again, no_key, leads = calls(
        sor, ("update_lead", {"lead_id": lead.lead_id, "status": "qualified", "summary": "wants a migration"}, "e1:u"),
        ("assign_owner", {"lead_id": lead.lead_id, "owner_id": "OW-09"}, "e1:a"),
        ("assign_owner", {"lead_id": lead.lead_id, "owner_id": "OW-12"}, "e1:b"),
        ("create_task", {"owner_id": "OW-09", "title": "call", "lead_id": lead.lead_id}, "e1:t"),
        ("create_task", {"owner_id": "OW-09", "title": "call", "lead_id": lead.lead_id}, "e1:t"),
        ("note_by_meta", note, "e1:n"), ("note_by_meta", note, "e1:n"), ("note_by_meta", note, None),
        ("find_leads", {"contact_id": lead.contact_id}, None))
    assert updated["status"] == "qualified" and assigned == {"lead_id": lead.lead_id, "owner_id": "OW-09"}
    assert "inactive" in str(inactive) and task_again == task and meta_again == by_meta
    assert "needs an idempotency key" in str(no_key)
    [row] = [x for x in leads["leads"] if x["lead_id"] == lead.lead_id]
    assert (row["owner_id"], row["summary"]) == ("OW-09", "wants a migration")


def test_fail_mode_timeouts_5xx_and_refusals(sor) -> None:
    order = an_order(kind="digital")
    refund = {"order_id": order.order_id, "amount": 5.0, "currency": order.currency}
    sor.service.fail("issue_refund", FailKind.timeout, 1)   # acts, then answers too late: the retry gets the result
    sor.service.fail("lookup_order", FailKind.http_500, 2)  # two 500s, then an answer (unavailable: 2 retries)
    sor.service.fail("*", FailKind.refuse, 1)
    before = sor.service.calls["issue_refund"]
    refused, timed_out, looked, ledger = calls(
        sor, ("lookup_policy", {}, None), ("issue_refund", refund, "rf-9:refund"),
        ("lookup_order", {"order_id": order.order_id}, None), ("refunds_for", {"order_id": order.order_id}, None),
        timeout_s=0.5)
    assert isinstance(refused, ToolCallFailed) and refused.kind == ToolFailure.tool_error
    assert timed_out["idempotency_key"] == "rf-9:refund" and sor.service.calls["issue_refund"] == before + 2
    assert looked["refunded"] == 5.0
    assert [r["idempotency_key"] for r in ledger["refunds"]] == ["rf-9:refund"], "one refund for two calls"
    sor.service.fail("lookup_order", FailKind.http_500, None)
    [down] = calls(sor, ("lookup_order", {"order_id": order.order_id}, None))
    assert isinstance(down, ToolCallFailed) and down.reason == "tool_unavailable_exhausted"
    assert sor.service.take_failure("lookup_order", {FailKind.http_500}) == FailKind.http_500, "every call fails"


def test_the_fail_option_reads_tool_kind_and_count() -> None:
    assert Failure.parse("issue_refund=timeout:2") == Failure(tool="issue_refund", kind=FailKind.timeout, times=2)
    assert Failure.parse("*=http_500").times is None
    with pytest.raises(ValueError, match="TOOL=KIND"):
        Failure.parse("issue_refund=explode")
