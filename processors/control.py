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

Writers (``handoff prompt promote``, ``handoff control …``) read the current state, apply one
change and publish the next version, waiting for the broker's acknowledgement. Two writers
racing on the same version both land; the later offset wins, and each change names who made
it and why, so the history on the topic (until compaction) shows what happened.
"""

from __future__ import annotations

import getpass
import logging
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from processors.kafka import KafkaSettings
from processors.records import ControlState
from processors.serde import AvroSerde
from processors.stage import now_ms
from processors.tail import snapshot
from processors.workflow import Workflow

log = logging.getLogger("handoff.control")

POLL_S = 0.5


def initial(workflow: Workflow) -> ControlState:
    """The state before anything was published: the workflow file's prompt in production, its mode."""
    return ControlState(workflow=workflow.name, version=0, labels={"production": workflow.prompt_spec.version},
                        mode=workflow.mode, changed_by="workflow.yaml", change="initial", at_ms=0)


class ControlUnavailable(RuntimeError):
    """The control topic cannot be read: most often it was never created."""


class ControlStore:
    """Read and publish a workflow's control state."""

    def __init__(self, settings: KafkaSettings, workflow: Workflow):
        self.settings = settings
        self.workflow = workflow
        self.spec = workflow.topics[workflow.topic("control")]
        self.serde = AvroSerde(self.spec.value_schema)

    def check(self) -> None:
        """Fail now, with what to do, when the control topic is missing."""
        admin = self.settings.admin()
        topic = admin.list_topics(self.spec.name, timeout=10).topics.get(self.spec.name)
        if topic is None or topic.error is not None:
            raise ControlUnavailable(f"control topic {self.spec.name}: {topic.error if topic else 'missing'} "
                                     f"(create it: handoff topics apply --workflow {self.workflow.name})")

    def history(self) -> list[ControlState]:
        """Every state still on the topic, oldest first (compaction keeps at least the latest)."""
        return [state for msg in snapshot(self.settings, self.spec.name) if (state := self.decode(msg)) is not None]

    def decode(self, msg) -> ControlState | None:
        """The state a control record carries, or None when it belongs to another workflow (or is a tombstone)."""
        if msg.value() is None or msg.key() != self.workflow.name.encode():
            return None
        return ControlState.model_validate(self.serde.decode(msg.value()))

    def current(self) -> ControlState:
        states = self.history()
        return states[-1] if states else initial(self.workflow)

    def publish(self, change: str, *, changed_by: str | None = None, reason: str | None = None,
                forced: bool = False, **fields) -> ControlState:
        """Apply ``fields`` (labels, mode, kill_switch, review_threshold, approval_risk) to the
        current state and publish it as the next version; returns the published state. ``labels``
        are set one by one: the labels not named keep their versions."""
        current = self.current()
        if "labels" in fields:
            fields["labels"] = {**current.labels, **fields["labels"]}
        state = ControlState.model_validate({**current.model_dump(), **fields, "version": current.version + 1,
                                             "changed_by": changed_by or getpass.getuser(), "change": change,
                                             "reason": reason, "forced": forced, "at_ms": now_ms()})
        producer = self.settings.producer()
        producer.produce(self.spec.name, key=self.workflow.name, value=self.serde.encode(state.model_dump()))
        if producer.flush(10) != 0:
            raise RuntimeError(f"control change not acknowledged by the broker ({self.settings.bootstrap_servers})")
        return state


def review_threshold(workflow: Workflow, state: ControlState) -> float:
    """Answers less confident than this go to a person: the control state's value when set."""
    return workflow.review_threshold if state.review_threshold is None else state.review_threshold


def approval_risk(workflow: Workflow, state: ControlState) -> float:
    """Actions riskier than this wait for a person's approval: the control state's value when set."""
    return workflow.approval_risk if state.approval_risk is None else state.approval_risk


