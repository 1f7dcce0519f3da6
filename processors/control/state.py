"""The control state a stage obeys: where it starts, what its thresholds mean, and pinning it.

:class:`Control` is the interface stages read (``control.state``, once per record); pinned here,
followed on the topic by :class:`~processors.control.watcher.ControlWatcher`.
"""

from __future__ import annotations

from processors.records import ControlState, PersonRole
from processors.signing import BadSignature, Keyring
from processors.workflow.workflow import Workflow

ROLE_OF_FIELD = {"labels": PersonRole.prompt_owner, "mode": PersonRole.prompt_owner,
                 "kill_switch": PersonRole.operator, "review_threshold": PersonRole.operator,
                 "approval_risk": PersonRole.operator}
"""Who may change what: a prompt owner promotes, rolls back and sets the mode; an operator the rest."""


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


def roles_needed(before: ControlState, after: ControlState) -> set[PersonRole]:
    """The roles a change from ``before`` to ``after`` takes, one per kind of field it changes."""
    return {role for name, role in ROLE_OF_FIELD.items() if getattr(before, name) != getattr(after, name)}


def control_refusal(before: ControlState, after: ControlState, keyring: Keyring) -> str | None:
    """None when ``after`` is signed with a known key for its ``changed_by``, who holds the roles the change
    from ``before`` takes; else why not, in one line. When ``after`` does not follow ``before`` (compaction
    removed the versions between), only the signature is checked: the changes between were checked live."""
    try:
        signature = keyring.check(after, "signature", after.changed_by)
    except BadSignature as exc:
        return f"control version {after.version} ({after.change}) by {after.changed_by}: {exc}"
    if after.version != before.version + 1:
        return None
    missing = roles_needed(before, after) - set(signature.roles)
    if missing:
        return (f"control version {after.version} ({after.change}) needs the role(s) {', '.join(sorted(missing))}; "
                f"{after.changed_by} holds {', '.join(signature.roles) or 'none'}")
    return None


class Control:
    """The control state a stage obeys, pinned: it never changes (offline runs, evals, replays)."""

    def __init__(self, state: ControlState):
        self.state = state

    def start(self) -> None:
        """Nothing to follow."""

    def stop(self) -> None:
        """Nothing to release."""
