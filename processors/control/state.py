"""The control state a stage obeys: where it starts, what its thresholds mean, and pinning it.

:class:`Control` is the interface stages read (``control.state``, once per record); pinned here,
followed on the topic by :class:`~processors.control.watcher.ControlWatcher`.
"""

from __future__ import annotations

from processors.records import ControlState
from processors.workflow.workflow import Workflow


def initial(workflow: Workflow) -> ControlState:
    """The state before anything was published: the workflow file's prompt in production, its mode."""
    return ControlState(workflow=workflow.name, version=0, labels={"production": workflow.prompt_spec.version},
                        mode=workflow.mode, changed_by="workflow.yaml", change="initial", at_ms=0)


def review_threshold(workflow: Workflow, state: ControlState) -> float:
    """Answers less confident than this go to a person: the control state's value when set."""
    return workflow.review_threshold if state.review_threshold is None else state.review_threshold


def approval_risk(workflow: Workflow, state: ControlState) -> float:
    """Actions riskier than this wait for a person's approval: the control state's value when set."""
    return workflow.approval_risk if state.approval_risk is None else state.approval_risk


class Control:
    """The control state a stage obeys, pinned: it never changes (offline runs, evals, replays)."""

    def __init__(self, state: ControlState):
        self.state = state

    def start(self) -> None:
        """Nothing to follow."""

    def stop(self) -> None:
        """Nothing to release."""
