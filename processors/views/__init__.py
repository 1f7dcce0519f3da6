"""Read models for people: the review queue, the report, replay placement and the control history, kept
up to date by the ``views`` stage in an embedded database (SQLite) or a PostgreSQL server."""
