"""When an answer or a verdict can be used: one check for the validate stage, the review stage
and the review commands, so a reviewer is refused exactly what the pipeline would refuse."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from processors.records import ActionRequest, ReviewReason, Verdict, VerdictKind
from processors.workflow import rules
from processors.workflow.workflow import Workflow


@dataclass(frozen=True, slots=True)
class AnswerErrors:
    """Why an answer cannot be used: what breaks its output schema (``path: message``), else the
    business rules it fails (rules read a schema-valid answer only). Empty: it can be used."""

    schema_errors: list[str] = field(default_factory=list)
    rule_errors: list[rules.RuleError] = field(default_factory=list)

    @property
    def messages(self) -> list[str]:
        """Every error as stored in ``validation_errors`` and shown to people."""
        return self.schema_errors + [str(e) for e in self.rule_errors]

    @property
    def judges_the_event(self) -> bool:
        """Did a rule on the event itself fail? Then no answer can pass: the event goes to a person."""
        return any(e.judges_the_event for e in self.rule_errors)

    def against_the_answer(self) -> list[str]:
        """The errors that judge the answer itself, the ones a person's answer must not have."""
        return self.schema_errors + [str(e) for e in self.rule_errors if not e.judges_the_event]


def answer_errors(workflow: Workflow, answer: dict | None, prompt_version: str, event: dict,
                  lookups: dict) -> AnswerErrors:
    """Why an answer cannot be used: not a JSON object, then the output schema of the prompt
    version that produced it, then the business rules (which may read what ``lookups`` found). A
    reviewer's correction meets the same checks, against the same lookups."""
    if answer is None:
        return AnswerErrors(["the answer is not a JSON object"])
    schema_errors = workflow.prompt_spec_for(prompt_version).answer_check.errors(answer)
    if schema_errors:
        return AnswerErrors(schema_errors)
    return AnswerErrors(rule_errors=rules.check(workflow.rules, answer, event, lookups))


def adjustment_errors(workflow: Workflow, request: ActionRequest, approved: str) -> list[str]:
    """Why an approver's arguments cannot replace the request's: a changed argument the action does not
    declare ``adjustable``, or arguments that break its ``arguments_schema``."""
    action = workflow.actions.get(request.action)
    if action is None:
        return [f"action {request.action!r} is not declared by {workflow.name}"]
    try:
        arguments = orjson.loads(approved)
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        return ["the approved arguments are not a JSON object"]
    original = orjson.loads(request.arguments)
    changed = sorted(k for k in original.keys() | arguments.keys() if original.get(k) != arguments.get(k))
    fixed = [name for name in changed if name not in action.adjustable]
    if fixed:
        return [f"{request.action}: {', '.join(fixed)} cannot be adjusted (adjustable: {action.adjustable or 'none'})"]
    return action.arguments_check.errors(arguments)


def verdict_errors(workflow: Workflow, verdict: Verdict) -> list[str]:
    """Why ``verdict`` cannot apply to its item (empty: it can). The CLI refuses such a verdict;
    the ``review`` stage dead-letters one that was written anyway by another client."""
    item = verdict.item
    if verdict.verdict == VerdictKind.reject:
        return [] if verdict.reason else ["a rejection needs a reason (--reason)"]
    if item.reason == ReviewReason.risky_action:
        if verdict.verdict == VerdictKind.correct:
            return ["a risky action is approved or rejected, not corrected"]
        if item.action is None:
            return ["the item holds no action request to approve"]
        return [] if verdict.arguments is None else adjustment_errors(workflow, item.action, verdict.arguments)
    if verdict.answer is None:
        return [f"{item.reason}: there is no answer to approve; use correct --set field=value"]
    try:
        answer = orjson.loads(verdict.answer)
    except orjson.JSONDecodeError:
        answer = None
    # the person has read the event: only what judges their answer counts against it
    problems = answer_errors(workflow, answer if isinstance(answer, dict) else None, item.prompt.version,
                             orjson.loads(item.event), item.lookups_dict()).against_the_answer()
    if problems and verdict.verdict == VerdictKind.approve:
        return [f"the model's answer is not valid ({p}); use correct --set field=value" for p in problems]
    return problems
