"""The promotion gate: a prompt version reaches a label only through its eval suite.

``promote`` runs the version's suite offline and publishes the label change on the control
topic only when every target is met (``force`` publishes past failures, with a reason, and the
state says so). ``rollback`` needs no evals: it returns to a version that ran before.
"""

from __future__ import annotations

from processors.control.store import ControlStore
from processors.offline.evals import run_suite
from processors.records import ControlState


def promote(store: ControlStore, version: str, *, label: str = "production", force: bool = False,
            reason: str | None = None, changed_by: str | None = None, progress: bool = False):
    """Point ``label`` at ``version`` when the version's eval suite passes; returns (the published
    state or None when refused, the eval report). ``force`` publishes past failing evals, and needs
    a reason: both are recorded on the state (``forced``, ``reason``)."""
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
