"""Prompt specs: a prompt is a versioned file, not a string in code.

``workflows/<wf>/prompts/<name>/<version>.yaml`` holds one version: who owns it, which model
and settings it was written for, the inputs it may see, the template, the JSON Schema its
answer must satisfy, the version to roll back to and the eval suite that gates it. Every
model answer records the exact name and version that produced it.
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


class PromptSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    owner: str
    model: str = Field(description="The model this version was written and evaluated for.")
    temperature: float = 0.0
    max_tokens: int = 400
    inputs: list[str] = Field(description="Dotted paths into the trigger event; nothing else reaches the model.")
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
        return self

    @cached_property
    def answer_check(self) -> SchemaCheck:
        """The output schema, compiled once: validate runs it on every answer of this version."""
        return SchemaCheck(self.output_schema, "(answer)")

    @property
    def ref(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}

    def select_inputs(self, event: dict) -> dict[str, Any]:
        """Only the declared inputs, by dotted path; a missing one renders as empty."""
        return {path: lookup(event, path, "") for path in self.inputs}

    def render(self, inputs: dict[str, Any]) -> str:
        return _PLACEHOLDER.sub(lambda m: str(inputs[m.group(1)]), self.template)

    def render_repair(self, errors: list[str]) -> str:
        return self.repair_template.replace("{{ errors }}", "\n".join(f"- {e}" for e in errors))


def load_prompt(path: Path) -> PromptSpec:
    return PromptSpec.model_validate(project.load_yaml(path))
