"""Dotted paths into plain records: ``ticket.subject`` names ``record["ticket"]["subject"]``.

Workflows name event fields this way everywhere (inputs, keys, routes, labels), so one
definition serves the loaders, the stages and the tools.
"""

from __future__ import annotations

from typing import Any


def dotted(record: dict, path: str | tuple[str, ...]) -> Any:
    """``dotted(r, "ticket.subject")`` is ``r["ticket"]["subject"]``; a path looked up for every
    record can be split once and passed as ``("ticket", "subject")``."""
    for part in path.split(".") if isinstance(path, str) else path:
        record = record[part]
    return record


def lookup(record: dict, path: str | tuple[str, ...], default: Any = None) -> Any:
    """``dotted``, or ``default`` when the path is absent."""
    try:
        return dotted(record, path)
    except (KeyError, TypeError):
        return default
