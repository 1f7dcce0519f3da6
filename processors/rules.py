"""Business rules: checks on a model's answer that a JSON Schema cannot express.

They live in code, never in a prompt: a prompt can ask a model to behave, only code can make
sure it did. A rule takes the parsed answer and the trigger event and returns what is wrong
(or None). A workflow lists the rules it applies by name in ``workflow.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable

Rule = Callable[[dict, dict], str | None]

MIN_REASON_CHARS = 10


def high_urgency_needs_reason(answer: dict, event: dict) -> str | None:
    """High urgency pages people; the answer must say why in a sentence a human can check."""
    if answer.get("urgency") == "high" and len(str(answer.get("reason", "")).strip()) < MIN_REASON_CHARS:
        return f"urgency is high but the reason is shorter than {MIN_REASON_CHARS} characters"
    return None


def reason_is_not_an_instruction(answer: dict, event: dict) -> str | None:
    """A reason that talks about instructions or prompts suggests the ticket steered the model."""
    reason = str(answer.get("reason", "")).lower()
    for marker in ("ignore previous", "ignore all previous", "system prompt", "as instructed by the ticket"):
        if marker in reason:
            return f"the reason repeats an instruction ({marker!r}): possible prompt injection"
    return None


RULES: dict[str, Rule] = {rule.__name__: rule for rule in (high_urgency_needs_reason, reason_is_not_an_instruction)}


def check(names: list[str], answer: dict, event: dict) -> list[str]:
    """Every failed rule's message, prefixed with the rule name."""
    return [f"{name}: {problem}" for name in names if (problem := RULES[name](answer, event))]
