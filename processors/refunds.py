"""A refund policy and what it allows: the one definition the system of record serves, the offline
policy engine answers from and the refund rules check an answer against.

A policy is numbered clauses (:class:`Clause`). A clause covers some request reasons for some order
kinds, up to a maximum order age, and limits the refund to a share of the order total or to an
absolute amount. :func:`allowance` works out, for one request, the clause that applies and the most
it allows: that clause's limit, never more than what is left of the order after earlier refunds.
Money is rounded to cents.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class OrderKind(StrEnum):
    physical = "physical"
    digital = "digital"
    subscription = "subscription"


class RefundReason(StrEnum):
    """Why a customer asks for money back: the categories clauses cover (the classifier names one)."""

    damaged = "damaged"
    not_delivered = "not_delivered"
    late_delivery = "late_delivery"
    wrong_item = "wrong_item"
    changed_mind = "changed_mind"
    not_as_described = "not_as_described"
    duplicate_charge = "duplicate_charge"
    cancelled_subscription = "cancelled_subscription"


class Verdict(StrEnum):
    approve = "approve"
    """The amount asked, in full."""
    partial = "partial"
    """Less than was asked: what the clause allows."""
    deny = "deny"
    """Nothing: no clause applies, or nothing is left to refund."""


class Clause(BaseModel):
    """One numbered clause: which requests it covers, and the most it refunds."""

    id: str = Field(description="Numbered like 4.2; what a verdict names.")
    title: str
    reasons: list[RefundReason]
    kinds: list[OrderKind] = Field(description="The order kinds it applies to.")
    max_age_days: int = Field(description="It applies to orders placed at most this many days before the request.")
    limit_share: float | None = Field(None, ge=0, le=1, description="The most it refunds, as a share of the total…")
    limit_amount: float | None = Field(None, ge=0, description="…or as an absolute cap, in the order's currency.")
    text: str

    def limit(self, total: float) -> float:
        """The most this clause refunds of an order of ``total``."""
        caps = [total if self.limit_share is None else total * self.limit_share]
        if self.limit_amount is not None:
            caps.append(self.limit_amount)
        return cents(min(caps))

    def applies(self, kind: OrderKind, age_days: float) -> str | None:
        """Why this clause does not apply to an order of ``kind`` placed ``age_days`` ago (None: it applies)."""
        if kind not in self.kinds:
            return f"clause {self.id} covers {', '.join(self.kinds)} orders, not {kind}"
        if age_days > self.max_age_days:
            return (f"clause {self.id} applies up to {self.max_age_days} days after the order; "
                    f"it is {age_days:.0f} days old")
        return None


class Policy(BaseModel):
    version: str
    clauses: list[Clause]

    def clause(self, clause_id: str | None) -> Clause | None:
        return next((c for c in self.clauses if c.id == clause_id), None)


class OrderFacts(BaseModel):
    """What the policy needs of an order: the system of record's ``lookup_order`` answer."""

    order_id: str
    total: float
    currency: str
    kind: OrderKind
    placed_at: str
    refunded: float = Field(0.0, description="Refunded already.")

    def left(self) -> float:
        return cents(max(self.total - self.refunded, 0.0))


class Allowance(BaseModel):
    """What one request may get: the clause that applies (or the one that rules it out: for the order's kind if
    any covers it) and the most it allows."""

    clause: str | None
    most: float
    age_days: float
    why: str = Field(description="How the most was worked out, or why it is nothing.")


def cents(amount: float) -> float:
    return round(amount + 1e-9, 2)


def age_days(placed_at: str, requested_at: str) -> float:
    """Days between the order and the request (ISO-8601 times)."""
    return (_time(requested_at) - _time(placed_at)).total_seconds() / 86400


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def allowance(policy: Policy, reason: RefundReason, order: OrderFacts, requested_at: str) -> Allowance:
    """The clause for ``reason`` that applies to the order's kind and age, and the most it allows."""
    age = age_days(order.placed_at, requested_at)
    covering = [c for c in policy.clauses if reason in c.reasons]
    if not covering:
        return Allowance(clause=None, most=0.0, age_days=age, why=f"no clause covers {reason}")
    for clause in covering:
        if clause.applies(order.kind, age) is None:
            limit, left = clause.limit(order.total), order.left()
            if left <= 0:
                return Allowance(clause=clause.id, most=0.0, age_days=age,
                                 why=f"order {order.order_id} is refunded in full already")
            return Allowance(clause=clause.id, most=min(limit, left), age_days=age,
                             why=f"clause {clause.id} ({clause.title}) allows up to {limit:.2f} {order.currency}; "
                                 f"{left:.2f} of {order.total:.2f} is left to refund")
    nearest = next((c for c in covering if order.kind in c.kinds), covering[0])  # the one that rules it out
    return Allowance(clause=nearest.id, most=0.0, age_days=age, why=nearest.applies(order.kind, age))
