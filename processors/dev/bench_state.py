"""``make bench``, the state part: what a stateful stage costs as its history grows.

For each history size (10k, 100k, 1M settled events) the duplicate check's changelog
(``<wf>.seen``) is written directly — the records a real history leaves, without running a million
events through a model — and a real ``handoff run --stage validate`` process restores it:

* ``restore_moved_s``: a new instance (empty state folder) takes every partition, so it reads every
  partition's changelog whole: the time a moved partition costs, proportional to its live state;
* ``restore_restart_s``: the same instance restarted on its own folder, after 1,000 more entries were
  written: it reads only that tail;
* ``rss_mb``: the stage process's resident memory once restored;
* ``dedupe_check_us``: one duplicate check (a store lookup: the pending layer, then RocksDB, then
  decoding the entry), timed in this process on the restored folder.

Restore times are the stage's own (its log line "restored … in Xs"), so process start-up is not counted.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from processors.clock import now_ms
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role, apply
from processors.kafka.write import load
from processors.records import SeenEvent
from processors.runtime.options import stage_group
from processors.runtime.stage import TableContext
from processors.stages.base import SeenEvents
from processors.workflow.workflow import Workflow

SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
TAIL = 1_000
CHECKS = 20_000
STATE_DIR = Path(".local/bench-state")
BULK = {"linger.ms": 50, "batch.num.messages": 10_000}  # a producer tuned for writing histories
_RESTORED = re.compile(r"restored \S+ partitions \[[\d, ]*\]: (\d+) changelog records in ([\d.]+)s")


def history(workflow: Workflow, settings: KafkaSettings, start: int, n: int, partitions: int) -> None:
    """``n`` settled events on the duplicate check's changelog, spread over its partitions."""
    spec = workflow.spec(Role.seen)
    serde = spec.serde(settings)
    at = now_ms()
    load(settings.producer(**BULK), spec.name,
         ((f"h{i}", serde.encode(SeenEvent(event_id=f"h{i}", partition=i % partitions, offset=i, at_ms=at).model_dump()),
           i % partitions) for i in range(start, start + n)))


def restore_in_stage(workflow: Workflow, settings: KafkaSettings, instance: str, folder: Path,
                     log: Path) -> tuple[float, int, float]:
    """Start ``handoff run --stage validate``, wait for its restore; (seconds, records read, RSS MB)."""
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "HANDOFF_NAMESPACE": settings.namespace}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "processors.cli", "run", "--workflow", workflow.name,
                                 "--stage", "validate", "--instance", instance, "--state-dir", str(folder)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not (found := _RESTORED.search(log.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the validate stage did not restore: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))
        return float(found[2]), int(found[1]), rss_kb / 1024
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def dedupe_check_us(workflow: Workflow, settings: KafkaSettings, folder: Path, instance: str, n: int,
                    partitions: int) -> float:
    """Microseconds per duplicate check on the restored store (this process opens the same folder)."""
    store = SeenEvents(workflow, Role.seen, Role.classified)
    member = f"{settings.group_id(stage_group(workflow.name, 'validate'))}.{instance}"
    admin = settings.admin()
    store.open(TableContext(changelog=workflow.spec(Role.seen), source=workflow.spec(Role.classified),
                            settings=settings, admin=admin, directory=folder / member / store.topic))
    store.assign(list(range(partitions)))
    try:
        keys = [(i % partitions, f"h{i}") for i in random.Random(7).sample(range(n), min(CHECKS, n))]
        started = time.perf_counter()
        found = sum(store.get(p, key) is not None for p, key in keys)
        elapsed = time.perf_counter() - started
        if found != len(keys):
            raise RuntimeError(f"the restored store lacks {len(keys) - found} of {len(keys)} entries")
        return elapsed / len(keys) * 1e6
    finally:
        store.close()


def measure(workflow: Workflow, settings: KafkaSettings, logs: Path) -> dict[str, dict[str, float]]:
    """The state figures by name, then by history size (``state.<name>.<size>`` in results.json)."""
    apply(settings.admin(), list(workflow.topics.values()))
    partitions = len(settings.admin().list_topics(workflow.spec(Role.seen).name, timeout=10)
                     .topics[workflow.spec(Role.seen).name].partitions)
    figures: dict[str, dict[str, float]] = {}
    written = 0
    for label, size in SIZES.items():
        history(workflow, settings, written, size - written, partitions)
        written = size
        folder = STATE_DIR / label
        moved_s, moved_n, rss = restore_in_stage(workflow, settings, f"bench-{label}", folder, logs / f"moved-{label}.log")
        history(workflow, settings, written, TAIL, partitions)
        written += TAIL
        restart_s, restart_n, _ = restore_in_stage(workflow, settings, f"bench-{label}", folder,
                                                   logs / f"restart-{label}.log")
        check = dedupe_check_us(workflow, settings, folder, f"bench-{label}", size, partitions)
        print(f"    state {label:>4}: moved partitions restore {moved_s:6.2f}s ({moved_n} records), "
              f"restart {restart_s:5.2f}s ({restart_n} records), stage RSS {rss:6.0f} MB, "
              f"duplicate check {check:5.1f} µs", flush=True)
        for name, value in (("restore_moved_s", moved_s), ("restore_restart_s", restart_s), ("rss_mb", rss),
                            ("dedupe_check_us", check)):
            figures.setdefault(name, {})[label] = round(value, 3)
    return figures
