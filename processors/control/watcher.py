"""Following ``<workflow>.control`` in a running process, so a change is in force within a second."""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from processors.control.state import Control, control_refusal, initial
from processors.control.store import ControlStore
from processors.kafka.settings import KafkaSettings
from processors.runtime.runtime import BrokerUnavailable
from processors.workflow.workflow import Workflow

log = logging.getLogger("handoff.control")

POLL_S = 0.5


def watcher_group(workflow: Workflow) -> str:
    """The group id of a watcher's consumer (before the namespace): never joined or committed, but on a
    secured cluster its principal needs Describe on it (the consumer looks its coordinator up)."""
    return f"{workflow.name}.control-watcher"


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
        """Read the topic to its end (the state in force now), then follow it in the background.
        :class:`BrokerUnavailable` when no broker answers: the first thing a pipeline asks the broker."""
        topic = self.store.spec.name
        try:
            self.store.check()
        except KafkaException as exc:
            raise BrokerUnavailable(f"no Kafka broker at {self.store.settings.bootstrap_servers} answered when "
                                    f"reading the control topic {topic}: {exc.args[0].str()}") from None
        consumer = self.store.settings.consumer(watcher_group(self.store.workflow), **{"enable.partition.eof": True})
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
                    applied = self._apply(msg)
                except Exception as exc:  # a bad record must not stop the watcher: the last good state stays
                    log.error("%s offset %d is not a control state, ignored: %s", self.store.spec.name,
                              msg.offset(), exc)
                    continue
                if applied:
                    log.info("%s: control version %d in force: %s", self.store.workflow.name, self.state.version,
                             self.state.change)
        finally:
            consumer.close()

    def _apply(self, msg) -> bool:
        """Put the record's state in force when it is signed by someone allowed the change; True if it was.
        A state that is not is ignored with one line: the state in force stays."""
        state = self.store.decode(msg)
        if state is None:
            return False
        refused = control_refusal(self.state, state, self.store.keyring)
        if refused is not None:
            log.warning("%s offset %d ignored: %s", self.store.spec.name, msg.offset(), refused)
            return False
        self.state = state  # one attribute write: readers on other threads see the old or the new state
        return True
