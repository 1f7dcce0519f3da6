"""Who decided: a verdict, an approval or a control change counts only when signed by someone allowed it."""

from __future__ import annotations

import asyncio
import time

import pytest

from processors.control.state import control_refusal, initial
from processors.control.store import ControlRefused, ControlStore
from processors.control.watcher import ControlWatcher
from processors.kafka.topics import Role
from processors.kafka.write import write
from processors.records import ControlState, Mode, PersonRole, Verdict, VerdictKind
from processors.runtime.stage import DeadLetter
from processors.signing import SIGNING_KEY_ENV, BadSignature, Keyring, KnownKey, Signer
from processors.stages.execute import Execute
from processors.stages.review import Review
from processors.workflow.verdict_log import refusal
from tests.conftest import approved, deployed, signed
from tests.test_approvals import approval, control, on, payments, record, request, run, workflow  # noqa: F401

SECRET = "a-secret-of-32-characters-long!!"


def test_a_signature_covers_the_record_the_signer_and_the_roles():
    ring = Keyring({"k1": KnownKey(secret=SECRET), "ana-own": KnownKey(secret=SECRET * 2, identity="ana",
                                                                       roles=[PersonRole.reviewer])})
    state = ControlState(workflow="w", version=1, changed_by="ana", change="mode suggest", at_ms=1)
    good = Signer(key_id="k1", secret=SECRET, identity="ana").sign(state, "signature")
    assert ring.check(good, "signature", "ana").signer == "ana"
    for forged, why in [(good.model_copy(update={"mode": Mode.full, "kill_switch": True}), "does not match"),
                        (good.model_copy(update={"changed_by": "ben"}), "does not match"),
                        (Signer(key_id="k1", secret=SECRET, identity="ana").sign(
                            state.model_copy(update={"changed_by": "ben"}), "signature"), "names 'ben'"),
                        (Signer(key_id="k9", secret=SECRET, identity="ana").sign(state, "signature"), "not a known"),
                        (Signer(key_id="k1", secret=SECRET[::-1], identity="ana").sign(state, "signature"), "forged"),
                        (Signer(key_id="ana-own", secret=SECRET * 2, identity="ana").sign(state, "signature"),
                         "may not claim"),
                        (state, "not signed")]:
        with pytest.raises(BadSignature, match=why):
            ring.check(forged, "signature", forged.changed_by)
    own = Signer(key_id="ana-own", secret=SECRET * 2, identity="ben", roles=[PersonRole.reviewer])
    with pytest.raises(BadSignature, match="signs for 'ana' only"):
        ring.check(own.sign(state.model_copy(update={"changed_by": "ben"}), "signature"), "signature", "ben")


def test_a_review_stage_without_a_key_runs_but_accepts_no_verdict_and_writes_no_default(workflow, monkeypatch):
    signed_verdict = approval(workflow, None)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    review = Review(workflow)  # it builds (the rest of the workflow runs): a new project has no key yet
    with pytest.raises(DeadLetter) as dead:
        asyncio.run(run(review, record(Role.verdicts, signed_verdict, workflow)))
    assert dead.value.reason == "no_signing_key" and dead.value.keep == []
    late = signed_verdict.item.model_copy(update={"deadline_ms": 1})
    review.open.put(0, late.review_id, late)
    assert review.tick(2**62, [(workflow.spec(Role.review).name, 0)]) == [], "nobody can sign the default"
    assert review.open.get(0, late.review_id) is not None, "the item waits for a key and a person"


