"""The view store: where the views live, and how records become rows exactly once.

**Where.** ``HANDOFF_VIEWS_URL`` (``--views-url``) names the database: ``sqlite:///path/views.db``
or ``postgresql://user@host:port/db`` (through psycopg 3). Without it the views live in an embedded
SQLite file, ``.local/views.db`` under the working folder. One schema serves both
(:mod:`.schema`); it is created when missing.

**Exactly once.** Rows are written in batches (:meth:`ViewStore.apply`). One batch is one
transaction that also records, per topic partition, the last offset applied (``applied``), and
it skips every record at or below that offset. So a record applied twice — a redelivery, the
views stage and a command catching up at once, a batch retried after a crash — changes nothing,
and the counters the report sums are exact (the report's hours, :mod:`.totals`, are gathered
per batch by :meth:`Writer.add_up` and written in the same transaction). Whoever applies next
starts from ``applied`` (:meth:`ViewStore.positions`): the views stage seeks there on every
assignment, a command that catches up reads from there (:mod:`.catch_up`). Writers are serialized: SQLite's
``BEGIN IMMEDIATE``, a transaction-scoped advisory lock on PostgreSQL; each batch's records of a
partition run on from the offset the previous batch ended at, so what is applied stays contiguous.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from sqlalchemy import Connection, Engine, Table, create_engine, event, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from processors.views.schema import (
    REPORT_COUNTS,
    applied,
    metadata,
    placements,
    recount_due,
    report_events,
    report_hours,
)

VIEWS_URL_ENV = "HANDOFF_VIEWS_URL"
DEFAULT_PATH = Path(".local/views.db")
PG_LOCK = 0x68616E64  # "hand": the advisory lock every writer of the views takes
SQLITE_TIMEOUT_S = 30


class ViewsUnavailable(RuntimeError):
    """The views database cannot be opened or written; the message says which and why."""


def views_url(given: str | None = None) -> str:
    """``given``, else ``HANDOFF_VIEWS_URL``, else the embedded file; ``postgresql://`` means psycopg 3."""
    url = given or os.environ.get(VIEWS_URL_ENV) or f"sqlite:///{DEFAULT_PATH}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url.removeprefix(plain)
    return url


