"""Live: the selection through the running stages again, marked as a replay.

A live replay acts, so it is gated like a promotion; its records carry ``handoff-replay`` (and
the prompt version), and their actions keep their idempotency keys, so nothing runs twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tqdm import tqdm

from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.offline.evals import EvalReport, run_suite
from processors.offline.replay.places import Place, places
from processors.offline.replay.report import Change, ReplayMode, ReplayReport
from processors.offline.replay.selection import Selected, before
from processors.offline.replay.writes import produce_acknowledged
from processors.records import GroundedEvent
from processors.stages.base import PROMPT_VERSION_HEADER, REPLAY_HEADER
from processors.workflow.workflow import Workflow


def gate(workflow: Workflow, version: str, production: str) -> EvalReport | None:
    """A live replay acts through ``version``: unless production runs it already, it must pass its
    eval suite first, the gate ``prompt promote`` applies. The report of a miss, or None: go ahead."""
    if version == production:
        return None
    report = run_suite(workflow.with_prompt(version), progress=True)
    return None if report.passed else report


def reinject(workflow: Workflow, settings: KafkaSettings, selected: Selected, replay_id: str,
             prompt_version: str | None, reused: dict[str, GroundedEvent] | None = None) -> int:
    """Produce the selection to ``<wf>.triggers`` with its original keys and the replay headers — the
    events in ``reused`` to ``<wf>.grounded`` instead, with their recorded lookups, for classify;
    returns how many records the broker acknowledged (all, or it raises)."""
    reused = reused or {}
    headers = [(REPLAY_HEADER, replay_id.encode())]
    if prompt_version is not None:
        headers.append((PROMPT_VERSION_HEADER, prompt_version.encode()))
    sent = produce_acknowledged(settings, workflow.spec(Role.triggers).name,
                                [(o.key, o.value) for o in selected.originals if o.event_id not in reused],
                                headers=headers, desc=f"re-injecting {replay_id}")
    if reused:
        grounded = workflow.spec(Role.grounded)
        serde = grounded.serde(settings)
        sent += produce_acknowledged(settings, grounded.name,
                                     [(o.key, serde.encode(reused[o.event_id].model_dump(), grounded.name))
                                      for o in selected.originals if o.event_id in reused],
                                     headers=headers, desc=f"re-injecting {replay_id} with recorded lookups")
    return sent


def settle(workflow: Workflow, settings: KafkaSettings, selected: Selected, replay_id: str, prompt_version: str,
           before: dict[str, Place], written: int, timeout: float, poll_s: float = 1.0) -> ReplayReport:
    """Wait (up to ``timeout``) until the running stages have placed every re-injected event again
    — a decision, review item or dead letter carrying the replay id — and report the changes."""
    wanted = {o.event_id: o for o in selected.originals}
    deadline = time.monotonic() + timeout
    with tqdm(total=len(wanted), desc=f"settling {replay_id}", unit="event", disable=None) as bar:
        while True:
            now = {e: p for e, p in places(workflow, settings, replay=replay_id).items() if e in wanted}
            bar.update(len(now) - bar.n)
            if len(now) == len(wanted) or time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
    changes = [Change(event_id=e, origin=o.origin, before=before.get(e), after=now[e])
               for e, o in wanted.items() if e in now]
    return ReplayReport(replay_id=replay_id, mode=ReplayMode.live, prompt_version=prompt_version, selected=selected,
                        changes=changes, written=written)


def live(workflow: Workflow, settings: KafkaSettings, selected: Selected, replay_id: str, prompt_version: str,
         wait: float, say: Callable[[str], None],
         reused: dict[str, GroundedEvent] | None = None) -> ReplayReport | None:
    """Re-inject the selection for the running stages; with ``wait`` > 0, wait that long for them to
    settle it and report what changed (None without). ``say`` hears each step as it happens."""
    say(f"replay {replay_id} (live, prompt {prompt_version}): {selected.render()}")
    was = before(workflow, settings, selected) if wait else {}
    sent = reinject(workflow, settings, selected, replay_id, prompt_version, reused)
    say(f"re-injected {sent} into {workflow.spec(Role.triggers).name}; the running stages decide "
        f"them again, and an action already executed is answered already_done, not repeated")
    return settle(workflow, settings, selected, replay_id, prompt_version, was, sent, wait) if wait else None