def test_the_review_stage_dead_letters_unsigned_and_unauthorized_verdicts_without_letting_them_claim(workflow):
    unsigned = approval(workflow, None).model_copy(update={"signature": None})
    as_reviewer = Signer.from_env().acting_as("ron", [PersonRole.reviewer]).sign(
        unsigned.model_copy(update={"reviewer": "ron", "verdict_id": "v2"}), "signature")
    review = Review(workflow)
    for verdict, reason in [(unsigned, "unsigned_verdict"), (as_reviewer, "unauthorized_verdict")]:
        with pytest.raises(DeadLetter) as dead:
            asyncio.run(run(review, record(Role.verdicts, verdict, workflow)))
        assert dead.value.reason == reason and dead.value.keep == []
    # the approver's verdict, later in the log, is still the first valid one: it is applied
    [released] = on(asyncio.run(run(review, record(Role.verdicts, approval(workflow, None), workflow, offset=5))),
                    workflow, Role.actions)
    assert released.approved_by == "lead@support" and released.approval.signer == "lead@support"
    # a reviewer may still reject the risky action (needs reviewer or approver)
    reject = Verdict.model_validate(unsigned.model_dump() | {"verdict": VerdictKind.reject, "reason": "no",
                                                              "reviewer": "ron"})
    assert refusal(Signer.from_env().acting_as("ron", [PersonRole.reviewer]).sign(reject, "signature"),
                   Keyring.from_env()) is None


def test_execute_refuses_an_approval_nobody_signed(workflow, payments):
    before = dict(payments.service.calls)
    forged = request(workflow, approved_by="lead")
    with pytest.raises(DeadLetter) as dead:
        asyncio.run(run(Execute(workflow, control()), record(Role.actions, forged, workflow)))
    assert dead.value.reason == "unsigned_approval" and payments.service.calls == before
    by_reviewer = Signer.from_env().acting_as("lead", [PersonRole.reviewer]).sign(forged, "approval")
    with pytest.raises(DeadLetter, match="not an approver"):
        asyncio.run(run(Execute(workflow, control()), record(Role.actions, by_reviewer, workflow)))
    outputs = asyncio.run(run(Execute(workflow, control()), record(Role.actions, approved(request(workflow), "lead"),
                                                                   workflow)))
    assert [e.status for e in on(outputs, workflow, Role.executions)] == ["done"]


def test_control_changes_need_the_role_and_a_running_watcher_ignores_a_forged_one(kafka, caplog):
    workflow = deployed("support_ticket", kafka)
    base = initial(workflow)
    operator = Signer.from_env().acting_as("olga", [PersonRole.operator])
    with pytest.raises(ControlRefused, match="prompt_owner"):
        ControlStore(kafka, workflow, operator).publish("mode shadow", mode=Mode.shadow)
    mode = signed(base.model_copy(update={"version": 1, "mode": Mode.shadow, "changed_by": "olga"}))
    assert control_refusal(base, mode, Keyring.from_env()) is None  # the session key holds every role
    assert "prompt_owner" in control_refusal(base, operator.sign(mode, "signature"), Keyring.from_env())
    watcher = ControlWatcher(kafka, workflow)
    watcher.start()
    try:
        store = ControlStore(kafka, workflow)
        store.publish("kill switch on", kill_switch=True, changed_by="olga")
        forged = base.model_copy(update={"version": 2, "approval_risk": 1.0, "changed_by": "mallory",
                                         "change": "approval risk 1"})
        write(kafka.producer(), store.spec.name, [(workflow.name, store.serde.encode(forged.model_dump(),
                                                                                     store.spec.name))],
              what="a forged control change", timeout_s=10, then="")
        deadline = time.monotonic() + 10
        while "approval risk 1" not in caplog.text:
            assert time.monotonic() < deadline, "the watcher should log the forged change"
            time.sleep(0.2)
        assert watcher.state.kill_switch and watcher.state.approval_risk is None
        assert store.current().version == 1, "no later change builds on the forged one"
    finally:
        watcher.stop()


def test_a_reader_with_only_its_own_key_leaves_another_keys_verdict_to_the_strict_stage(workflow):
    other = Signer(key_id="console", secret=SECRET, identity="lead@support").sign(
        approval(workflow, None).model_copy(update={"signature": None}), "signature")
    own = Keyring({"tests": KnownKey(secret=SECRET * 2)}, complete=False)
    assert refusal(other, own, strict=own.complete) is None
    assert refusal(other, own).reason == "unsigned_verdict"  # the review stage
    unsigned = other.model_copy(update={"signature": None})
    assert refusal(unsigned, own, strict=False).reason == "unsigned_verdict", "no signature is never left open"
