"""Liveness and readiness of the stage runtimes in this process, for ``/healthz`` and ``/readyz``.

A supervisor (Kubernetes) asks two different questions, and each has its own answer:

* **Alive** (``/healthz``): the consumer loop is not stuck. The loop beats once per step; a loop
  whose last beat is older than ``stuck_after_s`` is stuck (a deadlock, a call that never
  returns), and restarting the process is the cure. Restoring a stage's tables on an assignment
  happens inside the rebalance callback, where the loop cannot beat; it may take long on a big
  table, so a restoring runtime counts as alive: killing it would only restart the restore.
* **Ready** (``/readyz``): the broker is reachable (no "all brokers down" since the loop last
  reached one), an assignment has arrived (possibly empty: an instance beyond the partition count
  is ready and idle) and the tables of its partitions are restored. Not ready means "send no
  traffic, do not count me as available": a PodDisruptionBudget then holds the next eviction.

Each :class:`~processors.runtime.runtime.StageRuntime` registers one :class:`StageHealth`; the
process is alive (ready) when every registered runtime is. Registrations are weak, so a runtime
that is gone (a test's, a finished one) leaves the answer.
"""

from __future__ import annotations

import threading
import time
import weakref

from pydantic import BaseModel

# Longer than the longest bounded wait the loop makes without a beat: a revoke (inside consume())
# drains for drain_timeout_s (10 s), flushes and commits a transaction (30 + 35 s: commit.TIMEOUT_S,
# WATCHDOG_S); a lost transaction retries its start-over for broker_timeout_s (60 s), then exits.
STUCK_AFTER_S = 120.0


class StageStatus(BaseModel):
    """One runtime's answer, as ``/healthz`` and ``/readyz`` print it."""

    workflow: str
    stage: str
    alive: bool
    ready: bool
    since_beat_s: float
    broker_reachable: bool
    assigned: bool
    restoring: bool


class Status(BaseModel):
    """The process's answer: alive (ready) when every stage runtime in it is."""

    alive: bool
    ready: bool
    stages: list[StageStatus]


class StageHealth:
    """What the loop of one runtime reports: its beats, its assignment, its restores."""

    def __init__(self, workflow: str, stage: str):
        self.workflow = workflow
        self.stage = stage
        self._beat = time.monotonic()  # start-up counts as a beat: stuck_after_s bounds it too
        self._broker_reachable = True
        self._assigned = False
        self._restoring = False

    def beat(self, broker_reachable: bool) -> None:
        """Once per loop step: the loop is alive, and whether it reaches a broker."""
        self._beat = time.monotonic()
        self._broker_reachable = broker_reachable

    def restoring(self) -> None:
        """An assignment arrived and its tables are being read: alive, not ready."""
        self._restoring = True

    def restored(self) -> None:
        """The assignment's tables are read: ready once the broker is reachable."""
        self._assigned, self._restoring = True, False
        self._beat = time.monotonic()

    def status(self, stuck_after_s: float) -> StageStatus:
        since = time.monotonic() - self._beat
        alive = self._restoring or since <= stuck_after_s
        return StageStatus(workflow=self.workflow, stage=self.stage, alive=alive,
                           ready=alive and self._assigned and not self._restoring and self._broker_reachable,
                           since_beat_s=round(since, 3), broker_reachable=self._broker_reachable,
                           assigned=self._assigned, restoring=self._restoring)


_RUNTIMES: weakref.WeakSet[StageHealth] = weakref.WeakSet()
_LOCK = threading.Lock()


def register(workflow: str, stage: str) -> StageHealth:
    """A new runtime's health, counted in this process's answer for as long as the runtime holds it."""
    health = StageHealth(workflow, stage)
    with _LOCK:
        _RUNTIMES.add(health)
    return health


def status(stuck_after_s: float = STUCK_AFTER_S) -> Status:
    """This process's answer. With no runtime (yet), alive but not ready: start-up is not a failure."""
    with _LOCK:
        stages = sorted((h.status(stuck_after_s) for h in _RUNTIMES), key=lambda s: (s.workflow, s.stage))
    return Status(alive=all(s.alive for s in stages), ready=bool(stages) and all(s.ready for s in stages),
                  stages=stages)
