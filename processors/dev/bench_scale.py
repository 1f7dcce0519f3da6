"""``make bench``, scale-out simulated: classify with 1, 2 and 4 instances of one stage on one broker.

Each instance is a ``handoff run --stage classify --instance <name>`` process on banking77 with the
scripted model at 100 ms a call (a project of the bench's own, ``.local/bench-project``: the shipped
banking77 with its ``model`` replaced). A backlog is written first; then, a phase of ``PHASE_S``
each: one instance; a second joins; two more join; one leaves (SIGTERM: a graceful stop, which
leaves the group, see ``leave_group_on_stop``). A phase starts once its new instance has been
assigned partitions (its log says it restored them). Per phase the events/s is the classified
outputs' rate in its last half, and each join or leave's pause is the longest gap between
consecutive outputs from the change asked to the phase's half (the group's range assignment stops
every instance while partitions move). A process that dies instead holds its partitions for the session
timeout (45 s), which the README states beside ``--instance``; it is not re-measured here.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

from processors.clock import now_ms
from processors.dev.bench_kit import BENCH_LOGS, fresh, produce, stage_env, stage_process, stop_processes, triggers
from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.project import EXAMPLES, PROJECT_ENV

PROJECT = Path(".local/bench-project")
PHASE_S = 8.0
PAUSE_WINDOW_S = 6.0


def scripted_project(latency_s: float) -> Path:
    """The shipped banking77 in a project of its own, its model the scripted one at ``latency_s``."""
    shutil.rmtree(PROJECT, ignore_errors=True)
    shutil.copytree(EXAMPLES / "workflows/banking77", PROJECT / "workflows/banking77")
    for folder in ("schemas", "topics"):
        shutil.copytree(EXAMPLES / folder, PROJECT / folder)
    spec = PROJECT / "workflows/banking77/workflow.yaml"
    declared = yaml.safe_load(spec.read_text())
    declared["model"] = {"kind": "scripted", "latency_s": latency_s}
    spec.write_text(yaml.safe_dump(declared, sort_keys=False))
    return PROJECT.resolve()


def _wait_assigned(log: Path, process, timeout_s: float = 180) -> None:
    """Until the instance restored its first partitions (it joined and was assigned: the rebalance is done)."""
    deadline = time.monotonic() + timeout_s
    while "restored" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"a classify instance did not join; see {log}")
        time.sleep(0.1)


def _longest_gap_s(stamps: list[int], start_ms: int, end_ms: int) -> float:
    inside = [start_ms, *(ts for ts in stamps if start_ms <= ts <= end_ms)]
    return max(b - a for a, b in zip(inside, inside[1:])) / 1000 if len(inside) > 1 else (end_ms - start_ms) / 1000


def measure(settings: KafkaSettings, n: int, latency_s: float = 0.1, say=print) -> dict[str, float]:
    """``scale.<name>``: events/s with 1, 2, 4 and (after one leaves) 3 instances; the pause of each change."""
    settings, workflow = fresh(settings, "scale")
    env = stage_env(settings, **{PROJECT_ENV: str(scripted_project(latency_s))})
    produce(settings, workflow.spec(Role.triggers).name, triggers(workflow, settings, n, "scale"))
    instances: list = []
    marks: list[tuple[str, int, int, int]] = []  # (change, instances after it, asked at, in force from)

    def change(label: str, count: int) -> None:
        asked = now_ms()
        while len(instances) < count:
            instances.append(stage_process(workflow, settings, "classify", f"scale-{len(instances) + 1}",
                                           "--instance", f"bench-{len(instances) + 1}", env=env))
            _wait_assigned(BENCH_LOGS / f"scale-{len(instances)}.log", instances[-1])
        while len(instances) > count:
            instance = instances.pop()
            instance.terminate()
            instance.wait(60)
        marks.append((label, count, asked, now_ms()))
        time.sleep(PHASE_S)

    try:
        for label, count in (("start", 1), ("join 2nd", 2), ("join 3rd and 4th", 4), ("leave 4th", 3)):
            change(label, count)
        marks.append(("end", len(instances), now_ms(), now_ms()))
    finally:
        stop_processes(instances, "scale-out classify")
    stamps = sorted(m.timestamp()[1] for m in snapshot(settings, workflow.spec(Role.classified).name))
    figures: dict[str, float] = {}
    for (label, count, asked, at), (_, _, until, _) in zip(marks, marks[1:]):
        half = at + (until - at) // 2
        eps = sum(half <= ts < until for ts in stamps) / max((until - half) / 1000, 1e-3)
        figures[f"classify_{count}_instances_eps"] = eps
        line = f"scale-out: {count} instance{'s' if count > 1 else ''} of classify (scripted {latency_s * 1000:.0f} ms): {eps:7.0f} events/s"
        if label != "start":
            pause = _longest_gap_s(stamps, asked, half)
            figures[f"{label.split()[0]}_to_{count}_pause_s"] = pause
            line += f"; {label}: outputs paused {pause:.2f} s at most"
        say(line)
    if stamps and stamps[-1] >= marks[-1][3] - 500:
        say(f"    (the backlog of {n} lasted the whole run)")
    else:
        say(f"    (the backlog of {n} ran out before the end: the last phases are short of work)")
    return figures
