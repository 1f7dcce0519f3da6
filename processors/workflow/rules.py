"""Business rules: checks on a model's answer that a JSON Schema cannot express.

They live in code, never in a prompt: a prompt can ask a model to behave, only code can make
sure it did. A rule takes the parsed answer, the trigger event and the grounding results
(``lookups``: lookup name → result, ``{}`` in a workflow without lookups, so a rule can check an
answer against the system of record it was grounded in) and returns what is wrong (or None). A
workflow lists the rules it applies by name in ``workflow.yaml``; :func:`check` runs them and
says which failed as :class:`RuleError`. Rules of one workflow live in a module of their own
(:mod:`processors.workflow.refund_policy`, :mod:`processors.workflow.leads`) and are registered in :data:`RULES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from processors.workflow import injection, leads, refund_policy

Rule = Callable[[dict, dict, dict], str | None]
"""``rule(answer, event, lookups)``: what is wrong, or None."""

MIN_REASON_CHARS = 10


def high_urgency_needs_reason(answer: dict, event: dict, lookups: dict) -> str | None:
    """High urgency pages people; the answer must say why in a sentence a human can check."""
    if answer.get("urgency") == "high" and len(str(answer.get("reason", "")).strip()) < MIN_REASON_CHARS:
        return f"urgency is high but the reason is shorter than {MIN_REASON_CHARS} characters"
    return None


def reason_is_not_an_instruction(answer: dict, event: dict, lookups: dict) -> str | None:
    """A reason that talks about instructions or prompts suggests the ticket steered the model."""
    reason = str(answer.get("reason", "")).lower()
    for marker in ("ignore previous", "ignore all previous", "system prompt", "as instructed by the ticket"):
        if marker in reason:
            return f"the reason repeats an instruction ({marker!r}): possible prompt injection"
    return None


def event_does_not_instruct_the_model(answer: dict, event: dict, lookups: dict) -> str | None:
    """Text in the event that speaks to the model — overriding its instructions, posing as the
    system, dictating the answer, asking for the prompt (:mod:`processors.workflow.injection`) — is
    a prompt injection whatever the model answered: fail closed to a person. It reads the event,
    not the answer, because an injection that worked leaves no trace in a well-formed answer, so
    classify applies it before the model is asked (and validate again, as a second line)."""
    for text in _texts(event):
        found = injection.find(text)
        if found:
            return f"the event addresses the model ({found}): possible prompt injection"
    return None


def _texts(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    return []


RULES: dict[str, Rule] = {rule.__name__: rule for rule in (high_urgency_needs_reason, reason_is_not_an_instruction,
                                                           event_does_not_instruct_the_model, *refund_policy.RULES,
                                                           *leads.RULES)}
EVENT_RULES = frozenset({event_does_not_instruct_the_model.__name__})
"""Rules that judge the event, not the answer: no answer can pass them, so asking the model again is waste."""


@dataclass(frozen=True, slots=True)
class RuleError:
    """A rule that failed, and what it found. ``str()`` is what validation errors store and people
    read: ``rule: message``."""

    rule: str
    message: str

    @property
    def judges_the_event(self) -> bool:
        """From a rule on the event itself? Such an error says the event must not be left to the
        model; it says nothing against a person's answer."""
        return self.rule in EVENT_RULES

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


def check_event(names: list[str], event: dict) -> list[RuleError]:
    """:func:`check` of the rules among ``names`` that judge the event alone: they need no answer,
    so they run before the model is asked."""
    return check([name for name in names if name in EVENT_RULES], {}, event, {})


def check(names: list[str], answer: dict, event: dict, lookups: dict) -> list[RuleError]:
    """Every failed rule, in the order the workflow lists them."""
    return [RuleError(name, problem) for name in names if (problem := RULES[name](answer, event, lookups))]