class Writer:
    """The statements of one batch, in the store's dialect (both speak ``ON CONFLICT``)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self._insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        self._sums: dict[tuple[Table, tuple], dict[str, float]] = {}

    def add(self, table: Table, row: dict) -> bool:
        """Insert ``row`` unless its key is there; True when it was inserted."""
        key = next(iter(table.primary_key.columns))
        return self.conn.execute(self._insert(table).values(row).on_conflict_do_nothing()
                                 .returning(key)).first() is not None

    def merge(self, table: Table, row: dict, update: Callable[[Table, object], dict]) -> None:
        """Insert ``row``, or update the existing row by ``update(table, excluded)``: column → expression."""
        statement = self._insert(table).values(row)
        keys = [c.name for c in table.primary_key.columns]
        self.conn.execute(statement.on_conflict_do_update(index_elements=keys,
                                                          set_=update(table, statement.excluded)))

    def execute(self, statement) -> None:
        self.conn.execute(statement)

    def add_up(self, table: Table, key: tuple, amounts: dict[str, float]) -> None:
        """Add ``amounts`` (column → how much, negative to take away) to ``table``'s row at ``key`` (its
        primary key's values, in order), when the batch ends: one statement per row however many
        records of the batch touched it (:meth:`sum_up`)."""
        sums = self._sums.setdefault((table, key), {})
        for column, amount in amounts.items():
            sums[column] = sums.get(column, 0) + amount

    def sum_up(self) -> None:
        """Write what :meth:`add_up` gathered: insert each row, or add to the one there."""
        for (table, key), amounts in self._sums.items():
            row = dict(zip((c.name for c in table.primary_key.columns), key)) | amounts
            self.merge(table, row, lambda t, new: {c: t.c[c] + getattr(new, c) for c in amounts})
        self._sums = {}


Op = Callable[[Writer], None]


@dataclass
class Applied:
    """One record as rows: where it sits, and what writing it does."""

    topic: str
    partition: int
    offset: int
    ops: list[Op] = field(default_factory=list)


class ViewStore:
    """One views database (see the module docstring)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = _engine(url)
        with self._failing():
            hours_missing = inspect(self.engine).has_table(report_events.name) and \
                not inspect(self.engine).has_table(report_hours.name)
            metadata.create_all(self.engine)
            if "answer" not in {c["name"] for c in inspect(self.engine).get_columns(placements.name)}:
                with self.engine.begin() as conn:  # placements kept before they had the answer: it is None there
                    conn.execute(text(f"ALTER TABLE {placements.name} ADD COLUMN answer TEXT"))
            hours_have = {c["name"] for c in inspect(self.engine).get_columns(report_hours.name)}
            added = [name for name in REPORT_COUNTS if name not in hours_have]
            if added:  # hours kept before these counts existed: add them, and work every hour out again
                with self.engine.begin() as conn:
                    for name in added:
                        conn.execute(text(f"ALTER TABLE {report_hours.name} ADD COLUMN {name} "
                                          "BIGINT NOT NULL DEFAULT 0"))
                hours_missing = True
            if hours_missing:  # rows kept before the report's hours: work them out once (totals.recount_due)
                with self.writing() as w:
                    for (scope,) in w.conn.execute(select(report_events.c.scope).distinct()):
                        w.add(recount_due, {"scope": scope})

    @contextmanager
    def _failing(self) -> Iterator[None]:
        """A database error as one line: which database, what it said, what to check."""
        try:
            yield
        except SQLAlchemyError as exc:
            raise ViewsUnavailable(f"views database {self.engine.url.render_as_string()}: "
                                   f"{str(getattr(exc, 'orig', None) or exc).strip().splitlines()[0]} (check it, or set "
                                   f"{VIEWS_URL_ENV} / --views-url)") from None

    def read(self) -> Connection:
        """A connection to query the views with (a context manager)."""
        return self.engine.connect()

    def positions(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        """The last offset applied per partition of ``topics`` (absent: nothing applied yet)."""
        with self._failing(), self.read() as conn:
            rows = conn.execute(select(applied).where(applied.c.topic.in_(list(topics))))
            return {(r.topic, r.partition_id): r.last_offset for r in rows}

    @contextmanager
    def writing(self) -> Iterator[Writer]:
        """One write transaction, serialized with every other writer's; committed when the block ends
        without an error, with what :meth:`Writer.add_up` gathered."""
        with self._failing(), self.engine.connect().execution_options(writing=True) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(select(text(f"pg_advisory_xact_lock({PG_LOCK})")))
            writer = Writer(conn)
            yield writer
            writer.sum_up()
            conn.commit()

    def apply(self, batch: list[Applied]) -> int:
        """Write ``batch`` (records in offset order per partition) in one transaction, skipping what
        was applied before; returns how many records it applied."""
        if not batch:
            return 0
        with self.writing() as writer:
            conn = writer.conn
            done = _last_offsets(conn, {(a.topic, a.partition) for a in batch})
            moved: dict[tuple[str, int], int] = {}
            count = 0
            for record in batch:
                where = (record.topic, record.partition)
                if record.offset <= moved.get(where, done.get(where, -1)):
                    continue
                for op in record.ops:
                    op(writer)
                moved[where] = record.offset
                count += 1
            for (topic, partition), offset in moved.items():
                writer.merge(applied, {"topic": topic, "partition_id": partition, "last_offset": offset},
                             lambda table, new: {"last_offset": new.last_offset})
        return count


def _last_offsets(conn: Connection, partitions: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
    topics = {topic for topic, _ in partitions}
    rows = conn.execute(select(applied).where(applied.c.topic.in_(topics)))
    return {(r.topic, r.partition_id): r.last_offset for r in rows if (r.topic, r.partition_id) in partitions}


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # transactions begin as below, not by the driver's guess
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
        dbapi_connection.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages: the report's sweep stays in memory

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("writing") else "BEGIN")

    return engine


def open_store(url: str | None = None) -> ViewStore:
    """The store at ``views_url(url)``, one per process and database."""
    return _store(views_url(url))


@cache
def _store(url: str) -> ViewStore:
    return ViewStore(url)
