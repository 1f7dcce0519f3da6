"""What a replay changed (live) or would change (shadow), event by event.

Both modes report the same way — each event's place before and after, and the count of each
transition — so a shadow run shows exactly what the live run of the same selection would do.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime, timezone
from enum import StrEnum

import orjson
from pydantic import BaseModel

from processors.offline.replay.lookups import LookupSource
from processors.offline.replay.places import Place
from processors.offline.replay.selection import Selected


class ReplayMode(StrEnum):
    shadow = "shadow"
    live = "live"


def new_id() -> str:
    """A replay id that sorts by time and is unique enough to tell runs apart."""
    return f"r{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class Change(BaseModel):
    """One event's place before the replay and in it."""

    event_id: str
    origin: str
    before: Place | None
    after: Place
    label: str | None = None
    confidence: float | None = None

    @property
    def transition(self) -> str:
        return f"{self.before or 'nowhere'} -> {self.after}"

    @property
    def changed(self) -> bool:
        return self.before is None or (self.before.kind, self.before.detail) != (self.after.kind, self.after.detail)

    def answer_diff(self) -> dict[str, tuple]:
        """The answer fields that differ, before and after (``confidence`` and ``reason`` aside: they vary
        on every run): a changed intent within one route shows here, where :attr:`changed` sees none.
        Empty when the answer before is not known (no answer, or placed before the views kept answers)."""
        if self.before is None or self.before.answer is None:
            return {}
        was = orjson.loads(self.before.answer)
        now = orjson.loads(self.after.answer) if self.after.answer else {}
        return {name: (was.get(name), now.get(name)) for name in sorted(set(was) | set(now))
                if name not in ("confidence", "reason") and was.get(name) != now.get(name)}


class ReplayReport(BaseModel):
    """What a replay changed (live) or would change (shadow), event by event."""

    replay_id: str
    mode: ReplayMode
    prompt_version: str
    selected: Selected
    changes: list[Change]
    """Shadow: every selected event. Live: the events the stages have settled again so far."""
    written: int
    """Shadow: decisions written to ``<wf>.replay``. Live: triggers re-injected."""
    lookups: LookupSource | None = None
    """How the lookups were had (None: the workflow declares none)."""
    reused: int = 0
    """Events that reused their recorded lookups; the rest of the selection looked up again."""

    def transitions(self) -> Counter:
        """Count of each ``before -> after``, changed events only."""
        return Counter(c.transition for c in self.changes if c.changed)

    def render(self, events: int | None = 20) -> str:
        """The summary, a transition table and the first ``events`` changed events (None: all)."""
        changed = [c for c in self.changes if c.changed]
        lines = [f"replay {self.replay_id} ({self.mode}, prompt {self.prompt_version}): {self.selected.render()}"]
        if self.mode == ReplayMode.shadow:
            lines.append(f"{len(changed)} of {len(self.changes)} events would change; {self.written} decisions "
                         f"written to the replay topic, nothing acted on")
        else:
            waiting = len(self.selected.originals) - len(self.changes)
            lines.append(f"re-injected {self.written}; {len(changed)} of {len(self.changes)} settled events changed"
                         + (f"; {waiting} not settled yet (are the stages running?)" if waiting else ""))
        if self.lookups is not None:
            again = len(self.selected.originals) - self.reused
            lines.append(f"lookups: {self.reused} events reused their recorded results"
                         + (f", {again} looked up again (nothing recorded)" if again else "")
                         if self.lookups == LookupSource.recorded else "lookups: looked up again, for real")
        table = self.transitions().most_common()
        if table:
            width = max(len(t) for t, _ in table)
            lines += ["", f"{'transition':<{width}}  count"] + [f"{t:<{width}}  {n:>5}" for t, n in table]
        shown = changed if events is None else changed[:events]
        if shown:
            lines.append("")
            lines += [f"  {c.event_id}: {c.transition}" + (f" ({c.label} {c.confidence:.2f})" if c.label else "")
                      + f"  [{c.origin}]" for c in shown]
            if len(shown) < len(changed):
                lines.append(f"  … {len(changed) - len(shown)} more (--show-events)")
        return "\n".join(lines)
