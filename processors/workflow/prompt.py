"""Prompt specs: a prompt is a versioned file, not a string in code.

``workflows/<wf>/prompts/<name>/<version>.yaml`` holds one version: who owns it, which model
and settings it was written for, the inputs it may see and how long each may be, the template,
the JSON Schema its answer must satisfy, the version to roll back to and the eval suite that
gates it. Every model answer records the exact name and version that produced it.

**Input limits.** A text input longer than its limit (``input_limits``, else
:data:`DEFAULT_INPUT_CHARS`) is cut before redaction and the model, and the cut says so in the
text itself (:data:`CUT_NOTE`): the model reads that it sees a part, and the trace's inputs show
where and how much was cut. A ticket whose body is 900 KB of pasted logs otherwise costs a
model call as long as the body (the embedded model blocked its event loop for seconds on one).
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from processors import project
from processors.paths import lookup
from processors.workflow.checks import SchemaCheck

_PLACEHOLDER = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")

DEFAULT_INPUT_CHARS = 20_000
"""The limit of an input with none declared: far above any ticket written by hand."""
CUT_NOTE = "\n[input cut by handoff: first {kept} of {length} characters]"


class PromptSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    owner: str
    model: str = Field(description="The model this version was written and evaluated for.")
    temperature: float = 0.0
    max_tokens: int = 400
    inputs: list[str] = Field(description="Dotted paths into the trigger event; nothing else reaches the model.")
    input_limits: dict[str, int] = Field(default_factory=dict, description=(
        f"Most characters of a text input the model sees, by declared path (default {DEFAULT_INPUT_CHARS}); "
        "a longer value is cut, and the cut noted in it."))
    system: str
    template: str = Field(description="User message; {{ path }} placeholders name declared inputs only.")
    repair_template: str = Field(
        "Your previous answer was invalid:\n{{ errors }}\nAnswer again with JSON only, matching the schema.",
        description="Appended on the one repair attempt; {{ errors }} lists the validation errors.")
    output_schema: dict
    rollback_version: str | None = None
    eval_suite: str | None = None

    @model_validator(mode="after")
    def _template_uses_declared_inputs(self) -> "PromptSpec":
        undeclared = set(_PLACEHOLDER.findall(self.template)) - set(self.inputs)
        if undeclared:
            raise ValueError(f"template uses undeclared inputs: {sorted(undeclared)}")
        unknown = set(self.input_limits) - set(self.inputs)
        if unknown:
            raise ValueError(f"input_limits names undeclared inputs: {sorted(unknown)}")
        if any(limit < 1 for limit in self.input_limits.values()):
            raise ValueError("input_limits must be positive")
        return self

    @cached_property
    def answer_check(self) -> SchemaCheck:
        """The output schema, compiled once: validate runs it on every answer of this version."""
        return SchemaCheck(self.output_schema, "(answer)")

    @property
    def ref(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}

    def select_inputs(self, event: dict) -> dict[str, Any]:
        """Only the declared inputs, by dotted path, each text cut to its limit (see Input limits); a
        missing one renders as empty."""
        return {path: self._cut(path, lookup(event, path, "")) for path in self.inputs}

    def _cut(self, path: str, value: Any) -> Any:
        kept = self.input_limits.get(path, DEFAULT_INPUT_CHARS)
        if not isinstance(value, str) or len(value) <= kept:
            return value
        return value[:kept] + CUT_NOTE.format(kept=kept, length=len(value))

    def render(self, inputs: dict[str, Any]) -> str:
        return _PLACEHOLDER.sub(lambda m: str(inputs[m.group(1)]), self.template)

    def render_repair(self, errors: list[str]) -> str:
        return self.repair_template.replace("{{ errors }}", "\n".join(f"- {e}" for e in errors))


def load_prompt(path: Path) -> PromptSpec:
    return PromptSpec.model_validate(project.load_yaml(path))
