"""The review queue: what people must decide, and their verdicts, served from the views.

``<workflow>.review`` holds the review items the stages wrote (low confidence, invalid output,
risky actions, …); ``<workflow>.verdicts`` holds people's verdicts on them, keyed by review id.
The views (:mod:`processors.views`) keep both as tables: every item once, with the first verdict
on it, so the **open queue** is an index range of undecided items, however long the topics'
history and however old the item (the view keeps it after the review topic's retention deleted
it). Each call first catches the views up to the topics' ends (:func:`~processors.views.catch_up.catch_up`:
nothing to do when the ``views`` stage keeps up, else only what is new).

**First verdict wins**, and "first" means first in the log. Verdicts are keyed by review id, so
all verdicts on one item land in one partition, in the order the broker accepted them; the view
keeps the first it applied per review id, applying each partition in offset order. Deciding an
item (:meth:`ReviewQueue.decide`) is:

1. Refuse at once if the view already holds a verdict on the item (the common case).
2. Build the verdict and check it applies to the item (:func:`verdict_errors`): a corrected
   answer must satisfy the prompt's output schema and the workflow's rules, an approval needs
   an answer (or an action) to approve, a rejection needs a reason; and that the reviewer holds
   a role that may decide it (:func:`~processors.workflow.verdict_log.roles_needed`). A bad one is
   never written. It is signed for the reviewer (:class:`~processors.signing.Signer`: the CLI's
   key from the environment, the console's for its signed-in user).
3. Write it, wait for the broker's acknowledgement, which says at which partition and offset
   it landed, and catch the views up past it. If the view's first verdict on the review id is
   another, two reviewers raced: this verdict is recorded but void, and the reviewer is told who
   decided what and when (:class:`VerdictRefused`).

The ``review`` stage (:mod:`processors.stages.review`) reads the log itself with the same rule
(its ``FirstVerdicts`` store and :func:`~processors.workflow.verdict_log.refusal`) and applies only the first verdict per
review id: the log decides, the view only reflects it, so what a reviewer is told and what
happens can never disagree. Each verdict carries its review item, so applying it needs no lookup.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import uuid

import orjson
from sqlalchemy import select

from processors.clock import now_ms
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.kafka.write import write
from processors.records import ReviewItem, ReviewReason, Verdict, VerdictKind
from processors.signing import IDENTITY_ENV, Signer
from processors.views.catch_up import catch_up
from processors.views.rows import scope_of
from processors.views.schema import review_items, skipped, verdicts
from processors.views.store import ViewStore, open_store
from processors.workflow.answers import verdict_errors
from processors.workflow.verdict_log import Logged, roles_needed
from processors.workflow.workflow import Workflow

JSON_TYPES = {"number", "integer", "boolean", "array", "object", "null"}
"""Output-schema types whose ``--set`` values are read as JSON; other values are strings."""


class VerdictRefused(Exception):
    """Someone decided the item first; ``void`` when this verdict was written anyway (a race)."""

    def __init__(self, first: Verdict, void: bool):
        self.first = first
        self.void = void
        when = _iso(first.at_ms)
        detail = f"{first.verdict} by {first.reviewer} at {when}" + (f" ({first.reason})" if first.reason else "")
        super().__init__(f"{first.review_id} was already decided: {detail}"
                         + ("; your verdict was recorded but is void" if void else ""))


class InvalidVerdict(ValueError):
    """The verdict cannot apply to the item; the message lists why."""


class UnknownItem(KeyError):
    def __str__(self) -> str:
        return f"no review item {self.args[0]!r} in this workflow's review topic"


def reviewer_name(given: str | None = None) -> str:
    """``--reviewer``, else ``HANDOFF_IDENTITY``, else ``HANDOFF_REVIEWER``, else the OS user."""
    return given or os.environ.get(IDENTITY_ENV) or os.environ.get("HANDOFF_REVIEWER") or getpass.getuser()


class ReviewQueue:
    """One workflow's review items and verdicts, from the views, caught up on each call."""

    def __init__(self, workflow: Workflow, settings: KafkaSettings, store: ViewStore | None = None,
                 signer: Signer | None = None):
        self.workflow = workflow
        self.signer = signer
        self.settings = settings
        self.store = store or open_store()
        self.scope = scope_of(workflow)
        self.verdict_topic = workflow.spec(Role.verdicts)
        self._verdicts = self.verdict_topic.serde(settings)

    # ---- the view ------------------------------------------------------------------------------

    def refresh(self) -> None:
        catch_up(self.workflow, self.settings, self.store)

    @property
    def skipped(self) -> set[str]:
        """Records of the review and verdict topics that are not review items or verdicts, named by
        topic, partition and offset (the review stage dead-letters such a verdict)."""
        topics = [self.workflow.spec(Role.review).name, self.verdict_topic.name]
        with self.store.read() as conn:
            rows = conn.execute(select(skipped).where(skipped.c.scope == self.scope, skipped.c.topic.in_(topics)))
            return {f"{r.topic}[{r.partition_id}]@{r.log_offset}: {r.error}" for r in rows}

    def verdicts(self) -> dict[str, Logged]:
        """The first verdict per review id."""
        self.refresh()
        with self.store.read() as conn:
            return {r.review_id: _logged(r) for r in conn.execute(select(verdicts).where(verdicts.c.scope == self.scope))}

    def open_items(self) -> list[ReviewItem]:
        """Review items without a verdict: those held for an event rule first (a prompt injection
        fails closed, so an urgent event may be waiting behind it), then oldest first."""
        self.refresh()
        return open_items(self.store, self.scope)

    def get(self, review_id: str) -> tuple[ReviewItem, Logged | None]:
        self.refresh()
        return self._get(review_id)

    def _get(self, review_id: str) -> tuple[ReviewItem, Logged | None]:
        with self.store.read() as conn:
            item = conn.execute(select(review_items.c.item).where(review_items.c.scope == self.scope,
                                                                  review_items.c.review_id == review_id)).scalar()
            if item is None:
                raise UnknownItem(review_id)
            first = conn.execute(select(verdicts).where(verdicts.c.scope == self.scope,
                                                        verdicts.c.review_id == review_id)).first()
        return ReviewItem.model_validate_json(item), _logged(first) if first is not None else None

    # ---- deciding ------------------------------------------------------------------------------

    def decide(self, review_id: str, kind: VerdictKind, *, reviewer: str | None = None,
               fields: dict[str, str] | None = None, reason: str | None = None) -> Verdict:
        """Build, check and submit a verdict; raises VerdictRefused, InvalidVerdict or UnknownItem."""
        return self.submit(self.verdict(review_id, kind, reviewer=reviewer, fields=fields, reason=reason))

    def verdict(self, review_id: str, kind: VerdictKind, *, reviewer: str | None = None,
                fields: dict[str, str] | None = None, reason: str | None = None) -> Verdict:
        """Steps 1 and 2: the verdict this reviewer would write, refused early if the item is decided."""
        item, decided = self.get(review_id)
        if decided is not None:
            raise VerdictRefused(decided.verdict, void=False)
        arguments = None
        if kind == VerdictKind.correct:
            answer = orjson.dumps(self.corrected(item, fields or {})).decode()
        elif fields and kind == VerdictKind.approve and item.action is not None:
            answer, arguments = None, orjson.dumps(self.adjusted(item, fields)).decode()
        elif fields:
            raise InvalidVerdict("--set belongs to correct (an answer) or to approving an action's adjustable "
                                 "arguments; approve takes the answer as it is")
        else:
            answer = item.answer if kind == VerdictKind.approve and item.reason != ReviewReason.risky_action else None
        signer = self.signer or Signer.from_env().acting_as(reviewer_name(reviewer))
        verdict = Verdict(verdict_id=uuid.uuid4().hex, review_id=review_id, event_id=item.event_id,
                          workflow=self.workflow.name, reviewer=signer.identity, verdict=kind,
                          answer=answer, reason=reason, at_ms=now_ms(), item=item, arguments=arguments)
        needed = roles_needed(verdict)
        errors = verdict_errors(self.workflow, verdict) + (
            [] if needed & set(signer.roles) else
            [f"{signer.identity} may not: it takes the role {' or '.join(sorted(needed))}"])
        if errors:
            raise InvalidVerdict(f"{kind} of {review_id} refused:\n  " + "\n  ".join(errors))
        return signer.sign(verdict, "signature")

    def submit(self, verdict: Verdict) -> Verdict:
        """Step 3: write the verdict and confirm it is the first in the log on its review id."""
        write(self.settings.producer(), self.verdict_topic.name,
                       [(verdict.review_id, self._verdicts.encode(verdict.model_dump(), self.verdict_topic.name))],
                       what=f"verdict on {verdict.review_id}", then="nothing was decided, try again", timeout_s=10)
        self.refresh()  # the ends it reads were asked for after the acknowledgement: they include ``mine``
        _, logged = self._get(verdict.review_id)
        first = logged.verdict
        if first.verdict_id != verdict.verdict_id:
            raise VerdictRefused(first, void=True)
        return verdict

    def corrected(self, item: ReviewItem, fields: dict[str, str]) -> dict:
        """The model's answer (an empty one when it gave none) with the reviewer's fields set.

        A person's answer is certain: ``confidence`` becomes 1 unless the reviewer sets it.
        Values of numeric, boolean, array or object fields are read as JSON.
        """
        properties = self.workflow.prompt_spec.output_schema.get("properties", {})
        answer = orjson.loads(item.answer) if item.answer else {}
        if "confidence" in properties:
            answer["confidence"] = 1.0
        return _set(answer, properties, fields)

    def adjusted(self, item: ReviewItem, fields: dict[str, str]) -> dict:
        """The action's requested arguments with the approver's fields set (typed by its arguments_schema)."""
        action = self.workflow.actions.get(item.action.action)
        properties = action.arguments_schema.get("properties", {}) if action else {}
        return _set(orjson.loads(item.action.arguments), properties, fields)


