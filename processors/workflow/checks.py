"""JSON Schema checks of model answers and action arguments, with messages a reviewer can read.

jsonschema-rs validates in microseconds, which matters: every answer and every action's
arguments pass through here before anything is decided or run.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs


class SchemaCheck:
    def __init__(self, schema: dict, subject: str):
        self._validator = jsonschema_rs.validator_for(schema)
        self.subject = subject  # names the whole instance in messages: "(answer)", "(arguments)"

    def errors(self, instance: Any) -> list[str]:
        """Every violation as ``path: message``; empty when the instance is valid."""
        return [f"{'/'.join(map(str, e.instance_path)) or self.subject}: {e.message}"
                for e in self._validator.iter_errors(instance)]