def promote(store: ControlStore, version: str, *, label: str = "production", force: bool = False,
            reason: str | None = None, changed_by: str | None = None, progress: bool = False):
    """Point ``label`` at ``version`` when the version's eval suite passes; returns (the published
    state or None when refused, the eval report). ``force`` publishes past failing evals, and needs
    a reason: both are recorded on the state (``forced``, ``reason``)."""
    from processors.evals import run_suite  # evaluating loads models: only when promoting

    if force and not (reason or "").strip():
        raise ValueError("--force needs --reason: say why this version goes out with failing evals")
    report = run_suite(store.workflow.with_prompt(version), progress=progress)
    if not report.passed and not force:
        return None, report
    change = f"promote {version} to {label}" + ("" if report.passed else " past failing evals")
    state = store.publish(change, labels={label: version}, changed_by=changed_by, reason=reason,
                          forced=not report.passed)
    return state, report


def rollback(store: ControlStore, to: str | None = None, *, label: str = "production", reason: str | None = None,
             changed_by: str | None = None) -> ControlState:
    """Point ``label`` back at ``to``, or at the ``rollback_version`` its current version names.
    No evals: a rollback goes to a version that was in production before, and it must be quick."""
    workflow = store.workflow
    now = store.current().labels.get(label, workflow.prompt_spec.version)
    target = to or workflow.prompt_spec_for(now).rollback_version
    if target is None:
        raise ValueError(f"{label} runs {now}, whose prompt spec names no rollback_version: name one with --to")
    workflow.prompt_spec_for(target)  # it must exist: a label never points at nothing
    return store.publish(f"rollback {label} from {now} to {target}", labels={label: target},
                         changed_by=changed_by, reason=reason)


class Control:
    """The control state a stage obeys, pinned: it never changes (offline runs, evals, replays)."""

    def __init__(self, state: ControlState):
        self.state = state

    def start(self) -> None:
        """Nothing to follow."""

    def stop(self) -> None:
        """Nothing to release."""


class ControlWatcher(Control):
    """The latest state on ``<workflow>.control``, followed on a background thread.

    One consumer with no group (partition 0 assigned from the beginning, nothing committed), so
    every process reads the whole topic and no two watchers ever share work.
    """

    def __init__(self, settings: KafkaSettings, workflow: Workflow):
        super().__init__(initial(workflow))
        self.store = ControlStore(settings, workflow)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Read the topic to its end (the state in force now), then follow it in the background."""
        self.store.check()
        topic = self.store.spec.name
        consumer = self.store.settings.consumer(f"{self.store.workflow.name}.control-watcher",
                                                **{"enable.partition.eof": True})
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        try:
            self._catch_up(consumer, timeout)
        except BaseException:
            consumer.close()
            raise
        log.info("%s: control version %d in force (%s)", self.store.workflow.name, self.state.version,
                 self.state.change)
        self._thread = threading.Thread(target=self._follow, args=(consumer,), daemon=True,
                                        name=f"control-{self.store.workflow.name}")
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)

    def _catch_up(self, consumer, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {self.store.spec.name} to its end within {timeout:.0f}s")
            msg = consumer.poll(POLL_S)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return
                raise RuntimeError(f"reading {self.store.spec.name}: {msg.error()}")
            self._apply(msg)

    def _follow(self, consumer) -> None:
        try:
            while not self._stopping.is_set():
                msg = consumer.poll(POLL_S)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("reading %s: %s", self.store.spec.name, msg.error())
                    continue
                try:
                    self._apply(msg)
                except Exception as exc:  # a bad record must not stop the watcher: the last good state stays
                    log.error("%s offset %d is not a control state, ignored: %s", self.store.spec.name,
                              msg.offset(), exc)
                    continue
                log.info("%s: control version %d in force: %s", self.store.workflow.name, self.state.version,
                         self.state.change)
        finally:
            consumer.close()

    def _apply(self, msg) -> None:
        state = self.store.decode(msg)
        if state is not None:
            self.state = state  # one attribute write: readers on other threads see the old or the new state
