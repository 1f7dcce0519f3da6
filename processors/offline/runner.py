"""Run events through a workflow's real stages in memory: no broker, same decisions.

Evals, shadow replays and promotion gates need to know what the pipeline *would* do with an
event without writing to its topics. The runner builds the same ``Classify``, ``Validate`` and
``Route`` stages a ``handoff run`` uses and hands records from one to the next the way the
topics would, by the declared topic an ``Emit`` names:

* ``classified`` → validate, ``repair`` → classify, ``validated`` → route; in a workflow that
  declares lookups, ``triggers`` → ground (the lookups are made again, for real) and ``grounded``
  → classify;
* ``review``, ``decisions.*`` and ``shadow`` settle the event; ``actions`` are the requests the
  decision made (collected, never executed);
* ``traces`` and ledger entries (``seen``) are dropped: nothing is written anywhere;
* ``DeadLetter`` from any stage settles the event as a dead letter with its reason, and any
  other exception as ``stage_error``, exactly as the runtime would.

Each trigger is first encoded and decoded with the trigger topic's contract, so classify sees
the record it would read from Kafka (defaults filled in), and an event that could never be
produced is refused with the contract's error instead of being evaluated.

The duplicate ledger is never restored offline (no runtime reads its topic); classify and
validate only remember what one ``run`` call took on, so an event id seen twice in one call is
reported as ``duplicate`` (as the pipeline would drop it, before the model is asked), while
separate calls are independent.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import deque
from collections.abc import Iterable
from typing import Literal

import orjson
from pydantic import Field
from tqdm import tqdm

from processors.clock import now_ms
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.paths import dotted
from processors.providers.base import Provider
from processors.records import (
    LABELS_FIELD,
    ControlState,
    Decision,
    GroundedEvent,
    PromptRef,
    ReviewItem,
    ReviewReason,
    Usage,
    WorkItem,
)
from processors.runtime.stage import DeadLetter, Emit, Record, Stage
from processors.stages.classify import Classify
from processors.stages.ground import Ground
from processors.stages.route import Route
from processors.stages.validate import Validate
from processors.workflow.workflow import Workflow

log = logging.getLogger("handoff.offline")

OFFLINE = KafkaSettings(schema_registry_url=None)
"""How an offline run frames its triggers: single-object, with no registry to reach (nor a broker),
so an eval runs anywhere."""


class OfflineResult(Usage):
    """Where one event ended and how it got there. Usage (latency, tokens, cost) sums every
    model answer behind it, the repair included; a dead letter's failed calls are not priced."""

    event_id: str
    ended: Literal["decision", "review", "dead_letter", "duplicate"]
    route: str | None = None
    label: str | None = Field(None, description="The final answer's label field, decided or sent to review.")
    answer: dict | None = Field(None, description="The final parsed answer (None: no JSON object, or no answer).")
    review_reason: ReviewReason | None = None
    validation_errors: list[str] = Field(default_factory=list, description="Of the final answer, when reviewed.")
    dead_letter_reason: str | None = None
    dead_letter_message: str | None = None
    actions: list[str] = Field(default_factory=list, description="Actions the decision requested (none executed).")
    first_answer_json: bool | None = Field(None, description="The first answer parsed as a JSON object; None: "
                                                             "the model never answered.")
    first_answer_valid: bool | None = Field(None, description="...and satisfied the prompt's output schema.")
    attempts: int = Field(0, description="Model answers received (a repair is the second), or failed calls "
                                         "behind a dead letter.")
    model: str | None = None
    prompt: PromptRef | None = None
    decision: Decision | None = Field(None, description="The decision record route wrote (shadow included).")
    review: ReviewItem | None = None


class _Trail:
    """What one event left behind on its way through the stages."""

    def __init__(self) -> None:
        self.items: list[WorkItem] = []
        self.decision: Decision | None = None
        self.review: ReviewItem | None = None
        self.actions: list[str] = []


