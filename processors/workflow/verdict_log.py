"""The verdict log's one rule: the first **accepted** verdict per review id, in log order, is the one that counts.

Verdicts are keyed by review id, so all verdicts on one item land in one partition in the order
the broker accepted them. A verdict is accepted (:func:`refusal` says why not) when it is signed
with a known key for its reviewer (else ``unsigned_verdict``) and the reviewer holds a role that
may decide it (else ``unauthorized_verdict``): releasing a risky action takes an approver; any other
verdict a reviewer or an approver. A refused verdict claims nothing, so a forged or unauthorized
record on the topic cannot block the item for the person entitled to decide it. The review stage,
the views and the review commands all apply this rule, so what a reviewer is told and what
happens never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from confluent_kafka import Message
from pydantic import BaseModel, ValidationError

from processors.avro.serde import AvroSerde, DecodeError
from processors.records import ActionRequest, PersonRole, ReviewReason, Verdict, VerdictKind
from processors.signing import BadSignature, Keyring, UnknownKey

Record = TypeVar("Record", bound=BaseModel)


class Logged(BaseModel):
    """A verdict where it sits in the log."""

    partition: int
    offset: int
    verdict: Verdict


UNSIGNED = "unsigned_verdict"
UNAUTHORIZED = "unauthorized_verdict"


class Refusal(BaseModel):
    """Why a verdict is not accepted: the dead-letter reason and one line."""

    reason: str
    message: str


def roles_needed(verdict: Verdict) -> set[PersonRole]:
    """The roles of which the reviewer must hold one for ``verdict`` to apply."""
    if verdict.item.reason == ReviewReason.risky_action and verdict.verdict == VerdictKind.approve:
        return {PersonRole.approver}
    return {PersonRole.reviewer, PersonRole.approver}


def refusal(verdict: Verdict, keyring: Keyring, strict: bool = True) -> Refusal | None:
    """None when the verdict is signed for its reviewer with a known key and the reviewer may decide it.

    The review stage is ``strict``: a key it does not know refuses the verdict. A reader of the log that
    holds only its own key (a person's CLI catching the views up) cannot judge another key's signature,
    so with ``strict`` False it leaves such a verdict to the stage, which decides what happens."""
    try:
        signature = keyring.check(verdict, "signature", verdict.reviewer)
    except BadSignature as exc:
        if isinstance(exc, UnknownKey) and not strict:
            return None
        return Refusal(reason=UNSIGNED, message=f"verdict {verdict.verdict_id} by {verdict.reviewer}: {exc}")
    needed = roles_needed(verdict)
    if not needed & set(signature.roles):
        return Refusal(reason=UNAUTHORIZED, message=(
            f"{verdict.verdict} of {verdict.review_id} ({verdict.item.reason}) needs the role "
            f"{' or '.join(sorted(needed))}; {verdict.reviewer} holds {', '.join(signature.roles) or 'none'}"))
    return None


def approval_refusal(request: ActionRequest, keyring: Keyring) -> str | None:
    """None when an approved request's ``approval`` is signed (by the review stage) for its ``approved_by``,
    an approver; else why not. A request written straight onto the actions topic with ``approved_by``
    set has none."""
    try:
        signature = keyring.check(request, "approval", request.approved_by)
    except BadSignature as exc:
        return f"approved_by {request.approved_by!r} without a valid approval: {exc}"
    if PersonRole.approver not in signature.roles:
        return f"approved by {request.approved_by!r}, who is not an approver"
    return None


def decoded(messages: Iterable[Message], serde: AvroSerde, model: type[Record],
            skipped: set[str]) -> Iterator[tuple[Message, Record]]:
    """Each record as ``model``; one that is not (bytes from a foreign writer) is skipped, named in
    ``skipped`` and never counted: the review stage dead-letters such a verdict, and ``review
    list`` names such an item."""
    for msg in messages:
        try:
            yield msg, model.model_validate(serde.decode(msg.value()))
        except (DecodeError, ValidationError) as exc:
            skipped.add(f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {str(exc).splitlines()[0]}")


def first_verdicts(messages: Iterable[Message], serde: AvroSerde, skipped: set[str] | None = None,
                   keyring: Keyring | None = None) -> dict[str, Logged]:
    """The first accepted verdict per review id, in log order (``messages`` in offset order per partition);
    ``keyring`` defaults to the keys of the environment."""
    keyring = keyring or Keyring.from_env()
    first: dict[str, Logged] = {}
    for msg, verdict in decoded(messages, serde, Verdict, set() if skipped is None else skipped):
        if refusal(verdict, keyring, strict=keyring.complete) is None:
            first.setdefault(verdict.review_id, Logged(partition=msg.partition(), offset=msg.offset(),
                                                       verdict=verdict))
    return first
