"""Wall-clock time in epoch milliseconds: what every record's ``*_ms`` field and header holds."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
