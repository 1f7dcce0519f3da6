"""Where every event is now: the latest of its decisions, review items and dead letters.

A live replay reads it from the views (``placements``, kept by the views with the same rule,
caught up first) to see where its events were before and where they ended; a selection from the
review or dead-letter topic reads the records themselves, since it replays their bytes, and
places them by the same rule (:func:`placed`), so "before" and "after" compare like with like.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import select

from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.offline.outputs import SETTLING_STAGES, dead_letter_id, dead_letters, decision_suffixes, read
from processors.records import Decision, ReviewItem
from processors.runtime.dead_letter import Header
from processors.stages.base import REPLAY_HEADER
from processors.views.catch_up import catch_up
from processors.views.rows import scope_of
from processors.views.schema import placements
from processors.views.store import ViewStore, open_store
from processors.workflow.workflow import Workflow

CHUNK = 500
"""Event ids per query when asking for many."""


class Place(BaseModel):
    """Where an event is: decided on a route, waiting in review, or dead-lettered."""

    kind: Literal["decision", "review", "dead_letter"]
    detail: str
    """The route, the review reason, or the dead-letter reason."""
    at_ms: int = 0
    replay: str | None = None
    answer: str | None = None
    """The answer that placed it (JSON), so a diff shows a changed answer within one route."""

    def __str__(self) -> str:
        return self.detail if self.kind == "decision" else f"{self.kind}:{self.detail}"


class Letter(BaseModel):
    """A dead letter as a replay needs it: the original key and bytes, and where they came from."""

    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def origin(self) -> str:
        return self.headers.get(Header.original_topic, "")


class Found(BaseModel):
    """A record that places an event, with what a replay of it would need."""

    event_id: str
    place: Place
    review: ReviewItem | None = None
    letter: Letter | None = None


def found_records(workflow: Workflow, settings: KafkaSettings) -> list[Found]:
    """Every decision, review item and dead letter of the workflow, in no particular order."""
    found = [Found(event_id=d.event_id, place=Place(kind="decision", detail=d.route, at_ms=d.decided_at_ms,
                                                    replay=d.replay, answer=d.answer))
             for suffix in decision_suffixes(workflow) for d in read(workflow, settings, suffix, Decision)]
    found += [Found(event_id=r.event_id, review=r,
                    place=Place(kind="review", detail=r.reason, at_ms=r.created_at_ms, replay=r.replay,
                                answer=r.answer))
              for r in read(workflow, settings, Role.review, ReviewItem)]
    for msg, headers in dead_letters(workflow, settings):
        found.append(Found(event_id=dead_letter_id(workflow, settings, headers, msg.value()),
                           letter=Letter(key=msg.key(), value=msg.value() or b"", headers=headers),
                           place=Place(kind="dead_letter", detail=headers.get(Header.error_reason, "unknown"),
                                       at_ms=msg.timestamp()[1], replay=headers.get(REPLAY_HEADER))))
    return found


def settles(found: Found) -> bool:
    """Does this record say where the event itself ended? Review items and dead letters of later
    stages (execute, review, join) concern what happens after a decision."""
    if found.review is not None:
        return found.review.stage in SETTLING_STAGES
    if found.letter is not None:
        return found.letter.headers.get(Header.stage) in SETTLING_STAGES
    return True


def placed(found: list[Found]) -> dict[str, Place]:
    """Each event's latest place among ``found`` (decision, review or dead letter), by event id."""
    latest: dict[str, Place] = {}
    for item in found:
        if settles(item) and (item.event_id not in latest or item.place.at_ms >= latest[item.event_id].at_ms):
            latest[item.event_id] = item.place
    return latest


def places(workflow: Workflow, settings: KafkaSettings, *, events: Iterable[str] | None = None,
           replay: str | None = None, store: ViewStore | None = None) -> dict[str, Place]:
    """Where ``events`` (all when None) are now, from the views; with ``replay``, only those a replay placed."""
    store = store or open_store()
    catch_up(workflow, settings, store)
    where = [placements.c.scope == scope_of(workflow)]
    if replay is not None:
        where.append(placements.c.replay == replay)
    wanted = None if events is None else list(events)
    chunks = [None] if wanted is None else [wanted[i:i + CHUNK] for i in range(0, len(wanted), CHUNK)]
    out = {}
    with store.read() as conn:
        for chunk in chunks:
            query = select(placements).where(*where, *([] if chunk is None else [placements.c.event_id.in_(chunk)]))
            out |= {r.event_id: Place(kind=r.kind, detail=r.detail, at_ms=r.at_ms, replay=r.replay, answer=r.answer)
                    for r in conn.execute(query)}
    return out
