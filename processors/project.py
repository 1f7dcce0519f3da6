"""Where a project's data lives: ``workflows/``, ``schemas/`` and ``topics/`` under one root.

``HANDOFF_PROJECT`` names the root; without it the shipped examples are the project. Every
loader asks here, never relative to its own file, so a workflow of your own runs without editing
the package, and reads its YAML files through :func:`load_yaml`, so a syntax error names the
file, line and column the same way everywhere.

**What ships** (:data:`SHIPPED`): in a checkout, the checkout itself; in an installed wheel,
``processors/shipped/``, where ``setup.py`` copies the examples and the local broker's files.
The engine's own record contracts (``schemas/handoff/``, :func:`engine_schemas_dir`) always come
from there: a project holds only its own trigger schemas.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

_PACKAGE = Path(__file__).resolve().parent
SHIPPED = _PACKAGE / "shipped" if (_PACKAGE / "shipped").is_dir() else _PACKAGE.parent
"""What ships with handoff: ``processors/shipped/`` in an installed wheel, else the checkout."""
EXAMPLES = SHIPPED
"""The shipped examples: ``workflows/support_ticket`` and ``workflows/banking77`` with their schemas and topics."""
LOCAL_BROKER = SHIPPED / "deploy" / "kafka"
"""The local development broker's pom, server.properties and log configuration (processors/dev/localkafka.py)."""
ENGINE_SCHEMAS = "handoff"
"""The folder under ``schemas/`` holding the engine's record contracts."""

PROJECT_ENV = "HANDOFF_PROJECT"


def root() -> Path:
    """The project folder in force: ``HANDOFF_PROJECT`` when set, else the shipped examples."""
    return root_from_env() or EXAMPLES


def root_from_env() -> Path | None:
    """The project folder the user named (``--project``, ``HANDOFF_PROJECT``), or None."""
    named = os.environ.get(PROJECT_ENV)
    return Path(named) if named else None


def use(folder: Path) -> None:
    """Make ``folder`` the project in force for this process (and the processes it starts)."""
    os.environ[PROJECT_ENV] = str(folder)


def workflows_dir() -> Path:
    return root() / "workflows"


def schemas_dir() -> Path:
    return root() / "schemas"


def topics_dir() -> Path:
    return root() / "topics"


def engine_schemas_dir() -> Path:
    """The ``schemas/`` folder whose ``handoff/`` holds the engine's contracts: always the shipped one."""
    return SHIPPED / "schemas"


class DataFileError(ValueError):
    """A project file that is not valid YAML; the message names the file, line and column (1-based)."""


def load_yaml(path: Path) -> Any:
    """The YAML document in ``path``; :class:`DataFileError` names where a syntax error is.
    ``FileNotFoundError`` is the caller's: only it knows what the missing file was for."""
    text = path.read_text()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None:
            context += f" that starts at line {start.line + 1} column {start.column + 1}"
        detail = f"{problem} ({context})" if context else problem
        raise DataFileError(f"{path}: {where}not valid YAML: {detail}") from None


def write_rows(path: Path, rows: list[dict]) -> None:
    """Replace a dataset file whole with ``rows``, one JSON object a line: written aside and renamed, so a
    reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    os.replace(partial, path)


def describe(path: Path, exc: ValidationError) -> str:
    """A file's validation errors, one field path a line, under the file's name."""
    return f"{path}:\n  " + "\n  ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
