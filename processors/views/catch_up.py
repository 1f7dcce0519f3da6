"""Catching the views up before a command reads them: only what the store has not applied yet.

A command (``review list``, ``report``, a replay) must not answer from a view that lags the topics
it was asked about — a reviewer would see an item someone else just decided, a replay would wait
for a placement the views stage has not written yet. So before it reads, it asks the broker for
the end of each view topic (one ``ListOffsets`` request, read committed) and compares with the
store's offsets (:meth:`~processors.views.store.ViewStore.positions`). When the views stage keeps
up, nothing is left and the command reads at once; otherwise it reads the difference itself, from
the store's offsets (:func:`processors.kafka.read.records`, no consumer group), and applies it
through the same mapping and the same exactly-once batches as the stage, so both may run at once.
The cost is what is new since the last applier, never the topics' history.

It reaches the ends it set out for, or raises (``IncompleteRead`` naming the topic and how far
each partition got; :class:`ViewsBehind` when the broker cannot say where the ends are): a view is
never served cut short without saying so.
"""

from __future__ import annotations

import time

from confluent_kafka import IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec

from processors.kafka.read import records
from processors.kafka.settings import KafkaSettings
from processors.views.rows import Rows
from processors.views.store import ViewStore, open_store
from processors.views.totals import recount_due
from processors.workflow.workflow import Workflow

BATCH = 5000
"""Records per transaction while catching up."""
ATTEMPTS = 20


class ViewsBehind(RuntimeError):
    """The broker could not say where the view topics end."""


def catch_up(workflow: Workflow, settings: KafkaSettings, store: ViewStore | None = None,
             timeout: float = 60.0) -> int:
    """Apply every record of the workflow's view topics the store has not applied; returns how many.
    A topic not read to its end in ``timeout`` raises :class:`~processors.kafka.read.IncompleteRead`."""
    store = store or open_store()
    rows = Rows(workflow, settings)
    recount_due(store, rows.scope, rows.target)
    ends = _ends(settings, rows.topics)
    done = store.positions(rows.topics)
    applied = 0
    for topic in rows.topics:
        behind = {p: done.get((t, p), -1) + 1 for (t, p), end in ends.items() if t == topic
                  and end > done.get((t, p), -1) + 1}
        if not behind:
            continue
        batch = []
        for msg in records(settings, topic, timeout, starts=behind):  # whole, or it raises
            batch.append(rows.of(topic, msg.partition(), msg.offset(), msg.key(), msg.value(),
                                 dict(msg.headers() or []), msg.timestamp()[1]))
            if len(batch) >= BATCH:
                applied += store.apply(batch)
                batch = []
        applied += store.apply(batch)
    return applied


def _ends(settings: KafkaSettings, topics: list[str]) -> dict[tuple[str, int], int]:
    """The read-committed end offset of every partition of ``topics`` that exists, in one request."""
    admin = settings.admin()
    metadata = admin.list_topics(timeout=10).topics
    partitions = [TopicPartition(t, p) for t in topics if t in metadata and metadata[t].error is None
                  for p in metadata[t].partitions]
    if not partitions:
        return {}
    for attempt in range(ATTEMPTS):
        futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions},
                                     isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10)
        try:
            return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}
        except KafkaException as exc:  # a just-created partition whose leader is still being elected
            error = exc.args[0]
            if attempt == ATTEMPTS - 1 or not (error.retriable() or error.code() == KafkaError.NOT_LEADER_FOR_PARTITION):
                raise ViewsBehind(f"catching the views up: the end offsets of {', '.join(topics)}: {error.str()}") \
                    from None
            time.sleep(0.1 * (attempt + 1))
    return {}

