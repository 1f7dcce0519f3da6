"""What every workflow stage shares: its workflow, the control state it obeys, and the two
records any step may write — a trace of what it did, and a review item when a person must decide.

The control (``processors/control/``) is pinned to ``initial(workflow)`` unless the caller
hands in another: the pipeline hands every stage the one watcher that follows the control topic,
offline runs (evals, shadow replays) pin a fixed state, so a stage never needs Kafka to be built.
"""

from __future__ import annotations

from processors.clock import now_ms
from processors.control.state import Control, initial
from processors.kafka.topics import Role
from processors.records import (  # noqa: F401  REPLAY_HEADER: the stages and replay import it from here
    REPLAY_HEADER,
    ControlState,
    PromptRef,
    ReviewItem,
    ReviewReason,
    SeenEvent,
    Trace,
    Usage,
    dumps,
)
from processors.runtime import metrics
from processors.runtime.stage import Emit, Stage
from processors.state.store import Store
from processors.workflow.workflow import Workflow

PROMPT_VERSION_HEADER = "handoff-prompt-version"
"""On a replayed trigger: the prompt version to answer with, instead of the production label's."""


class SeenEvents(Store[SeenEvent]):
    """A duplicate check's memory: the record that first settled each event id, kept for the workflow's
    ``retention.dedupe_window`` and then tombstoned (classify's on ``<wf>.taken``, validate's on ``<wf>.seen``)."""

    def __init__(self, workflow: Workflow, changelog: Role, source: Role):
        super().__init__(workflow.topic(changelog), workflow.topic(source), SeenEvent)
        self.window_ms = int(workflow.retention.dedupe_window * 1000)

    def due_ms(self, entry: SeenEvent) -> int:
        return entry.at_ms + self.window_ms

    def settle(self, event_id: str, partition: int, offset: int) -> Emit:
        """Remember that the record at ``partition``/``offset`` settled ``event_id``."""
        return self.put(partition, event_id, SeenEvent(event_id=event_id, partition=partition, offset=offset,
                                                       at_ms=now_ms()))


class WorkflowStage(Stage):
    def __init__(self, workflow: Workflow, control: Control | ControlState | None = None):
        self.workflow = workflow
        self.control = control if isinstance(control, Control) else Control(control or initial(workflow))
        self.inputs = [workflow.topic(role) for role in self.input_roles]
        self.quality = metrics.Quality(workflow.name, workflow.escalation.route if workflow.escalation else None)

    input_roles: list[Role]
    output_roles: list[Role]
    """What the stage writes, by role (``decisions``: every route's): what its principal must be allowed
    to write (``handoff acls``). Its tables write their changelogs, the runtime the dead letters."""

    def outputs(self) -> list[str]:
        """The declared names of every topic the stage writes itself (not its tables' changelogs, not dead letters)."""
        return [name for role in self.output_roles for name in
                ([self.workflow.topic(role, route) for route in self.workflow.route_names]
                 if role == Role.decisions else [self.workflow.topic(role)])]

    def is_from(self, topic: str, role: Role) -> bool:
        """Does a consumed record's (namespaced) topic name the workflow's ``role`` topic?"""
        return self.workflow.spec(role).name == topic

    def owned(self, partitions: list[tuple[str, int]], role: Role) -> list[int]:
        """The partition numbers of the ``role`` topic among ``partitions`` (what a tick is given)."""
        return [p for topic, p in partitions if self.is_from(topic, role)]

    def trace(self, run_id: str, *, usage: Usage | None = None, prompt: PromptRef | None = None,
              model: str | None = None, **texts: object) -> Emit:
        """One step of one run. Every text is redacted here, whatever the caller passed in."""
        redact = self.workflow.redaction.text
        fields = {name: redact(value if isinstance(value, str) else dumps(value))
                  for name, value in texts.items() if value is not None}
        trace = Trace(run_id=run_id, workflow=self.workflow.name, step=self.name, at_ms=now_ms(),
                      prompt=prompt, model=model, **(usage.model_dump(include=set(Usage.model_fields)) if usage else {}),
                      **fields)
        return Emit(self.workflow.topic(Role.traces), trace, key=run_id)

    def review(self, reason: ReviewReason, *, event_id: str, event: str, prompt: PromptRef, model: str,
               key: bytes | str | None, suffix: str = "", control_version: int | None = None,
               replay: str | None = None, **context) -> Emit:
        """A review item with the whole context; ``review_id`` is stable so a redelivery cannot open it
        twice, and carries the replay id of a replayed item, so a re-review after a fix is a new item.
        ``control_version``: the version the caller decided under (default: the one in force now)."""
        metrics.REVIEWS.labels(self.workflow.name, reason).inc()
        self.quality.sent_to_review(prompt.version, risky_action=reason == ReviewReason.risky_action)
        review_id = f"{event_id}:{reason}{suffix}" + (f":replay:{replay}" if replay else "")
        deadline, created = self.workflow.deadline_for(reason), now_ms()
        item = ReviewItem(review_id=review_id, event_id=event_id, workflow=self.workflow.name, reason=reason,
                          stage=self.name, event=event, prompt=prompt, model=model, created_at_ms=created,
                          queue=deadline.queue, deadline_ms=created + round(deadline.deadline * 1000),
                          control_version=self.control.state.version if control_version is None else control_version,
                          replay=replay, **context)
        return Emit(self.workflow.topic(Role.review), item, key=key)