def _set(values: dict, properties: dict, fields: dict[str, str]) -> dict:
    """``values`` with each field set; a field whose schema type is not a string is read as JSON (a field that
    may be a string, ``type: [string, "null"]``, takes the text)."""
    for name, text in fields.items():
        declared = properties.get(name, {}).get("type")
        types = set(declared) if isinstance(declared, list) else {declared}
        if "string" not in types and types & JSON_TYPES:
            try:
                values[name] = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise InvalidVerdict(f"--set {name}={text}: {name} needs a JSON "
                                     f"{properties[name]['type']}") from None
        else:
            values[name] = text
    return values


def open_items(store: ViewStore, scope: str) -> list[ReviewItem]:
    """The open queue as the view holds it (the order of :meth:`ReviewQueue.open_items`): one index range."""
    with store.read() as conn:
        rows = conn.execute(select(review_items.c.item)
                            .where(review_items.c.scope == scope, review_items.c.decided.is_(False))
                            .order_by(review_items.c.rank, review_items.c.created_at_ms))
        return [ReviewItem.model_validate_json(item) for (item,) in rows]


def parse_fields(pairs: list[str]) -> dict[str, str]:
    """``--set field=value`` options as a mapping."""
    fields = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InvalidVerdict(f"--set {pair!r}: expected field=value")
        fields[name.strip()] = value
    return fields


