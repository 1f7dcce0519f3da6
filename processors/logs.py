"""How a handoff process logs: one JSON object a line for a log pipeline, plain text for a person.

A log pipeline (Loki, Elasticsearch, CloudWatch) indexes fields, so every line carries the
process's ``workflow`` and ``instance``, the ``stage`` of the thread that logged it (each stage
runtime runs in its own thread: :func:`bind`) and, where a line concerns one event, its
``event_id`` (``log.warning(..., extra={"event_id": ...})``). ``auto`` — the default — is text on a
terminal and JSON anywhere else (a container, a file, a pipe), so nobody has to remember a flag
in production.

librdkafka logs through :data:`LIBRDKAFKA` (``KafkaSettings`` hands it to every client), so its
lines are JSON too; a broker that is down makes it repeat one line every few hundred
milliseconds, so the same line (numbers aside) is passed once a :data:`FOLD_S` window and the
next one after the window says how many were folded into it (``repeated``).
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import threading
import time
from enum import StrEnum

from pythonjsonlogger.json import JsonFormatter

FOLD_S = 60.0
LIBRDKAFKA = logging.getLogger("handoff.librdkafka")
_BOUND: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("handoff_log_fields", default={})
_NUMBERS = re.compile(r"\d+")


class LogFormat(StrEnum):
    auto = "auto"
    json = "json"
    text = "text"


def bind(**fields: str) -> None:
    """Fields every line logged from this thread (context) carries from now on, such as its ``stage``."""
    _BOUND.set(_BOUND.get() | fields)


class _Fields(logging.Filter):
    """Adds the process's fields and the bound ones to every record (a record's own extras win)."""

    def __init__(self, fields: dict[str, str]):
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (self.fields | _BOUND.get()).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class Fold(logging.Filter):
    """Passes a line once per ``window_s``; the first after the window carries ``repeated``: how many
    like it were dropped. Lines are alike when they differ only in numbers (ports, milliseconds, counts)."""

    def __init__(self, window_s: float = FOLD_S):
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple[int, str], tuple[float, int]] = {}  # (level, shape) -> (passed at, dropped since)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        shape = (record.levelno, _NUMBERS.sub("#", record.getMessage()))
        now = time.monotonic()
        with self._lock:
            passed, dropped = self._seen.get(shape, (None, 0))
            if passed is not None and now - passed < self.window_s:
                self._seen[shape] = (passed, dropped + 1)
                return False
            self._seen[shape] = (now, 0)
        if dropped:
            record.repeated = dropped
        return True


def setup(format: LogFormat = LogFormat.auto, level: int = logging.INFO, **fields: str) -> None:
    """Configure the root logger of this process (once, at start): ``fields`` go on every line."""
    handler = logging.StreamHandler(sys.stderr)
    if format == LogFormat.json or (format == LogFormat.auto and not sys.stderr.isatty()):
        handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Fields(fields))
    logging.basicConfig(level=level, handlers=[handler], force=True)


LIBRDKAFKA.addFilter(Fold())  # in every process, whoever configures its handlers
