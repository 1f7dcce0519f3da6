"""Where a project's data lives: ``workflows/``, ``schemas/`` and ``topics/`` under one root.

``HANDOFF_PROJECT`` names the root; without it the shipped examples (the folder this package
was checked out in) are the project. Every loader asks here, never relative to its own file,
so a workflow of your own runs without editing the package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)

EXAMPLES = Path(__file__).resolve().parent.parent
"""The shipped examples: ``workflows/support_ticket`` and ``workflows/banking77`` with their schemas and topics."""

PROJECT_ENV = "HANDOFF_PROJECT"


def root() -> Path:
    """The project folder in force: ``HANDOFF_PROJECT`` when set, else the shipped examples."""
    return Path(os.environ.get(PROJECT_ENV) or EXAMPLES)


def workflows_dir() -> Path:
    return root() / "workflows"


def schemas_dir() -> Path:
    return root() / "schemas"


def topics_dir() -> Path:
    return root() / "topics"


def describe(path: Path, exc: ValidationError) -> str:
    """A data file's validation errors, one line per field under the file's name: what a person fixes."""
    return f"{path}:\n  " + "\n  ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def read_model(path: Path, model: type[Model], error: type[Exception], missing: str) -> Model:
    """A YAML data file as ``model``, or ``error`` naming the file: ``missing`` when there is none,
    each wrong field when it does not validate."""
    try:
        return model.model_validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except ValidationError as exc:
        raise error(describe(path, exc)) from None
