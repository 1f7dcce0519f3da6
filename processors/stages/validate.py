"""Validate: an answer is used only when code can show it is safe enough to use.

In order: the answer is a JSON object; it satisfies the prompt spec's JSON Schema (types,
allowed values, bounds); it passes the workflow's business rules; its confidence reaches the
review threshold. Then:

* invalid on attempt 1 → back to classify on the repair topic, with the errors (one repair);
* invalid on attempt 2 → review (``invalid_output``): fail closed, never guess;
* a rule on the event itself failed (``rules.EVENT_RULES``: the event tries to instruct the model)
  → review (``event_rule``) at once: no repaired answer could pass, and a repair would hand the
  model the same text again. Classify applies these rules before the model is asked, so this is
  a second line;
* valid but not confident enough → review (``low_confidence``);
* valid, but the answer's ``review_flag`` field is true → review (``flagged``);
* valid → the validated topic, for route.

A duplicate event id is recognised with a partition-local store (:class:`SeenEvents`, changelog
``<workflow>.seen``, kept for ``retention.dedupe_window``): the first record to settle an event is
remembered with its partition and offset; a *different* record
for the same event id later is dropped as a duplicate, while the *same* record re-read after
a crash is processed again (its earlier outputs were never committed). A replayed item
(``WorkItem.replay``) is a deliberate re-run: it neither consults nor updates the ledger. Classify
drops duplicates before the model is asked; here are met those it could not know yet (a copy
that arrived while the stage restarted, or was served by another instance in a rebalance).

Control, read once per record: the review threshold in force (the control state's when set,
else the workflow's); the answer is checked against the output schema of the prompt version
that produced it, whichever version the production label points to now.
"""

from __future__ import annotations

from processors.control.state import Control, review_threshold
from processors.kafka.topics import Role
from processors.records import ControlState, ReviewReason, StageName, WorkItem
from processors.runtime import metrics
from processors.runtime.stage import Emit, Record, Table
from processors.stages.base import SeenEvents, WorkflowStage
from processors.workflow.answers import AnswerErrors, answer_errors
from processors.workflow.workflow import Workflow

MAX_ATTEMPTS = 2  # the first answer and one repair


class Validate(WorkflowStage):
    name = StageName.validate
    input_roles = [Role.classified]
    output_roles = [Role.repair, Role.validated, Role.review, Role.traces]
    inline = True

    def __init__(self, workflow: Workflow, control: Control | ControlState | None = None):
        super().__init__(workflow, control)
        self.seen = SeenEvents(workflow, Role.seen, Role.classified)

    def tables(self) -> list[Table]:
        return [self.seen]

    def tick(self, now_ms: int, partitions: list[tuple[str, int]]) -> list[Emit]:
        """Forget event ids settled longer ago than the dedupe window."""
        return self.seen.expire(self.owned(partitions, Role.classified), now_ms)

    def errors(self, answer: dict | None, item: WorkItem) -> AnswerErrors:
        return answer_errors(self.workflow, answer, item.prompt.version, item.event_dict(), item.lookups_dict())

    async def process(self, record: Record) -> list[Emit]:
        control = self.control.state
        item = WorkItem.model_validate(record.value)
        earlier = None if item.replay else self.seen.get(record.partition, item.event_id)
        if earlier is not None and (earlier.partition, earlier.offset) != (record.partition, record.offset):
            return [self.trace(item.event_id, error=f"duplicate event id, first settled at offset {earlier.offset}")]
        answer = item.answer_dict()
        checked = self.errors(answer, item)
        errors = checked.messages
        for problem in errors:
            metrics.VALIDATION_FAILURES.labels(self.workflow.name, problem.split(":")[0]).inc()
        trace = self.trace(item.event_id, answer=item.answer, validation=errors or "ok")
        event_rule = checked.judges_the_event
        if errors and item.attempt < MAX_ATTEMPTS and not event_rule:
            retry = item.model_copy(update={"validation_errors": errors, "control_version": control.version})
            return [Emit(self.workflow.topic(Role.repair), retry, key=record.key), trace]
        settled = [] if item.replay else [self.seen.settle(item.event_id, record.partition, record.offset)]
        if errors:
            reason = ReviewReason.event_rule if event_rule else ReviewReason.invalid_output
            return [self._review(reason, item, record, errors, control), *settled, trace]
        confidence = answer.get("confidence", 0.0)
        threshold = review_threshold(self.workflow, control)
        if confidence < threshold:
            return [self._review(ReviewReason.low_confidence, item, record,
                                 [f"confidence {confidence} is below {threshold}"], control), *settled, trace]
        flag = self.workflow.review_flag
        if flag and answer.get(flag) is True:
            return [self._review(ReviewReason.flagged, item, record, [f"the answer asks for a person ({flag}: true)"],
                                 control), *settled, trace]
        item.control_version = control.version  # this stage's own copy, decoded for this record
        return [Emit(self.workflow.topic(Role.validated), item, key=record.key), *settled, trace]

    def _review(self, reason: ReviewReason, item: WorkItem, record: Record, errors: list[str],
                control: ControlState) -> Emit:
        return self.review(reason, event_id=item.event_id, event=item.event, prompt=item.prompt, model=item.model,
                           key=record.key, answer=item.answer, raw_answer=item.raw_answer, validation_errors=errors,
                           control_version=control.version, replay=item.replay, lookups=item.lookups)