def next_step(verdict: Verdict) -> str:
    """What the ``review`` stage does with a verdict that won."""
    if verdict.verdict == VerdictKind.reject:
        return "closed: nothing continues"
    if verdict.item.reason == ReviewReason.risky_action:
        adjusted = " with the adjusted arguments" if verdict.arguments else ""
        return f"the action runs once{adjusted} (the review stage hands it to execute, approved)"
    return "the reviewed answer goes on to route, then its actions run once"


# ---- what a reviewer reads -----------------------------------------------------------------------

def line(workflow: Workflow, item: ReviewItem, now: int | None = None) -> str:
    """One open item: id, reason, age, what the model said (or the action), the event in short."""
    if item.reason == ReviewReason.risky_action:
        what = f"action {item.action.action}" if item.action else "action ?"
    elif item.answer:
        answer = orjson.loads(item.answer)
        what = f"{workflow.label}={answer.get(workflow.label)} ({answer.get('confidence', '?')})"
    else:
        what = "no valid answer"
    return f"{item.review_id}  {item.reason}  {_age((now or now_ms()) - item.created_at_ms)}  {what}  " \
           f"{summary(workflow, item)}"


def summary(workflow: Workflow, item: ReviewItem, width: int = 70) -> str:
    """The first text input the prompt declares (a subject, a query), redacted as classify redacts
    it, and shortened."""
    inputs = workflow.prompt_spec.select_inputs(orjson.loads(item.event))
    redacted = workflow.redaction.inputs(inputs)
    texts = [redacted[p] for p, v in inputs.items() if isinstance(v, str) and v.strip()]
    text = " ".join(texts[0].split()) if texts else ""
    return f'"{text[:width - 1]}…"' if len(text) > width else f'"{text}"'


def context(item: ReviewItem, decided: Logged | None) -> dict:
    """Everything about an item, its JSON texts parsed: what ``review show`` prints."""
    out = item.model_dump()
    for name in ("event", "answer"):
        if out[name] is not None:
            out[name] = orjson.loads(out[name])
    if out["action"] is not None:
        out["action"]["arguments"] = orjson.loads(out["action"]["arguments"])
        out["action"].pop("decision")  # the same answer and event again
    verdict = decided.verdict.model_dump(exclude={"item"}) if decided else None
    if verdict and verdict["answer"] is not None:
        verdict["answer"] = orjson.loads(verdict["answer"])
    return {"open": decided is None, "item": out, "verdict": verdict}


def _logged(row) -> Logged:
    return Logged(partition=row.partition_id, offset=row.log_offset, verdict=Verdict.model_validate_json(row.verdict))


def _age(ms: int) -> str:
    seconds = max(ms, 0) // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
