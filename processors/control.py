"""The control topic: what a workflow's running stages obey, changed without a restart.

``<workflow>.control`` is compacted, one partition, keyed by workflow name. Each change is a
whole new :class:`~processors.records.ControlState` with ``version`` one higher than the
state it was based on, so the latest record is the state in force and a reader never has to
merge. Every output a stage writes records the version that was in force (``control_version``).

Writers (``handoff prompt promote``, ``handoff control …``) read the current state, apply one
change and publish the next version, waiting for the broker's acknowledgement. Two writers
racing on the same version both land; the later offset wins, and each change names who made
it and why, so the history on the topic (until compaction) shows what happened.
"""

from __future__ import annotations

import getpass

from processors.kafka import KafkaSettings
from processors.records import ControlState
from processors.serde import AvroSerde
from processors.stage import now_ms
from processors.tail import snapshot
from processors.workflow import Workflow


def initial(workflow: Workflow) -> ControlState:
    """The state before anything was published: the workflow file's prompt in production, full rollout."""
    return ControlState(workflow=workflow.name, version=0, labels={"production": workflow.prompt_spec.version},
                        changed_by="workflow.yaml", change="initial", at_ms=0)


class ControlStore:
    """Read and publish a workflow's control state."""

    def __init__(self, settings: KafkaSettings, workflow: Workflow):
        self.settings = settings
        self.workflow = workflow
        self.spec = workflow.topics[workflow.topic("control")]
        self.serde = AvroSerde(self.spec.value_schema)

    def history(self) -> list[ControlState]:
        """Every state still on the topic, oldest first (compaction keeps at least the latest)."""
        states = []
        for msg in snapshot(self.settings, self.spec.name):
            if msg.value() is not None and msg.key() == self.workflow.name.encode():
                states.append(ControlState.model_validate(self.serde.decode(msg.value())))
        return states

    def current(self) -> ControlState:
        states = self.history()
        return states[-1] if states else initial(self.workflow)

    def publish(self, change: str, *, changed_by: str | None = None, reason: str | None = None,
                forced: bool = False, **fields) -> ControlState:
        """Apply ``fields`` (labels, mode, kill_switch, review_threshold, approval_risk) to the
        current state and publish it as the next version; returns the published state."""
        current = self.current()
        state = ControlState.model_validate({**current.model_dump(), **fields, "version": current.version + 1,
                                             "changed_by": changed_by or getpass.getuser(), "change": change,
                                             "reason": reason, "forced": forced, "at_ms": now_ms()})
        producer = self.settings.producer()
        producer.produce(self.spec.name, key=self.workflow.name, value=self.serde.encode(state.model_dump()))
        if producer.flush(10) != 0:
            raise RuntimeError(f"control change not acknowledged by the broker ({self.settings.bootstrap_servers})")
        return state