class OfflineRunner:
    """One workflow's classify → validate → route, in memory. ``control`` pins the control state
    the stages obey (prompt label, rollout mode, kill switch) instead of reading the control topic."""

    def __init__(self, workflow: Workflow, provider: Provider, control: ControlState | None = None):
        self.workflow = workflow
        self.provider = provider
        self.control = control
        self.label = workflow.label
        trigger = workflow.spec(Role.triggers)
        self.trigger_topic = trigger.name
        self.contract = trigger.serde(OFFLINE)
        self.schema = workflow.prompt_spec.answer_check  # judges the first answer

    def encode(self, row: dict) -> bytes:
        """The event's bytes on the trigger topic (a dataset row's ``expected`` dropped, as
        ``handoff produce`` drops it); ``EncodeError`` when it does not satisfy the trigger
        contract (it could never have been produced)."""
        event = {k: v for k, v in row.items() if k != LABELS_FIELD}
        return self.contract.encode(event, self.trigger_topic, check=True)

    async def run(self, rows: Iterable[dict], *, concurrency: int = 32, progress: bool | str = False,
                  grounded: dict[str, GroundedEvent] | None = None) -> list[OfflineResult]:
        """Every row's result, in input order. Up to ``concurrency`` events are in flight at once
        (the model calls overlap; the stages themselves are the pipeline's). ``progress`` shows a
        tqdm bar (a string is its description). Rows are checked against the contract first.
        ``grounded``: by event id, recorded lookups that take ground's place (a replay's choice)."""
        triggers = [self.encode(row) for row in rows]
        stages = self._stages()
        gate = asyncio.Semaphore(concurrency)
        bar = tqdm(total=len(triggers), disable=not progress, unit="event", leave=False, delay=1.0,
                   desc=progress if isinstance(progress, str) else self.workflow.name)

        async def one(offset: int, raw: bytes) -> OfflineResult:
            async with gate:
                result = await self._run_one(stages, offset, raw, grounded or {})
            bar.update()
            return result

        ground = stages.get(self.workflow.spec(Role.triggers).name)
        grounding = isinstance(ground, Ground)
        if grounding:
            await ground.start()
        try:
            return list(await asyncio.gather(*(one(offset, raw) for offset, raw in enumerate(triggers))))
        finally:
            bar.close()
            if grounding:
                await ground.close()

    def _stages(self) -> dict[str, Stage]:
        """Fresh stages per run, so their in-memory ledgers only know this run's events; by
        the (namespaced) name of the topic each reads, as the records carry it."""
        classify = Classify(self.workflow, self.provider, self.control)
        validate = Validate(self.workflow, self.control)
        route = Route(self.workflow, self.control)
        by_role = {Role.triggers: classify, Role.repair: classify, Role.classified: validate, Role.validated: route}
        if self.workflow.lookups:  # the lookups are made again, for real: what the model sees now
            by_role |= {Role.triggers: Ground(self.workflow, self.control), Role.grounded: classify}
        return {self.workflow.spec(role).name: stage for role, stage in by_role.items()}

    async def _run_one(self, stages: dict[str, Stage], offset: int, raw: bytes,
                       grounded: dict[str, GroundedEvent]) -> OfflineResult:
        event = self.contract.decode(raw)
        event_id = str(dotted(event, self.workflow.trigger.event_id))
        key = str(dotted(event, self.workflow.trigger.key)).encode()
        trail = _Trail()
        first = (Record(topic=self.workflow.spec(Role.grounded).name, partition=0, offset=offset, key=key,
                        value=grounded[event_id].model_dump(), timestamp_ms=now_ms()) if event_id in grounded else
                 Record(topic=self.trigger_topic, partition=0, offset=offset, key=key, value=event,
                        timestamp_ms=now_ms()))
        queue = deque([first])
        try:
            while queue:
                record = queue.popleft()
                for emit in await stages[record.topic].process(record):
                    follow_up = self._dispatch(emit, trail, record.offset)
                    if follow_up is not None:
                        queue.append(follow_up)
        except DeadLetter as exc:
            return self._result(event_id, "dead_letter", trail, dead_letter_reason=exc.reason,
                                dead_letter_message=str(exc), attempts=exc.attempts)
        except Exception as exc:  # a bug or an unexpected input: what the runtime dead-letters as poison
            log.error("offline run of %s failed:\n%s", event_id, traceback.format_exc(), extra={"event_id": event_id})
            return self._result(event_id, "dead_letter", trail, dead_letter_reason="stage_error",
                                dead_letter_message=f"{type(exc).__name__}: {exc}")
        ended = "decision" if trail.decision else "review" if trail.review else "duplicate"
        return self._result(event_id, ended, trail)

    def _dispatch(self, emit: Emit, trail: _Trail, offset: int) -> Record | None:
        """Settle, collect or drop one output; return the record the next stage reads, if any."""
        suffix = emit.topic.removeprefix(f"{self.workflow.name}.")
        if suffix == Role.grounded:
            return Record(topic=self.workflow.topics[emit.topic].name, partition=0, offset=offset, key=emit.key,
                          value=emit.value.model_dump(), timestamp_ms=now_ms(),
                          headers={k: v.encode() for k, v in emit.headers.items()})
        if suffix in (Role.classified, Role.repair, Role.validated):
            item = WorkItem.model_validate(emit.value)
            if suffix == Role.classified:
                trail.items.append(item)
            return Record(topic=self.workflow.topics[emit.topic].name, partition=0, offset=offset,
                          key=emit.key if not isinstance(emit.key, str) else emit.key.encode(),
                          value=item.model_dump(), timestamp_ms=now_ms(),
                          headers={k: v.encode() for k, v in emit.headers.items()})
        if suffix == Role.review:
            trail.review = emit.value
        elif suffix == Role.shadow or suffix.startswith(f"{Role.decisions}."):
            trail.decision = emit.value
        elif suffix == Role.actions:
            trail.actions.append(emit.value.action)
        elif suffix not in (Role.traces, Role.seen, Role.taken):
            raise ValueError(f"offline runner: no path for output topic {emit.topic}")
        return None

    def _result(self, event_id: str, ended: str, trail: _Trail, **fields) -> OfflineResult:
        answer = None
        if trail.decision is not None:
            answer = trail.decision.answer
        elif trail.review is not None:
            answer = trail.review.answer
        parsed = None if answer is None else orjson.loads(answer)
        first = trail.items[0].answer_dict() if trail.items else None
        last = trail.items[-1] if trail.items else None
        usage = {name: sum(getattr(item, name) for item in trail.items) for name in Usage.model_fields}
        return OfflineResult(
            event_id=event_id, ended=ended, route=trail.decision.route if trail.decision else None,
            label=None if parsed is None or parsed.get(self.label) is None else str(parsed[self.label]),
            answer=parsed, review_reason=trail.review.reason if trail.review else None,
            validation_errors=trail.review.validation_errors if trail.review else [], actions=trail.actions,
            first_answer_json=first is not None if trail.items else None,
            first_answer_valid=first is not None and not self.schema.errors(first) if trail.items else None,
            attempts=fields.pop("attempts", len(trail.items)), model=last.model if last else None,
            prompt=last.prompt if last else None, decision=trail.decision, review=trail.review, **usage, **fields)
