"""Forms generated from a JSON Schema: a correction from the answer's schema, an approval from the
action's ``arguments_schema`` (only its ``adjustable`` arguments editable).

Each property becomes one field, typed by the schema: an ``enum`` a choice, a number or integer a
number input with its bounds, a boolean a yes/no choice, a string a text input (a textarea past 200
characters) with its ``maxLength``, an array or object JSON text. What a person submits is passed on
only where it differs from what the form showed, as the ``field=value`` pairs ``handoff review``
takes (:mod:`processors.ops.review_queue` types them by the schema and checks the result), so the
checks are the CLI's, never the form's alone.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, Field

PREFIX = "set."
"""Form field names: ``set.<property>``."""


class FieldKind(StrEnum):
    choice = "choice"
    number = "number"
    integer = "integer"
    text = "text"
    long_text = "long_text"
    json = "json"


class FormField(BaseModel):
    """One input of a generated form."""

    name: str
    kind: FieldKind
    value: str
    choices: list[str] = Field(default_factory=list)
    editable: bool = True
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    step: str | None = None
    max_length: int | None = None
    description: str | None = None


def shown(value: Any) -> str:
    """A value as its form field shows it: strings as they are, anything else as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _field(name: str, schema: dict, value: Any, required: bool, editable: bool) -> FormField:
    kind_of = schema.get("type")
    common = {"name": name, "value": shown(value), "required": required, "editable": editable,
              "description": schema.get("description")}
    if "enum" in schema:
        return FormField(kind=FieldKind.choice, choices=[shown(v) for v in schema["enum"]], **common)
    if kind_of == "boolean":
        return FormField(kind=FieldKind.choice, choices=["true", "false"], **common)
    if kind_of in ("number", "integer"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        return FormField(kind=FieldKind(kind_of), minimum=low, maximum=high,
                         step="1" if kind_of == "integer" else "any", **common)
    if kind_of == "string":
        limit = schema.get("maxLength")
        long = limit is None or limit > 200
        return FormField(kind=FieldKind.long_text if long else FieldKind.text, max_length=limit, **common)
    return FormField(kind=FieldKind.json, **common)


def fields_of(schema: dict, values: dict, editable: list[str] | None = None) -> list[FormField]:
    """The form of ``schema``'s properties, filled with ``values``; ``editable`` None: every field."""
    required = set(schema.get("required", []))
    return [_field(name, prop, values.get(name), name in required, editable is None or name in editable)
            for name, prop in schema.get("properties", {}).items()]


def changed(form: dict[str, str], fields: list[FormField]) -> dict[str, str]:
    """The editable fields whose submitted value differs from what the form showed."""
    out = {}
    for field in fields:
        submitted = form.get(PREFIX + field.name)
        if field.editable and submitted is not None and submitted.strip() != field.value.strip():
            out[field.name] = submitted.strip()
    return out
