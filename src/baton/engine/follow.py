"""Read a run's events after a point and wait for new ones: the Python API behind live views."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Row

from baton.store import events as event_store
from baton.store.database import Database

TERMINAL_EVENTS = frozenset({"run.succeeded", "run.failed", "run.cancelled"})

#: Writers in other processes cannot wake us on SQLite; a short poll covers them.
CROSS_PROCESS_POLL_S = 0.25


async def wait_for_events(
    db: Database, run_id: str, after_seq: int = 0, *, timeout: float = 30.0, limit: int = 1000
) -> list[Row[Any]]:
    """Events of `run_id` after `after_seq`; waits up to `timeout` for the first one to appear."""
    deadline = time.monotonic() + timeout
    topics = [f"run:{run_id}"]
    while True:
        # Taken before the read: an event committed while the read runs wakes the wait at once,
        # rather than being noticed only at the next poll.
        seen = db.topics.version(topics)
        rows = await db.read(event_store.events_after, run_id, after_seq, limit)
        remaining = deadline - time.monotonic()
        if rows or remaining <= 0:
            return rows
        await db.wait(topics, min(remaining, _poll_interval(db)), since=seen)


async def follow_run(
    db: Database, run_id: str, after_seq: int = 0, *, stop_at_end: bool = True
) -> AsyncIterator[Row[Any]]:
    """Every event of the run after `after_seq`, in `seq` order, as they commit.

    With `stop_at_end`, ends after a terminal run event once nothing newer is there.
    """
    seq = after_seq
    while True:
        rows = await wait_for_events(db, run_id, seq, timeout=_poll_interval(db))
        for row in rows:
            seq = row.seq
            yield row
        if stop_at_end and rows and rows[-1].type in TERMINAL_EVENTS:
            return


async def follow_all(db: Database, cursor: str | None = None) -> AsyncIterator[tuple[Row[Any], str]]:
    """Every event of every run after `cursor`, in commit order, with the cursor after each."""
    while True:
        seen = db.topics.version(["runs"])
        rows, next_cursor = await db.read(event_store.global_events_after, cursor, 1000)
        for row in rows:
            yield row, event_store.format_cursor(int(row.tx), int(row.id))
        cursor = next_cursor
        if not rows:
            await db.wait(["runs"], _poll_interval(db), since=seen)


def _poll_interval(db: Database) -> float:
    return CROSS_PROCESS_POLL_S if db.dialect.name == "sqlite" else 5.0
