"""Classify: refuse what must not reach the model, render the prompt from the declared inputs
only, ask the model, keep everything.

Before the model is asked (a model call is paid for, and an injection sent is an injection read),
a new trigger meets two checks that need no answer:

* **duplicate**: an event id this stage already sent to the model or settled (its partition-local
  store :class:`~processors.stages.base.SeenEvents`, changelog ``<workflow>.taken``, kept for
  ``retention.dedupe_window``), or is asking the model about right now — by a *different* record:
  the same record re-read after a crash or an aborted transaction is processed again — is dropped
  with a trace, as validate drops it;
* **event rules** (``rules.EVENT_RULES``, those of the workflow's ``rules``: the event tries to
  instruct the model) → review (``event_rule``) at once, with the rules' messages; the event is
  settled in the ledger, as validate settles what it sends to review.

Neither applies to a repair (the record was checked when it came in) or a replay (a deliberate
re-run is no duplicate; the event rules still apply). Validate keeps both checks as a second line.

The model sees the redacted declared inputs and nothing else. Its raw answer, the parsed
JSON (or nothing, when it is not a JSON object), the prompt name and version, the model,
latency, tokens and cost all travel on in a work item; judging the answer is validate's job.

Failure paths: a retryable provider error (timeout, 5xx, rate limit) is retried with
jittered exponential backoff up to ``retries.attempts``; then the trigger goes to the dead
letters as ``model_unavailable``. A request the provider refuses (``model_rejected``) is not
retried. A work item coming back on the repair topic is asked once more, with the
validation errors appended (attempt 2). HTTP providers retry and fall back on their own first
(``processors/providers/http.py``, ``chain.py``); a retry here re-runs that whole call. Each
earlier attempt behind an answer — a retry, a fallback, a cascade step — gets its own trace.

Control (``processors/control/``), read once per record: the prompt version is the one the
``production`` label points to (a repair keeps the version of the answer it repairs). With the
kill switch on, no model is called: the trigger goes to review (``kill_switch``) whole, with no
answer — fail safe. Every work item records the control version it was made under.

Grounding: in a workflow that declares ``lookups``, classify reads ``<wf>.grounded`` (written by
the ground stage: the trigger with its lookups' results) instead of the triggers, renders the
prompt from the event and ``lookups.<name>…`` — only the lookup paths the prompt spec declares among
its inputs — and keeps the lookups on the work item, so a repair renders the same context.

Chaining: a workflow whose trigger is another's decisions (``trigger.chain``) reads the parent's
decision and sees it unpacked (:meth:`Trigger.event_view`: the parent's event, and its event id,
decision and prompt version under ``parent``), so its records carry them. A decision the parent made
in a live replay carries the replay id, and the child takes it as a replay too (not a duplicate).

Replay: a trigger with header ``handoff-replay: <id>`` is a deliberate re-run. Its work item
carries the id (route copies it to the decision, validate does not take it for a duplicate),
and ``handoff-prompt-version: <V>`` on it overrides the label for that one record.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from processors.clock import now_ms
from processors.control.state import Control
from processors.kafka.topics import Role
from processors.paths import dotted
from processors.providers.base import ModelAnswer, ModelRequest, Provider, ProviderError, ProviderTimeout
from processors.records import ControlState, GroundedEvent, PromptRef, ReviewReason, StageName, Usage, WorkItem, dumps
from processors.runtime import metrics
from processors.runtime.stage import DeadLetter, Emit, Record, Table
from processors.stages.base import PROMPT_VERSION_HEADER, REPLAY_HEADER, SeenEvents, WorkflowStage
from processors.workflow import rules
from processors.workflow.prompt import PromptSpec
from processors.workflow.workflow import LOOKUPS_INPUT, Workflow, WorkflowError


def parse_answer(text: str) -> dict | None:
    """The answer as a JSON object, tolerating a Markdown code fence around it; else None."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


