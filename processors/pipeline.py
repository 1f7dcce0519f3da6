"""A workflow's stages, wired to Kafka: one process per stage in production, all in one for
development and the demo.

Each stage gets its own :class:`StageRuntime` — its own consumer group, producer and event
loop — exactly as if it ran in its own process, so ``--stage all`` behaves like four
deployments sharing a machine. The first stage that fails stops the others: a half-running
pipeline would silently pile work up in front of the dead stage.
"""

from __future__ import annotations

import concurrent.futures
import logging
import signal
import threading
import time
from collections.abc import Callable

from processors import logs
from processors.control.watcher import ControlWatcher
from processors.kafka.lag import LagProbe
from processors.kafka.settings import KafkaSettings
from processors.providers.base import Provider
from processors.runtime.runtime import RuntimeOptions, StageRuntime
from processors.stages.registry import build_stage, stages_for
from processors.workflow.workflow import Workflow

log = logging.getLogger("handoff.pipeline")

def wait_until_drained(settings: KafkaSettings, runtimes: list[StageRuntime], timeout: float, quiet_checks: int = 2,
                       interval: float = 1.0, running: Callable[[], bool] = lambda: True) -> bool:
    """Wait until every runtime's consumer group has committed all its input, ``quiet_checks`` times
    in a row ``interval`` apart (repairs loop back upstream, so one quiet look is not enough), or
    ``timeout``, or ``running()`` turns False; True when drained. The runtimes may run in this
    process or in others (their group names are what counts). A look whose lag is unknown (a broker
    restarting: :class:`LagProbe`) is not quiet.
    """
    deadline = time.monotonic() + timeout
    quiet = 0
    probe = LagProbe(settings)
    try:
        while time.monotonic() < deadline and quiet < quiet_checks and running():
            time.sleep(interval)
            lags = [probe.lag(settings.group_id(r.group), r.input_topics) for r in runtimes]
            quiet = quiet + 1 if all(lag == 0 for lag in lags) else 0
    finally:
        probe.close()
    return quiet >= quiet_checks


class Pipeline:
    """Runs the named stages of one workflow, each in its own thread, until stopped."""

    def __init__(self, workflow: Workflow, settings: KafkaSettings, stages: list[str] | None = None,
                 options: RuntimeOptions | None = None, provider: Provider | None = None):
        """``stages``: by name; default every stage the workflow runs (:func:`stages_for`)."""
        stages = stages_for(workflow) if stages is None else stages
        self.control = ControlWatcher(settings, workflow)  # one per process, shared by its stages
        self.runtimes = [StageRuntime(build_stage(name, workflow, provider, self.control), workflow.name,
                                      workflow.topics, settings, options) for name in stages]
        self.settings = settings
        self.errors: list[BaseException] = []

    def stop(self, *_args) -> None:
        for runtime in self.runtimes:
            runtime.stop()

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Block until every stage has stopped; re-raise the first stage failure. The control state
        in force is read before any stage consumes, and followed while they run."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        self.control.start()
        threads = [threading.Thread(target=self._run_one, args=(runtime, until), name=f"stage-{runtime.stage.name}")
                   for runtime in self.runtimes]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)  # short joins keep the main thread responsive to signals
        finally:
            self.control.stop()
        if self.errors:
            raise self.errors[0]

    def run_until_drained(self, timeout: float, quiet_checks: int = 2, interval: float = 1.0) -> bool:
        """Run until every stage has committed all its input (see :func:`wait_until_drained`), or
        ``timeout``; True when drained."""
        def drained() -> bool:
            try:
                return wait_until_drained(self.settings, self.runtimes, timeout, quiet_checks, interval,
                                          running=lambda: not self.errors)
            finally:
                self.stop()

        watcher = concurrent.futures.ThreadPoolExecutor(1).submit(drained)
        self.run()
        return watcher.result()

    def _run_one(self, runtime: StageRuntime, until: Callable[[], bool] | None) -> None:
        logs.bind(stage=runtime.stage.name)  # every line of this stage's thread says which stage
        try:
            runtime.run(until)
        except BaseException as exc:
            log.error("stage %s failed: %s; stopping the pipeline", runtime.stage.name, exc)
            self.errors.append(exc)
            self.stop()
