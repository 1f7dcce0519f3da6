"""The refund workflow's offline default: a policy engine in code, with a classifier for the one thing
code cannot read — why the customer asks.

The embedded classifier (:class:`EmbeddedProvider`, trained from the workflow's labelled requests)
names the request's reason category from the customer's words, with a calibrated confidence; the
policy engine (:func:`processors.refunds.allowance`) works out the rest from what the ground stage
looked up: the clause that covers that reason for the order's kind and age, the most it allows (its
limit, never more than is left of the order), and so the verdict — approve what was asked when it is
allowed, partial when less is, deny when nothing is (with the reason). The answer is the JSON an LLM
would give for the same prompt, so validation, review and routing treat both alike; its confidence
is the classifier's, the only guess in it.

It reads the declared inputs ``refund.reason``, ``refund.amount``, ``requested_at`` and the lookups
``lookups.order``, ``lookups.payment``, ``lookups.policy`` (the system of record's answers).
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from processors.providers.base import ModelAnswer, ModelRequest, Provider, ProviderRejected
from processors.providers.embedded import EmbeddedProvider, TrainingSpec
from processors.refunds import Allowance, OrderFacts, Policy, RefundReason, Verdict, allowance, cents

INPUTS = ("refund.reason", "refund.amount", "requested_at", "lookups.order", "lookups.payment", "lookups.policy")


class RefundAnswer(BaseModel):
    """What the refund prompt asks of any model."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    amount: float
    clause: str | None
    category: RefundReason
    policy_version: str
    rationale: str
    confidence: float


class PolicyEngineProvider(Provider):
    """The classifier names the reason; the policy decides the verdict and the amount."""

    name = "refund_policy"

    def __init__(self, classifier: TrainingSpec, folder: Path):
        self.classifier = EmbeddedProvider(classifier, folder)
        self.model = f"refund_policy+{self.classifier.model}"

    async def complete(self, request: ModelRequest) -> ModelAnswer:
        missing = [path for path in INPUTS if path not in request.inputs]
        if missing:
            raise ProviderRejected(f"the refund policy engine needs the prompt inputs {', '.join(missing)}")
        classified = await self.classifier.complete(request.model_copy(update={"output_schema": {
            "properties": {"category": {}, "confidence": {}}}}))
        guess = orjson.loads(classified.text)
        started = time.perf_counter()
        answer = decide(request.inputs, RefundReason(guess["category"]), float(guess["confidence"]))
        properties = request.output_schema.get("properties", {})
        body = orjson.dumps({k: v for k, v in answer.model_dump(mode="json").items() if k in properties}).decode()
        return ModelAnswer(text=body, model=self.model, tokens_in=classified.tokens_in, tokens_out=len(body.split()),
                           latency_ms=classified.latency_ms + (time.perf_counter() - started) * 1000)


def decide(inputs: dict, category: RefundReason, confidence: float) -> RefundAnswer:
    """The verdict the policy gives for a request of ``category``, from the looked-up order, payment and policy."""
    asked = cents(float(inputs["refund.amount"]))
    order, payment = inputs["lookups.order"] or {}, inputs["lookups.payment"] or {}
    try:
        policy = Policy.model_validate(inputs["lookups.policy"])
    except ValidationError:
        policy = Policy(version="unknown", clauses=[])
    if not order.get("found"):
        allowed = Allowance(clause=None, most=0.0, age_days=0.0, why=f"order {order.get('order_id')} is not on record")
    elif payment.get("status") != "captured":
        allowed = Allowance(clause=None, most=0.0, age_days=0.0,
                            why=f"the payment is {payment.get('status') or 'missing'}, not captured")
    else:
        allowed = allowance(policy, category, OrderFacts.model_validate(order), inputs["requested_at"])
    amount = min(asked, allowed.most)
    verdict = Verdict.deny if amount <= 0 else Verdict.approve if amount >= asked else Verdict.partial
    said = {Verdict.approve: f"approve the {asked:.2f} asked", Verdict.partial: f"partial: {amount:.2f} of the "
            f"{asked:.2f} asked", Verdict.deny: "deny"}[verdict]
    rationale = f"Reason {category} (confidence {confidence:.2f}); {allowed.why}: {said}."
    return RefundAnswer(verdict=verdict, amount=cents(max(amount, 0.0)), clause=allowed.clause, category=category,
                        policy_version=policy.version, rationale=rationale, confidence=round(confidence, 4))
