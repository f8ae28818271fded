"""What differs between SQLite and PostgreSQL, behind one narrow Protocol."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from sqlalchemy import Connection, literal_column, text
from sqlalchemy.sql.elements import ColumnElement, TextClause

from baton.store import direct
from baton.store.recent_events import NOTIFY_PAYLOAD_MAX, RecentEvent, encode_for_notify

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "baton_v1"
#: the events a transaction committed, for the run streams of API servers in other processes
EVENTS_CHANNEL = "baton_events_v1"
#: a topic sent with the others when the transaction's events went out on EVENTS_CHANNEL: a
#: listener that gets a run's topic without it (an older writer, an oversized transaction)
#: cannot know how far that run's events go
EVENTS_SENT = "+events"


@functools.lru_cache(maxsize=64)
def _notify_statement(count: int) -> TextClause:
    """`SELECT pg_notify(:c0, :p0), pg_notify(:c1, :p1), …`: `count` notifications in one round trip."""
    return text("SELECT " + ", ".join(f"pg_notify(:c{i}, :p{i})" for i in range(count)))


class Dialect(Protocol):
    name: str

    def now(self) -> ColumnElement[float]:
        """The database clock as UTC epoch seconds: the only clock leases are judged by."""

    def lock_clause(self) -> str:
        """The suffix that locks claim candidates without waiting on other claimers."""

    def transaction_marker(self, conn: Connection) -> int:
        """An id of the writing transaction that orders commits for readers of the global log."""

    def visible_horizon(self, conn: Connection) -> int | None:
        """Every transaction with a marker below this has ended; None when commits are serial."""

    def notify(self, conn: Connection, topics: Iterable[str], events: Sequence[RecentEvent] = ()) -> None:
        """Tell other processes, at commit, that these topics changed and which events it added."""

    async def listen(
        self,
        url: str,
        on_topics: Callable[[list[str]], None],
        on_events: Callable[[str], None] | None = None,
    ) -> None:
        """Call `on_topics` (and `on_events`) for every notification from other processes, until cancelled."""


class SqliteDialect:
    name = "sqlite"

    def now(self) -> ColumnElement[float]:
        # julianday keeps sub-second precision on every SQLite version (unixepoch('subsec') is 3.42+).
        return literal_column("((julianday('now') - 2440587.5) * 86400.0)")

    def lock_clause(self) -> str:
        return ""  # BEGIN IMMEDIATE already makes the claimer the only writer

    def transaction_marker(self, conn: Connection) -> int:
        return 0

    def visible_horizon(self, conn: Connection) -> int | None:
        return None

    def notify(self, conn: Connection, topics: Iterable[str], events: Sequence[RecentEvent] = ()) -> None:
        return None  # other processes poll; this one is woken in memory

    async def listen(
        self,
        url: str,
        on_topics: Callable[[list[str]], None],
        on_events: Callable[[str], None] | None = None,
    ) -> None:
        await asyncio.Event().wait()


class PostgresDialect:
    name = "postgresql"

    def now(self) -> ColumnElement[float]:
        return literal_column("extract(epoch from clock_timestamp())::float8")

    def lock_clause(self) -> str:
        return " FOR UPDATE OF steps SKIP LOCKED"

    def transaction_marker(self, conn: Connection) -> int:
        cached = conn.info.get("baton_tx")
        if cached is None:
            cached = int(conn.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one())
            conn.info["baton_tx"] = cached
        return int(cached)

    def visible_horizon(self, conn: Connection) -> int | None:
        return int(
            conn.execute(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")).scalar_one()
        )

    def notify(self, conn: Connection, topics: Iterable[str], events: Sequence[RecentEvent] = ()) -> None:
        names = set(topics)
        if not names:
            return
        shared = encode_for_notify(events)
        if shared:
            names.add(EVENTS_SENT)
        payload = " ".join(sorted(names))
        if len(payload) > NOTIFY_PAYLOAD_MAX:
            payload = "*"  # too many to name: wake every waiter rather than miss one
        # On the cursor, and with one parameter per payload: this statement ends every write
        # transaction, and through `Connection.execute` with text arrays (whose escaping of the
        # payloads' JSON quotes cost more than the rest) it took 200-240 us of CPU a step.
        channels = [EVENTS_CHANNEL] * len(shared) + [NOTIFY_CHANNEL]
        payloads = [*shared, payload]
        params = {f"c{i}": channel for i, channel in enumerate(channels)}
        params.update((f"p{i}", body) for i, body in enumerate(payloads))
        # The events first. Either order is correct: a listener wakes the run's streams again
        # once it has the events.
        direct.execute(conn, _notify_statement(len(payloads)), params)

    async def listen(
        self,
        url: str,
        on_topics: Callable[[list[str]], None],
        on_events: Callable[[str], None] | None = None,
    ) -> None:
        import psycopg

        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
                    await aconn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    if on_events is not None:
                        await aconn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    # A reconnect may have missed notifications: wake every waiter once.
                    on_topics(["*"])
                    async for note in aconn.notifies():
                        if note.channel == EVENTS_CHANNEL and on_events is not None:
                            on_events(note.payload)
                        else:
                            on_topics(note.payload.split())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: listen again once it is back
                logger.warning(
                    "LISTEN connection lost (%s); reconnecting", exc, extra={"action": "store.listen_lost"}
                )
                await asyncio.sleep(1.0)


def dialect_for(url: str) -> Dialect:
    if url.startswith("sqlite"):
        return SqliteDialect()
    if url.startswith("postgresql"):
        return PostgresDialect()
    raise ValueError(url)
