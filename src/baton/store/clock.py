"""The database clock and dialect of a connection, fetched once per transaction."""

from __future__ import annotations

import time

from sqlalchemy import Connection, select

from baton.store.dialects import Dialect, PostgresDialect, SqliteDialect

_DIALECTS: dict[str, Dialect] = {"sqlite": SqliteDialect(), "postgresql": PostgresDialect()}


def dialect_of(conn: Connection) -> Dialect:
    return _DIALECTS[conn.dialect.name]


def db_now(conn: Connection) -> float:
    """The database's time as UTC epoch seconds, read once per transaction.

    An embedded SQLite database runs inside this process, so its clock is this machine's clock:
    no query is needed. PostgreSQL's clock is the server's, shared by every worker.
    """
    cached = conn.info.get("baton_now")
    if cached is None:
        if conn.dialect.name == "sqlite":
            cached = time.time()
        else:
            cached = float(conn.execute(select(dialect_of(conn).now())).scalar_one())
        conn.info["baton_now"] = cached
    return float(cached)
