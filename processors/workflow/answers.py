"""When an answer or a verdict can be used: one check for the validate stage, the review stage
and the review commands, so a reviewer is refused exactly what the pipeline would refuse."""

from __future__ import annotations

import orjson

from processors.records import ActionRequest, Verdict
from processors.workflow import rules
from processors.workflow.workflow import Workflow

RISKY = "risky_action"
"""The one reason whose item is an action awaiting approval; every other reason holds an answer."""
EVENT_RULE = "event_rule"
"""The reason of an item whose event tries to instruct the model (a rule on the event failed)."""


def answer_errors(workflow: Workflow, answer: dict | None, prompt_version: str, event: dict) -> list[str]:
    """Why an answer cannot be used (empty: it can): not a JSON object, then the output schema of the
    prompt version that produced it, then the business rules. A reviewer's correction meets the same checks."""
    if answer is None:
        return ["the answer is not a JSON object"]
    return workflow.prompt_spec_for(prompt_version).answer_check.errors(answer) \
        or rules.check(workflow.rules, answer, event)


def verdict_errors(workflow: Workflow, verdict: Verdict) -> list[str]:
    """Why ``verdict`` cannot apply to its item (empty: it can). The CLI refuses such a verdict;
    the ``review`` stage dead-letters one that was written anyway by another client."""
    try:
        item = verdict.review_item()
    except ValueError as exc:
        return [f"the verdict does not carry its review item: {exc}"]
    if verdict.verdict == "reject":
        return [] if verdict.reason else ["a rejection needs a reason (--reason)"]
    if item.reason == RISKY:
        if verdict.verdict == "correct":
            return ["a risky action is approved or rejected, not corrected"]
        try:
            ActionRequest.model_validate_json(item.action or "")
        except ValueError:
            return ["the item holds no action request to approve"]
        return []
    if verdict.answer is None:
        return [f"{item.reason}: there is no answer to approve; use correct --set field=value"]
    try:
        answer = orjson.loads(verdict.answer)
    except orjson.JSONDecodeError:
        answer = None
    problems = [problem for problem in answer_errors(workflow, answer if isinstance(answer, dict) else None,
                                                     item.prompt.version, orjson.loads(item.event))
                if not rules.judges_the_event(problem)]  # the person has read the event; their answer is judged
    if problems and verdict.verdict == "approve":
        return [f"the model's answer is not valid ({p}); use correct --set field=value" for p in problems]
    return problems
