"""A replay as the command line asks for it: which version it runs, whether it may, and either mode.

The version defaults to the one ``production`` points to in the control state in force; a live
replay of another version passes its eval suite first (:func:`~processors.offline.replay.live.gate`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pydantic import BaseModel, Field

from processors.control.store import ControlStore
from processors.offline.evals import EvalReport
from processors.offline.replay.live import gate, live
from processors.offline.replay.lookups import LookupSource, recorded
from processors.offline.replay.report import ReplayMode, ReplayReport, new_id
from processors.offline.replay.selection import Selection, select
from processors.offline.replay.shadow import shadow


class GateMissed(ValueError):
    """A live replay would act through a version that misses its eval targets; ``report`` says which."""

    def __init__(self, version: str, production: str, report: EvalReport):
        super().__init__(f"refused: a live replay acts through {version}, which misses its eval targets (production "
                         f"runs {production}); replay it in shadow, or fix it and promote it first")
        self.report = report


class ReplayRequest(BaseModel):
    mode: ReplayMode = ReplayMode.shadow
    selection: Selection
    prompt_version: str | None = None
    """None: the version production points to."""
    lookups: LookupSource = LookupSource.again
    """Ground the selection again, or reuse what each event's lookups returned last time."""
    replay_id: str = Field(default_factory=new_id)
    wait: float = 0.0
    """Live: seconds to wait for the running stages to settle every re-injected event (0: do not wait)."""


def run_replay(store: ControlStore, request: ReplayRequest, say: Callable[[str], None]) -> ReplayReport | None:
    """Run the request: a shadow replay's report, a live one's once settled (None when it did not
    wait). ``ValueError`` (a :class:`GateMissed`, a ``WorkflowError``) says why it did not run."""
    workflow, settings = store.workflow, store.settings
    state = store.current()
    production = state.labels.get("production", workflow.prompt_spec.version)
    version = request.prompt_version or production
    workflow.prompt_spec_for(version)
    if request.mode == ReplayMode.live and (missed := gate(workflow, version, production)) is not None:
        raise GateMissed(version, production, missed)
    selected = select(workflow, settings, request.selection)
    reused = recorded(workflow, settings, request.lookups, {o.event_id for o in selected.originals})
    lookups = request.lookups if workflow.lookups else None
    if request.mode == ReplayMode.shadow:
        report = asyncio.run(shadow(workflow, settings, selected, version, None, request.replay_id, state=state,
                                    reused=reused))
    else:
        report = live(workflow, settings, selected, request.replay_id, version, request.wait, say, reused)
    return None if report is None else report.model_copy(update={"lookups": lookups, "reused": len(reused)})
