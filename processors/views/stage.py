"""The ``views`` stage: a consumer group that keeps the views up to date, record by record.

It reads every topic the views need (:func:`~processors.views.rows.view_roles`), turns each record
into rows (:class:`~processors.views.rows.Rows`) and writes no topic. The protocol:

1. **Assignment.** Before any record, the runtime asks where each new partition resumes
   (:meth:`Views.positions`): one past the last offset the store applied, or the beginning when the
   store has none (a new database fills itself from the topics). The store, not the group's
   committed offset, decides, because the store's offsets were written with its rows.
2. **Records.** ``process`` runs inline, decodes the record itself (``decodes``: a record that is
   not what its topic holds becomes a ``skipped`` row, never a dead letter) and keeps its rows in
   memory. It touches no database, so a record can never be dead-lettered for a database failure.
3. **Flush.** About once a second (``tick``), on reassignment and at shutdown (``close``), the rows
   kept so far go to the store in one transaction with their offsets. A failing database raises
   from ``tick``, which stops the stage with the error: nothing is lost, since a restart resumes
   from the store's offsets, and the runtime commits the group's offsets as for any stage (they
   show the lag; the store's decide where a restart resumes).

With SQLite (one file) run one instance; with PostgreSQL instances can share the group, each
writing the partitions it owns.
"""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING

from processors.kafka.settings import KafkaSettings
from processors.records import StageName
from processors.runtime.stage import Emit, Record, Stage
from processors.views.rows import Rows, view_roles
from processors.views.store import Applied, ViewStore, open_store
from processors.views.totals import recount_due
from processors.workflow.workflow import Workflow


class Views(Stage):
    name = StageName.views
    inline = True
    decodes = True

    def __init__(self, workflow: Workflow, settings: KafkaSettings | None = None, store: ViewStore | None = None):
        self.workflow = workflow
        self.inputs = view_roles(workflow)
        self.rows = Rows(workflow, settings or KafkaSettings())
        self._store = store
        self.pending: list[Applied] = []
        self.consumed = 0
        """Records this instance was handed: after a restart, only what came since (the store's offsets)."""

    @property
    def store(self) -> ViewStore:
        if self._store is None:
            self._store = open_store()
        return self._store

    async def start(self) -> None:
        recount_due(self.store, self.rows.scope, self.rows.target)  # opens the database, or stops with why

    async def close(self) -> None:
        self.flush()

    def positions(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        self.flush()  # what is kept belongs to the offsets about to be read
        done = self.store.positions({topic for topic, _ in partitions})
        return {tp: done[tp] + 1 if tp in done else OFFSET_BEGINNING for tp in partitions}

    async def process(self, record: Record) -> list[Emit]:
        self.consumed += 1
        self.pending.append(self.rows.of(record.topic, record.partition, record.offset, record.key, record.raw or None,
                                         record.headers, record.timestamp_ms))
        return []

    def tick(self, now_ms: int, partitions: list[tuple[str, int]]) -> list:
        self.flush()
        return []

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        self.store.apply(batch)
