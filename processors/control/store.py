"""The control topic: what a workflow's running stages obey, changed without a restart.

``<workflow>.control`` is compacted, one partition, keyed by workflow name. Each change is a
whole new :class:`~processors.records.ControlState` with ``version`` one higher than the
state it was based on, so the latest record is the state in force and a reader never has to
merge. Every output a stage writes records the version that was in force (``control_version``).

Stages read the state from a :class:`Control`: pinned to one state (offline runs, evals,
shadow replays) or a :class:`ControlWatcher`, which follows the topic on a background thread.
The watcher reads the topic to its end before it returns from ``start`` — the pipeline starts
it before any stage consumes — so a restarted stage never processes a record under a stale
state; afterwards it polls every half second, so a change is in force within about a second.
A stage reads ``control.state`` once per record and uses that one state for all it decides and
writes about the record.

Writers (``handoff prompt promote``, ``handoff control …``, the console) read the current state,
apply one change and publish the next version signed for who made it
(:mod:`processors.signing`), waiting for the broker's acknowledgement; a change the signer's roles
do not cover is refused before it is written (:class:`ControlRefused`), and a running stage
ignores a state that is not signed, or whose signer lacks the roles
(:func:`~processors.control.state.control_refusal`). Two writers
racing on the same version both land; the later offset wins, and each change names who made
it and why. Compaction keeps only the latest state per workflow on the topic; the whole history
is kept by the views (:mod:`processors.views.control_history`, ``handoff control show --history``).
"""

from __future__ import annotations

import getpass
import os

from processors.clock import now_ms
from processors.control.state import control_refusal, initial, roles_needed
from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.kafka.write import write
from processors.records import ControlState
from processors.signing import IDENTITY_ENV, Keyring, Signer
from processors.workflow.workflow import Workflow


class ControlUnavailable(RuntimeError):
    """The control topic cannot be read: most often it was never created."""


class ControlRefused(ValueError):
    """The signer's roles do not cover the change; nothing was written."""


class ControlStore:
    """Read and publish a workflow's control state; ``signer`` signs the changes (default: the
    environment's key, for ``changed_by``)."""

    def __init__(self, settings: KafkaSettings, workflow: Workflow, signer: Signer | None = None):
        self.signer = signer
        self.keyring = Keyring.from_env()
        self.settings = settings
        self.workflow = workflow
        self.spec = workflow.spec(Role.control)
        self.serde = self.spec.serde(settings)

    def check(self) -> None:
        """Fail now, with what to do, when the control topic is missing."""
        admin = self.settings.admin()
        topic = admin.list_topics(self.spec.name, timeout=10).topics.get(self.spec.name)
        if topic is None or topic.error is not None:
            raise ControlUnavailable(f"control topic {self.spec.name}: {topic.error if topic else 'missing'} "
                                     f"(create it: handoff topics apply --workflow {self.workflow.name})")

    def history(self) -> list[ControlState]:
        """Every state still on the topic, oldest first (compaction keeps at least the latest): what
        :meth:`current` reads; people read the whole history from the views."""
        return [state for msg in snapshot(self.settings, self.spec.name) if (state := self.decode(msg)) is not None]

    def decode(self, msg) -> ControlState | None:
        """The state a control record carries, or None when it belongs to another workflow (or is a tombstone)."""
        if msg.value() is None or msg.key() != self.workflow.name.encode():
            return None
        return ControlState.model_validate(self.serde.decode(msg.value()))

    def current(self) -> ControlState:
        """The latest accepted state, as a running stage's watcher has it: an unsigned or unauthorized
        state on the topic is passed over, so no later change builds on it."""
        state = initial(self.workflow)
        for later in self.history():
            if control_refusal(state, later, self.keyring) is None:
                state = later
        return state

    def publish(self, change: str, *, changed_by: str | None = None, reason: str | None = None,
                forced: bool = False, **fields) -> ControlState:
        """Apply ``fields`` (labels, mode, kill_switch, review_threshold, approval_risk) to the
        current state and publish it as the next version; returns the published state. ``labels``
        are set one by one: the labels not named keep their versions."""
        signer = self.signer or Signer.from_env().acting_as(
            changed_by or os.environ.get(IDENTITY_ENV) or getpass.getuser())
        current = self.current()
        if "labels" in fields:
            fields["labels"] = {**current.labels, **fields["labels"]}
        state = ControlState.model_validate({**current.model_dump(exclude={"signature"}), **fields,
                                             "version": current.version + 1, "changed_by": signer.identity,
                                             "change": change, "reason": reason, "forced": forced, "at_ms": now_ms()})
        missing = roles_needed(current, state) - set(signer.roles)
        if missing:
            raise ControlRefused(f"{change}: takes the role(s) {', '.join(sorted(missing))}; {signer.identity} "
                                 f"holds {', '.join(signer.roles) or 'none'}")
        state = signer.sign(state, "signature")
        write(self.settings.producer(), self.spec.name,
              [(self.workflow.name, self.serde.encode(state.model_dump(), self.spec.name))],
              what="control change", timeout_s=10,
              then=f"see whether it landed (handoff control show --workflow {self.workflow.name}), then try again")
        return state