class Classify(WorkflowStage):
    name = StageName.classify
    input_roles = [Role.triggers, Role.repair]
    output_roles = [Role.classified, Role.review, Role.traces]

    def __init__(self, workflow: Workflow, provider: Provider, control: Control | ControlState | None = None):
        super().__init__(workflow, control)
        self.provider = provider
        self.usage = metrics.ModelUsage(workflow.name)
        self.source = Role.grounded if workflow.lookups else Role.triggers
        """What new events come from: the triggers, or the ground stage's output when lookups are declared."""
        self.inputs = [workflow.topic(self.source), workflow.topic(Role.repair)]
        self.seen = SeenEvents(workflow, Role.taken, self.source)
        self.taken: dict[str, tuple[int, int]] = {}
        """Event id -> (partition, offset) of a trigger being asked about now; the store has it once answered."""

    def tables(self) -> list[Table]:
        return [self.seen]

    async def process(self, record: Record) -> list[Emit]:
        control = self.control.state
        repaired = None
        if self.is_from(record.topic, Role.repair):
            repaired = WorkItem.model_validate(record.value)
            event, attempt, errors, trigger_ms = (repaired.event_dict(), 2, repaired.validation_errors,
                                                  repaired.trigger_timestamp_ms)
            version, replay, lookups = repaired.prompt.version, repaired.replay, repaired.lookups
        else:
            attempt, errors = 1, []
            if self.source == Role.grounded:  # ground unpacked the trigger already
                grounded = GroundedEvent.model_validate(record.value)
                event, trigger_ms, lookups = orjson.loads(grounded.event), grounded.trigger_timestamp_ms, grounded.lookups
            else:
                event, trigger_ms, lookups = self.workflow.trigger.event_view(record.value), record.timestamp_ms, None
            replay = _header(record, REPLAY_HEADER) or self.workflow.trigger.replay_of(record.value)
            version = (replay and _header(record, PROMPT_VERSION_HEADER)) or control.labels.get("production")
        spec = self.spec(version)
        event_id = str(dotted(event, self.workflow.trigger.event_id))
        if repaired is None:
            refused = self._refused(record, event, event_id, spec, control, replay, lookups)
            if refused:
                return refused
        if control.kill_switch:
            return self._killed(record, event, event_id, spec, control, replay, repaired, lookups)
        if repaired is None and not replay:
            self.taken[event_id] = (record.partition, record.offset)
        seen = event if lookups is None else {**event, LOOKUPS_INPUT: orjson.loads(lookups)}
        inputs = self.workflow.redaction.inputs(spec.select_inputs(seen))
        user = spec.render(inputs) + (f"\n\n{spec.render_repair(errors)}" if errors else "")
        request = ModelRequest(prompt_name=spec.name, prompt_version=spec.version, system=spec.system, user=user,
                               inputs=inputs, output_schema=spec.output_schema, temperature=spec.temperature,
                               max_tokens=spec.max_tokens, repair_errors=errors, event_id=event_id)
        new = repaired is None and not replay
        try:
            answer = await self._ask(request)
        finally:
            if new:
                self.taken.pop(event_id, None)  # answered: the store has it below; failed: taken on again if sent again
        parsed = parse_answer(answer.text)
        self.usage.record(answer.model, spec.version, answer.latency_ms, answer.tokens_in, answer.tokens_out,
                          answer.cost_usd)
        prompt = PromptRef(name=spec.name, version=spec.version)
        item = WorkItem(event_id=event_id, workflow=self.workflow.name, event=dumps(event), attempt=attempt,
                        prompt=prompt, model=answer.model, raw_answer=answer.text,
                        answer=None if parsed is None else dumps(parsed), trigger_timestamp_ms=trigger_ms,
                        latency_ms=answer.latency_ms, tokens_in=answer.tokens_in, tokens_out=answer.tokens_out,
                        cost_usd=answer.cost_usd, control_version=control.version, replay=replay, lookups=lookups)
        tried = [self.trace(event_id, usage=Usage(latency_ms=a.latency_ms), prompt=prompt, model=a.model,
                            error=a.outcome) for a in answer.attempts[:-1]]  # their cost is in the answer's
        settled = [self.seen.settle(event_id, record.partition, record.offset)] if new else []
        return [Emit(self.workflow.topic(Role.classified), item, key=record.key), *settled, *tried,
                self.trace(event_id, usage=item, prompt=prompt, model=answer.model, inputs=inputs,
                           raw_answer=answer.text, answer=item.answer)]

    def tick(self, now_ms: int, partitions: list[tuple[str, int]]) -> list[Emit]:
        """Forget event ids taken longer ago than the dedupe window."""
        return self.seen.expire(self.owned(partitions, self.source), now_ms)

    def spec(self, version: str | None) -> PromptSpec:
        """The prompt spec of ``version`` (the workflow file's when None); a version with no file
        dead-letters the record."""
        try:
            return self.workflow.prompt_spec_for(version or self.workflow.prompt_spec.version)
        except WorkflowError as exc:
            raise DeadLetter("unknown_prompt_version", str(exc)) from exc

    def _refused(self, record: Record, event: dict, event_id: str, spec: PromptSpec, control: ControlState,
                 replay: str | None, lookups: str | None) -> list[Emit]:
        """A new trigger's path when it must not reach the model (a duplicate, an event rule); [] when it may.
        The review item keeps the lookups, so a person's answer is checked against them."""
        here = (record.partition, record.offset)
        settled = None if replay else self.seen.get(record.partition, event_id)
        if settled is not None and (settled.partition, settled.offset) != here:
            return [self.trace(event_id, error=f"duplicate event id, first settled at offset {settled.offset}: "
                                               "not sent to the model")]
        taken = None if replay else self.taken.get(event_id)
        if taken is not None and taken != here:
            return [self.trace(event_id, error=f"duplicate event id, taken on at offset {taken[1]}: "
                                               "not sent to the model")]
        errors = [str(error) for error in rules.check_event(self.workflow.rules, event)]
        if not errors:
            return []
        prompt = PromptRef(name=spec.name, version=spec.version)
        settles = [] if replay else [self.seen.settle(event_id, record.partition, record.offset)]
        return [self.review(ReviewReason.event_rule, event_id=event_id, event=dumps(event), prompt=prompt, model="none",
                            key=record.key, control_version=control.version, replay=replay, validation_errors=errors,
                            lookups=lookups),
                *settles, self.trace(event_id, prompt=prompt, validation=errors,
                                     error="a rule on the event failed: sent to review (event_rule), no model call")]

    def _killed(self, record: Record, event: dict, event_id: str, spec: PromptSpec, control: ControlState,
                replay: str | None, repaired: WorkItem | None, lookups: str | None) -> list[Emit]:
        """Kill switch: no model call; a person decides from the whole event (and, for a repair, the answer
        that failed validation)."""
        prompt = PromptRef(name=spec.name, version=spec.version)
        context = {"lookups": lookups} | ({} if repaired is None else {"raw_answer": repaired.raw_answer,
                                                                       "validation_errors": repaired.validation_errors})
        return [self.review(ReviewReason.kill_switch, event_id=event_id, event=dumps(event), prompt=prompt,
                            model="none", key=record.key, control_version=control.version, replay=replay, **context),
                self.trace(event_id, prompt=prompt, error=f"kill switch on (control version {control.version}): "
                                                          "no model call, sent to review")]

    async def close(self) -> None:
        await self.provider.close()

    async def _ask(self, request: ModelRequest) -> ModelAnswer:
        """The provider's answer, retried while retrying can help; DeadLetter when it cannot.

        The first call goes out bare: the retry machinery costs more than the call itself
        when the model answers, which is nearly always.
        """
        retries = self.workflow.retries
        failures: list[int] = []  # when each failed attempt ended

        async def attempt() -> ModelAnswer:
            try:
                return await self._call(request)
            except ProviderError:
                failures.append(now_ms())
                raise

        try:
            try:
                return await attempt()
            except ProviderError as exc:
                if not exc.retryable or retries.attempts == 1:
                    raise
            await asyncio.sleep(retries.backoff_initial_s)  # before the first retry; tenacity spaces the rest
            return await AsyncRetrying(
                stop=stop_after_attempt(retries.attempts - 1),
                wait=wait_exponential_jitter(multiplier=retries.backoff_initial_s, max=retries.backoff_max_s,
                                             jitter=retries.backoff_initial_s),
                retry=retry_if_exception(lambda exc: isinstance(exc, ProviderError) and exc.retryable),
                before=lambda _state: metrics.RETRIES.labels(self.workflow.name, self.name).inc(),
                reraise=True)(attempt)
        except ProviderError as exc:
            reason = "model_unavailable" if exc.retryable else "model_rejected"
            raise DeadLetter(reason, f"{type(exc).__name__}: {exc}", attempts=len(failures),
                             first_failure_ms=failures[0]) from exc

    async def _call(self, request: ModelRequest) -> ModelAnswer:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(None if self.provider.self_timed else self.workflow.retries.timeout_s):
                answer = await self.provider.complete(request)
        except TimeoutError as exc:
            raise ProviderTimeout(f"no answer within {self.workflow.retries.timeout_s}s") from exc
        if not answer.latency_ms:
            answer.latency_ms = (time.perf_counter() - started) * 1000
        return answer


def _header(record: Record, name: str) -> str | None:
    value = record.headers.get(name)
    return value.decode() if value else None
