"""The views' tables: one schema for SQLite and PostgreSQL (SQLAlchemy Core).

Every row belongs to a *scope*: a workflow in its namespace (``t1.support_ticket``), so tests and
environments that share a broker can share a views database too. Each table is shaped for the
query that reads it, with the index that query needs, so no query reads more than it returns:

* ``applied``: per topic partition, the last offset applied. It is written in the transaction
  that writes the rows, so it is exactly what the rows reflect (:mod:`.store`).
* ``review_items``: every review item once (the first written), ``decided`` once a verdict is
  known; open ones are read by ``(scope, decided, rank, created_at_ms)``.
* ``verdicts``: the first verdict per review id, in log order (verdicts are keyed by review id, so
  all of an item's verdicts are in one partition, applied in offset order).
* ``report_events``: per event and prompt version (and once more under ``version = ''`` (``EVERY_VERSION``) for the
  all-versions row), what the report counts: the latest decision, the latest settling review item
  and dead letter, whether a person touched it, repairs, first verdicts, missed escalations,
  spend: the state an event's figures are worked out from (:mod:`.totals`), never read by the report.
* ``report_hours``: per prompt version (and all versions) and hour, the counts behind the report's
  figures, kept as the ``report_events`` rows change (:mod:`.totals`); the report sums the hours
  of its window.
* ``report_latency``: per hour and per day and prompt version, the model decisions per latency bin
  (:mod:`.histogram`), trigger→decision (``e2e``) and the model call (``model``): the percentiles,
  summed over the window's whole days and the hours before its first (``span_ms``: the hours are
  kept for that part, the days so a long window reads ~480 rows a day instead of 24 times that).
* ``placements``: where each event ended, the latest of its decisions, settling review items
  and dead letters (replay's "before" and "after").
* ``control_states``: every control state applied, by offset: the history, even after
  compaction removed it from the topic.
* ``recount_due``: scopes whose hours are still to be worked out from their rows: a database kept
  before the hours existed (:func:`processors.views.totals.recount_due`).
* ``trace_steps``: every trace record (one step of one run), read per run id by the console's
  item page: ``(scope, run_id, at_ms)``.
* ``skipped``: records that are not what their topic holds (a foreign writer's bytes), named so a
  command can say so; a view never dead-letters anything.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

EVERY_VERSION = ""
"""``report_events.version`` of the all-versions row."""

ID = String(512)
NAME = String(255)


def _scope() -> Column:
    return Column("scope", NAME, primary_key=True)


applied = Table(
    "applied", metadata,
    Column("topic", NAME, primary_key=True),
    Column("partition_id", Integer, primary_key=True),
    Column("last_offset", BigInteger, nullable=False),
)

review_items = Table(
    "review_items", metadata,
    _scope(),
    Column("review_id", ID, primary_key=True),
    Column("event_id", ID, nullable=False),
    Column("rank", Integer, nullable=False, doc="0 for an event_rule item (read first), else 1."),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("decided", Boolean, nullable=False, default=False),
    Column("item", Text, nullable=False, doc="The ReviewItem as JSON."),
    Index("review_items_open", "scope", "decided", "rank", "created_at_ms"),
)

verdicts = Table(
    "verdicts", metadata,
    _scope(),
    Column("review_id", ID, primary_key=True),
    Column("partition_id", Integer, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
    Column("verdict", Text, nullable=False, doc="The Verdict as JSON."),
)

report_events = Table(
    "report_events", metadata,
    _scope(),
    Column("version", NAME, primary_key=True),
    Column("event_id", ID, primary_key=True),
    Column("settled_at_ms", BigInteger, doc="The latest of decided_at_ms, review_at_ms and dead_at_ms."),
    Column("decided_at_ms", BigInteger),
    Column("decision_source", String(32)),
    Column("decision_route", NAME),
    Column("model_latency_ms", Float),
    Column("e2e_ms", Float, doc="decided_at_ms - the trigger's timestamp, when the trigger had one."),
    Column("review_at_ms", BigInteger),
    Column("review_route", NAME, doc="Where the settling review item's answer routes; None without a valid answer."),
    Column("dead_at_ms", BigInteger),
    Column("touched", Boolean, nullable=False, default=False, doc="Any review item, of any stage."),
    Column("repaired", Boolean, nullable=False, default=False),
    Column("missed", Boolean, nullable=False, default=False, doc="An outcome says it should have escalated."),
    Column("verdicts", Integer, nullable=False, default=0),
    Column("overrides", Integer, nullable=False, default=0),
    Column("verdict_at_ms", BigInteger),
    Column("verdict_kind", String(32), doc="The latest first verdict on a settling review item."),
    Column("verdict_route", NAME, doc="Where that verdict's corrected answer routes."),
    Column("tokens_in", BigInteger, nullable=False, default=0),
    Column("tokens_out", BigInteger, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    sqlite_with_rowid=False,
)

REPORT_COUNTS = ("events", "decided", "automated", "reviewed", "dead_lettered", "schema_failures", "verdicts",
                 "overrides", "needed", "caught", "judged", "tokens_in", "tokens_out", "offline", "online")
"""The integer columns of ``report_hours`` (``cost_usd`` is the one float); :mod:`.totals` defines each."""



def _hour() -> list[Column]:
    """The key of a report hour: the scope, the prompt version (EVERY_VERSION for all) and the hour."""
    return [_scope(), Column("version", NAME, primary_key=True),
            Column("hour_ms", BigInteger, primary_key=True, doc="The start of the hour (epoch ms).")]


report_hours = Table(
    "report_hours", metadata,
    *_hour(),
    *(Column(name, BigInteger, nullable=False, default=0) for name in REPORT_COUNTS),
    Column("cost_usd", Float, nullable=False, default=0.0),
)

report_latency = Table(
    "report_latency", metadata,
    _scope(),
    Column("span_ms", BigInteger, primary_key=True, doc="An hour or a day (in ms): each decision counts in both."),
    Column("start_ms", BigInteger, primary_key=True, doc="The start of the hour or day (epoch ms, UTC days)."),
    Column("version", NAME, primary_key=True),
    Column("metric", String(16), primary_key=True, doc="e2e (trigger to decision) or model (the model call)."),
    Column("bin", Integer, primary_key=True, doc="processors.views.histogram.bin_of the latency in ms."),
    Column("decisions", BigInteger, nullable=False, default=0),
)

placements = Table(
    "placements", metadata,
    _scope(),
    Column("event_id", ID, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("detail", NAME, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("rank", Integer, nullable=False, doc="decision 0, review 1, dead letter 2: the later wins a tie."),
    Column("replay", NAME),
    Column("answer", Text, doc="The answer that placed it (a decision's, a review item's) as JSON; None for a "
                               "dead letter: replay's diff shows a changed answer within one route."),
    Index("placements_replay", "scope", "replay"),
)

control_states = Table(
    "control_states", metadata,
    _scope(),
    Column("log_offset", BigInteger, primary_key=True),
    Column("state", Text, nullable=False, doc="The ControlState as JSON."),
)

recount_due = Table(
    "recount_due", metadata,
    _scope(),
)
"""Scopes whose report_events rows were kept before report_hours existed: their hours are worked out
once, from the rows (:func:`processors.views.totals.recount_due`)."""

trace_steps = Table(
    "trace_steps", metadata,
    _scope(),
    Column("partition_id", Integer, primary_key=True),
    Column("log_offset", BigInteger, primary_key=True),
    Column("run_id", ID, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("trace", Text, nullable=False, doc="The Trace as JSON (redacted by the stage that wrote it)."),
    Index("trace_steps_run", "scope", "run_id", "at_ms"),
)

skipped = Table(
    "skipped", metadata,
    _scope(),
    Column("topic", NAME, primary_key=True),
    Column("partition_id", Integer, primary_key=True),
    Column("log_offset", BigInteger, primary_key=True),
    Column("error", Text, nullable=False),
)
