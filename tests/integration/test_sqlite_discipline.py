"""SQLite write discipline: writes hold the write lock from their first statement; reads cannot write."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from baton.domain.errors import StoreError
from baton.store.database import Database


async def test_a_write_transaction_holds_the_write_lock_from_the_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    db = await Database.open(url)
    outcome: list[str] = []

    def body(conn: Connection) -> None:
        # Nothing written yet, but BEGIN IMMEDIATE already took the lock: another writer must wait.
        other = sqlite3.connect(tmp_path / "b.db", timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            outcome.append("other writer got in")
        except sqlite3.OperationalError as error:
            outcome.append(str(error))
        finally:
            other.close()

    try:
        await db.write(body)
    finally:
        await db.close()
    assert outcome == ["database is locked"]


async def test_a_read_transaction_cannot_write(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        with pytest.raises(StoreError, match=r"readonly|read-only|query_only"):
            await db.read(lambda conn: conn.execute(text("UPDATE runs SET title = 'x'")))
    finally:
        await db.close()


async def test_busy_from_another_process_is_retried_inside_the_store(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path / 'b.db'}")
    blocker = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    import asyncio

    async def release_later() -> None:
        await asyncio.sleep(0.3)
        blocker.execute("COMMIT")

    try:
        releaser = asyncio.create_task(release_later())
        assert await db.write(lambda conn: conn.execute(text("SELECT count(*) FROM runs")).scalar()) == 0
        await releaser
    finally:
        blocker.close()
        await db.close()
