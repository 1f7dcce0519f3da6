"""Shadow: decide the selection again in this process, act on nothing, report what would change.

The real classify/validate/route code runs offline (:mod:`processors.offline.runner`) under the
control state in force; its decisions go to ``<wf>.replay`` only, which nothing acts on.
"""

from __future__ import annotations

from processors.clock import now_ms
from processors.control.store import ControlStore
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.offline.replay.places import Place
from processors.offline.replay.report import Change, ReplayMode, ReplayReport
from processors.offline.replay.selection import Selected, before
from processors.offline.replay.writes import produce_acknowledged
from processors.offline.runner import OfflineResult, OfflineRunner
from processors.providers.base import Provider
from processors.records import ControlState, GroundedEvent, dumps
from processors.stages.base import REPLAY_HEADER
from processors.workflow.workflow import Workflow


def _place(result: OfflineResult) -> Place:
    answer = dumps(result.answer) if result.answer is not None else None
    if result.ended == "decision":
        return Place(kind="decision", detail=result.route or "", at_ms=result.decision.decided_at_ms, answer=answer)
    if result.ended == "review":
        return Place(kind="review", detail=result.review_reason or "", at_ms=result.review.created_at_ms,
                     answer=answer)
    return Place(kind="dead_letter", detail=result.dead_letter_reason or "", at_ms=now_ms())


async def shadow(workflow: Workflow, settings: KafkaSettings, selected: Selected, prompt_version: str,
                 provider: Provider | None, replay_id: str, *, state: ControlState | None = None,
                 reused: dict[str, GroundedEvent] | None = None) -> ReplayReport:
    """Decide the selection again with ``prompt_version``; decisions go to ``<wf>.replay`` only.

    The stages obey the control state in force (mode, thresholds, kill switch) with production
    pointing to ``prompt_version``: what a live replay would do now, short of acting. ``state``:
    that control state when the caller has read it already. ``provider``: None for the
    workflow's own model, built here and closed after. ``reused``: the recorded lookups of the events
    that skip ground (:mod:`.lookups`)."""

    was = before(workflow, settings, selected)
    state = ControlStore(settings, workflow).current() if state is None else state
    pinned = state.model_copy(update={"labels": state.labels | {"production": prompt_version}})
    runner = OfflineRunner(workflow.with_prompt(prompt_version), provider or workflow.provider(), pinned)
    try:
        results = await runner.run([o.event for o in selected.originals], progress=f"shadow replay {replay_id}",
                                   grounded=reused)
    finally:
        if provider is None:
            await runner.provider.close()
    spec = workflow.spec(Role.replay)
    serde = spec.serde(settings)
    decisions = [(o.key, r.decision.model_copy(update={"replay": replay_id}))
                 for o, r in zip(selected.originals, results) if r.decision is not None]
    produce_acknowledged(settings, spec.name, [(key, serde.encode(d.model_dump(), spec.name)) for key, d in decisions],
                         headers=[(REPLAY_HEADER, replay_id.encode())], desc="writing replay decisions")
    changes = [Change(event_id=o.event_id, origin=o.origin, before=was.get(o.event_id), after=_place(r),
                      label=r.label, confidence=(r.answer or {}).get("confidence"))
               for o, r in zip(selected.originals, results) if r.ended != "duplicate"]
    return ReplayReport(replay_id=replay_id, mode=ReplayMode.shadow, prompt_version=prompt_version,
                        selected=selected, changes=changes, written=len(decisions))
