"""The refund workflow's rules: a verdict on money is checked in code against what the ground stage
looked up in the system of record — the order (``lookups.order``: total, kind, ``placed_at``, what was
refunded already), its payment record (``lookups.payment``) and the policy (``lookups.policy``) —
never taken on the model's word.

* :func:`refund_within_policy`: an approve or partial names a clause of the policy it was grounded
  in (its version too), the clause applies to the order's kind and age, and the amount is above 0,
  at most what is left of the order (total minus earlier refunds) and within the clause's limit;
  the payment was captured.
* :func:`verdict_matches_the_amount`: approve gives what was asked, partial less, deny nothing.
* :func:`deny_needs_a_reason`: a deny says why, in a sentence a person can check.

Without the lookups (a workflow that does not ground them) a refund cannot be checked, which is an
error too: fail closed.
"""

from __future__ import annotations

from pydantic import ValidationError

from processors.refunds import OrderFacts, Policy, Verdict, age_days, cents

MIN_REASON_CHARS = 10


def refund_within_policy(answer: dict, event: dict, lookups: dict) -> str | None:
    """An approve or partial is within the clause it names and what is left of the order."""
    if answer.get("verdict") == Verdict.deny:
        return None
    order, policy = lookups.get("order"), lookups.get("policy")
    if not order or not policy:
        return "the order and the policy were not looked up: a refund cannot be checked"
    if not order.get("found"):
        return f"order {order.get('order_id')} is not in the system of record"
    try:
        facts, policy = OrderFacts.model_validate(order), Policy.model_validate(policy)
    except ValidationError as exc:
        return f"the looked-up order or policy is not what the policy check reads: {exc.errors()[0]['msg']}"
    if answer.get("policy_version") != policy.version:
        return f"policy_version {answer.get('policy_version')!r} is not the policy in force ({policy.version})"
    clause = policy.clause(answer.get("clause"))
    if clause is None:
        return f"clause {answer.get('clause')!r} is not in policy {policy.version}"
    why = clause.applies(facts.kind, age_days(facts.placed_at, event["requested_at"]))
    if why:
        return why
    amount, limit, left = answer.get("amount", 0), clause.limit(facts.total), facts.left()
    if amount <= 0:
        return f"a {answer.get('verdict')} refund needs an amount above 0"
    if amount > left:
        return (f"amount {amount} is more than the {left} left of order {facts.order_id} "
                f"(total {facts.total}, refunded {facts.refunded})")
    if amount > limit:
        return f"amount {amount} is above clause {clause.id}'s limit of {limit} {facts.currency}"
    payment = lookups.get("payment") or {}
    if payment.get("status") != "captured":
        return f"the payment of order {facts.order_id} is {payment.get('status') or 'not found'}, not captured"
    return None


def verdict_matches_the_amount(answer: dict, event: dict, lookups: dict) -> str | None:
    """approve refunds what was asked, partial less than that, deny nothing."""
    verdict, amount, asked = answer.get("verdict"), cents(answer.get("amount", 0)), cents(event["refund"]["amount"])
    if verdict == Verdict.approve and amount != asked:
        return f"approve refunds the {asked} asked, not {amount}: use partial for less"
    if verdict == Verdict.partial and amount >= asked:
        return f"partial refunds less than the {asked} asked, not {amount}: use approve"
    if verdict == Verdict.deny and amount != 0:
        return f"deny refunds nothing, not {amount}"
    return None


def deny_needs_a_reason(answer: dict, event: dict, lookups: dict) -> str | None:
    """A deny tells the customer no: the rationale must say why, in a sentence a person can check."""
    if answer.get("verdict") == Verdict.deny and len(str(answer.get("rationale") or "").strip()) < MIN_REASON_CHARS:
        return f"a deny needs a reason: the rationale is shorter than {MIN_REASON_CHARS} characters"
    return None


RULES = (refund_within_policy, verdict_matches_the_amount, deny_needs_a_reason)
