"""What every workflow stage shares: its workflow, and the two records any step may write —
a trace of what it did, and a review item when a person must decide."""

from __future__ import annotations

from processors import metrics
from processors.records import PromptRef, ReviewItem, Trace, Usage, dumps
from processors.stage import Emit, Stage, now_ms
from processors.workflow import Workflow


class WorkflowStage(Stage):
    def __init__(self, workflow: Workflow):
        self.workflow = workflow
        self.inputs = [workflow.topic(suffix) for suffix in self.input_suffixes]

    input_suffixes: list[str]

    def is_from(self, topic: str, suffix: str) -> bool:
        """Does a consumed record's (namespaced) topic name the declared ``<workflow>.<suffix>``?"""
        return self.workflow.topics[self.workflow.topic(suffix)].name == topic

    def trace(self, run_id: str, *, usage: Usage | None = None, prompt: PromptRef | None = None,
              model: str | None = None, **texts: object) -> Emit:
        """One step of one run. Every text is redacted here, whatever the caller passed in."""
        redact = self.workflow.redaction.text
        fields = {name: redact(value if isinstance(value, str) else dumps(value))
                  for name, value in texts.items() if value is not None}
        trace = Trace(run_id=run_id, workflow=self.workflow.name, step=self.name, at_ms=now_ms(),
                      prompt=prompt, model=model, **(usage.model_dump(include=set(Usage.model_fields)) if usage else {}),
                      **fields)
        return Emit(self.workflow.topic("traces"), trace, key=run_id)

    def review(self, reason: str, *, event_id: str, event: str, prompt: PromptRef, model: str,
               key: bytes | str | None, suffix: str = "", **context) -> Emit:
        """A review item with the whole context; ``review_id`` is stable so a replay cannot open it twice."""
        metrics.REVIEWS.labels(self.workflow.name, reason).inc()
        item = ReviewItem(review_id=f"{event_id}:{reason}{suffix}", event_id=event_id, workflow=self.workflow.name,
                          reason=reason, stage=self.name, event=event, prompt=prompt, model=model,
                          created_at_ms=now_ms(), **context)
        return Emit(self.workflow.topic("review"), item, key=key)
