"""Group commit (SQLite: queued writes; PostgreSQL: those of one run): each write behaves as if alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

from baton.domain.errors import StoreError
from baton.store import database as database_module
from baton.store.database import Database


def _table(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT UNIQUE)"))


def _insert(body: str) -> Any:
    def write(conn: Connection) -> int:
        conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})
        return int(conn.execute(text("SELECT count(*) FROM notes")).scalar_one())

    return write


def _bodies(conn: Connection) -> list[str]:
    return list(conn.execute(text("SELECT body FROM notes ORDER BY id")).scalars())


async def test_queued_writes_share_a_commit_and_a_failing_one_rolls_back_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await Database.open(f"sqlite:///{tmp_path / 'b.db'}")
    groups: list[int] = []
    real = database_module._commit_group

    def counted(conn: Connection, writes: list[Any], dialect: Any) -> list[tuple[bool, Any]]:
        groups.append(len(writes))
        return real(conn, writes, dialect)

    monkeypatch.setattr(database_module, "_commit_group", counted)
    release = threading.Event()

    def blocker(conn: Connection) -> None:
        _table(conn)
        release.wait(5)  # hold the writer thread so the next writes queue up behind it

    def half_then_fail(conn: Connection) -> None:
        conn.execute(text("INSERT INTO notes (body) VALUES ('half')"))
        raise ValueError("this write fails after writing")

    try:
        first = asyncio.ensure_future(db.write(blocker))
        await asyncio.sleep(0.05)
        queued = [
            asyncio.ensure_future(db.write(_insert("a"))),
            asyncio.ensure_future(db.write(half_then_fail)),
            asyncio.ensure_future(db.write(_insert("a"))),  # a duplicate: the UNIQUE constraint refuses it
            asyncio.ensure_future(db.write(_insert("b"))),
        ]
        await asyncio.sleep(0.05)
        release.set()
        await first
        results = await asyncio.gather(*queued, return_exceptions=True)
        assert results[0] == 1
        assert isinstance(results[1], ValueError)
        assert isinstance(results[2], StoreError)
        assert results[3] == 2  # it sees "a" and not the rolled-back "half" or the refused duplicate
        assert await db.read(_bodies) == ["a", "b"]
        assert groups[-1] == 4, groups  # the four queued writes went in one transaction
        # The writer goes on after failures in a group.
        assert await db.write(_insert("c")) == 3
    finally:
        release.set()
        await db.close()


async def test_a_committed_group_is_durable_for_a_new_connection(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    db = await Database.open(f"sqlite:///{path}")
    try:
        await db.write(_table)
        counts = await asyncio.gather(*(db.write(_insert(f"n{i}")) for i in range(20)))
        assert sorted(counts) == list(range(1, 21))
    finally:
        await db.close()
    reopened = await Database.open(f"sqlite:///{path}")
    try:
        assert len(await reopened.read(_bodies)) == 20
    finally:
        await reopened.close()


# --- PostgreSQL: writes of one run commit together -------------------------------------------


def _pg_table(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE notes (id SERIAL PRIMARY KEY, run TEXT, body TEXT UNIQUE)"))


def _run_insert(run: str, body: str, hold: threading.Event | None = None) -> Any:
    def write(conn: Connection) -> int:
        if hold is not None:
            hold.wait(5)  # keep this write in flight so that the next ones of its run queue up
        conn.execute(text("INSERT INTO notes (run, body) VALUES (:run, :body)"), {"run": run, "body": body})
        return int(conn.execute(text("SELECT count(*) FROM notes")).scalar_one())

    return write


def _pg_bodies(conn: Connection) -> list[str]:
    return list(conn.execute(text("SELECT body FROM notes ORDER BY id")).scalars())


@pytest.mark.postgres
async def test_postgres_writes_of_one_run_queued_behind_one_in_flight_commit_together(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await Database.open(postgres_url)
    groups: list[int] = []
    real = database_module._commit_bodies

    def counted(engine: Any, dialect: Any, bodies: list[Any]) -> Any:
        groups.append(len(bodies))
        return real(engine, dialect, bodies)

    monkeypatch.setattr(database_module, "_commit_bodies", counted)
    hold = threading.Event()
    try:
        await db.write(_pg_table)
        first = asyncio.ensure_future(db.write_for_run("r1", _run_insert("r1", "a", hold)))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(db.write_for_run("r1", _run_insert("r1", b))) for b in "bcd"]
        other = asyncio.ensure_future(db.write_for_run("r2", _run_insert("r2", "x")))
        assert await other == 1  # another run's write does not wait for r1's
        await asyncio.sleep(0.05)
        hold.set()
        assert await first == 2
        # Each caller sees its own write and those before it, and nothing after it.
        assert await asyncio.gather(*queued) == [3, 4, 5]
        assert groups == [3], groups  # the three queued writes shared one transaction
        assert await db.read(_pg_bodies) == ["x", "a", "b", "c", "d"]
        assert db._run_writes == {}  # nothing left waiting
    finally:
        hold.set()
        await db.close()


@pytest.mark.postgres
async def test_postgres_a_failing_write_of_a_group_fails_alone(postgres_url: str) -> None:
    db = await Database.open(postgres_url)
    hold = threading.Event()

    def half_then_fail(conn: Connection) -> None:
        conn.execute(text("INSERT INTO notes (run, body) VALUES ('r1', 'half')"))
        raise ValueError("this write fails after writing")

    try:
        await db.write(_pg_table)
        first = asyncio.ensure_future(db.write_for_run("r1", _run_insert("r1", "a", hold)))
        await asyncio.sleep(0.05)
        queued = [
            asyncio.ensure_future(db.write_for_run("r1", _run_insert("r1", "b"))),
            asyncio.ensure_future(db.write_for_run("r1", half_then_fail)),
            asyncio.ensure_future(db.write_for_run("r1", _run_insert("r1", "a"))),  # UNIQUE refuses it
            asyncio.ensure_future(db.write_for_run("r1", _run_insert("r1", "c"))),
        ]
        await asyncio.sleep(0.05)
        hold.set()
        await first
        results = await asyncio.gather(*queued, return_exceptions=True)
        assert results[0] == 2
        assert isinstance(results[1], ValueError)
        assert isinstance(results[2], StoreError)
        assert results[3] == 3
        assert await db.read(_pg_bodies) == ["a", "b", "c"]
        assert await db.write_for_run("r1", _run_insert("r1", "d")) == 4  # the run's writes go on
    finally:
        hold.set()
        await db.close()


# --- write_batched: writes of one run and one function merged into one call -------------------


class _Notes:
    """A batch function that records each call's items, and can hold or fail on an item."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.hold = threading.Event()

    def add(self, conn: Connection, items: list[str]) -> list[int]:
        self.calls.append(list(items))
        counts = []
        for item in items:
            if item == "hold":
                self.hold.wait(5)  # keep this write in flight so that the next ones queue up
            if item == "boom":
                conn.execute(text("INSERT INTO batched (body) VALUES ('half')"))
                raise ValueError("this item fails after writing")
            conn.execute(text("INSERT INTO batched (body) VALUES (:body)"), {"body": item})
            counts.append(int(conn.execute(text("SELECT count(*) FROM batched")).scalar_one()))
        return counts


def _batched_table(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE batched (body TEXT PRIMARY KEY)"))


def _batched_bodies(conn: Connection) -> list[str]:
    return sorted(conn.execute(text("SELECT body FROM batched")).scalars())


async def _behind_a_held_write(db: Database, notes: _Notes, queue: list[tuple[str, str]]) -> list[Any]:
    """Queue `(run, item)` writes behind a batched write of r1 in flight; their results (or errors)."""
    await db.write(_batched_table)
    if db.dialect.name == "sqlite":
        # A plain write, on the writer thread: SQLite commits a batched write on the event
        # loop's own thread when nothing is in flight (`Database._write_on_loop`), where holding
        # it would hold the loop.
        first = asyncio.ensure_future(db.write(notes.add, ["hold"]))
    else:
        first = asyncio.ensure_future(db.write_batched("r1", notes.add, "hold"))
    await asyncio.sleep(0.05)
    queued = [asyncio.ensure_future(db.write_batched(run, notes.add, item)) for run, item in queue]
    await asyncio.sleep(0.05)
    notes.hold.set()
    await first  # on PostgreSQL another run's write may have committed before it
    return await asyncio.gather(*queued, return_exceptions=True)


async def test_batched_writes_of_one_run_queued_together_become_one_call(database_url: str) -> None:
    db = await Database.open(database_url)
    notes = _Notes()
    try:
        results = await _behind_a_held_write(db, notes, [("r1", "b"), ("r1", "c"), ("r1", "d"), ("r2", "x")])
        # One call for the run's three queued writes, each caller with its own result.
        assert ["b", "c", "d"] in notes.calls, notes.calls
        assert ["x"] in notes.calls  # another run's write is never merged with them
        assert len(notes.calls) == 3, notes.calls
        counts = results[:3]
        assert counts == sorted(counts) and len(set(counts)) == 3
        assert await db.read(_batched_bodies) == ["b", "c", "d", "hold", "x"]
        assert db._run_writes == {}
    finally:
        notes.hold.set()
        await db.close()


async def test_a_batched_call_that_raises_writes_each_item_on_its_own(database_url: str) -> None:
    db = await Database.open(database_url)
    notes = _Notes()
    try:
        results = await _behind_a_held_write(db, notes, [("r1", "b"), ("r1", "boom"), ("r1", "c")])
        assert notes.calls[1:] == [["b", "boom", "c"], ["b"], ["boom"], ["c"]], notes.calls
        assert isinstance(results[1], ValueError)
        assert results[0] == 2 and results[2] == 3
        # Nothing of the merged attempt nor of the failing item stays: only what each wrote alone.
        assert await db.read(_batched_bodies) == ["b", "c", "hold"]
        assert await db.write_batched("r1", notes.add, "d") == 4  # the run's writes go on
    finally:
        notes.hold.set()
        await db.close()


async def test_batched_writes_of_one_run_made_in_one_turn_of_the_loop_are_one_call(database_url: str) -> None:
    # A fan-out's branches handed off together end in the same turn of the event loop: none
    # of them goes ahead alone while the others wait for it.
    db = await Database.open(database_url)
    notes = _Notes()
    try:
        await db.write(_batched_table)
        results = await asyncio.gather(*(db.write_batched("r1", notes.add, body) for body in "abcd"))
        assert notes.calls == [["a", "b", "c", "d"]]
        assert results == [1, 2, 3, 4]
    finally:
        await db.close()


@pytest.mark.postgres
async def test_postgres_a_batched_write_cancelled_while_others_join_it_leaves_theirs_to_commit(
    postgres_url: str,
) -> None:
    db = await Database.open(postgres_url)
    notes = _Notes()
    try:
        await db.write(_batched_table)
        first = asyncio.ensure_future(db.write_batched("r1", notes.add, "a"))
        second = asyncio.ensure_future(db.write_batched("r1", notes.add, "b"))
        await asyncio.sleep(0)  # both have started: the first yields, the second joins it
        first.cancel()
        assert await second == 1
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await db.read(_batched_bodies) == ["b"]  # the cancelled write never began
        assert notes.calls == [["b"]]
        assert db._run_writes == {}
    finally:
        await db.close()


async def test_a_caller_cancelled_mid_transaction_waits_for_its_end_then_is_cancelled(
    database_url: str,
) -> None:
    db = await Database.open(database_url)
    entered, hold = threading.Event(), threading.Event()

    def slow(conn: Connection) -> str:
        entered.set()
        hold.wait(5)
        conn.execute(text("INSERT INTO batched (body) VALUES ('slow')"))
        return "committed"

    try:
        await db.write(_batched_table)
        task = asyncio.ensure_future(db.write(slow))
        assert await asyncio.to_thread(entered.wait, 5)
        task.cancel()
        await asyncio.sleep(0.1)
        assert not task.done()  # it waits for its transaction to end, whatever its caller does
        hold.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await db.read(_batched_bodies) == ["slow"]  # and that transaction committed
        assert await db.write(_batched_bodies) == ["slow"]  # the database goes on
    finally:
        hold.set()
        await db.close()


# --- SQLite: step ends commit on the event loop's thread, never waiting there for a lock -------


async def test_sqlite_short_writes_commit_on_the_loop_thread_and_others_on_the_writer_thread(
    tmp_path: Path,
) -> None:
    db = await Database.open(f"sqlite:///{tmp_path / 'b.db'}")
    threads: list[str] = []

    def add(conn: Connection, items: list[str]) -> list[int]:
        threads.append(threading.current_thread().name)
        return _Notes().add(conn, items)

    try:
        await db.write(_batched_table)
        await asyncio.sleep(0.05)  # the writer thread, done, goes idle (its caller may resume first)
        assert await db.write_batched("r1", add, "a") == 1
        await db.write(add, ["b"])
        await asyncio.sleep(0.05)
        assert await db.write_short(add, ["c"]) == [3]  # a short write (a worker's claim)
        loop_thread = threading.current_thread().name
        assert threads == [loop_thread, threads[1], loop_thread]
        assert threads[1].startswith("baton-sqlite-write"), threads
        assert await db.read(_batched_bodies) == ["a", "b", "c"]
    finally:
        await db.close()


async def test_sqlite_a_batched_write_waits_for_another_connections_lock_off_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    db = await Database.open(f"sqlite:///{path}")
    threads: list[str] = []

    def add(conn: Connection, items: list[str]) -> list[int]:
        threads.append(threading.current_thread().name)
        return _Notes().add(conn, items)

    other = sqlite3.connect(path, isolation_level=None)
    try:
        await db.write(_batched_table)
        other.execute("BEGIN IMMEDIATE")  # another process's write in progress: the lock is taken
        write = asyncio.ensure_future(db.write_batched("r1", add, "a"))
        gaps = []
        for _ in range(20):  # the loop keeps turning while the write waits for the lock
            before = time.monotonic()
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - before)
        assert not write.done()
        assert max(gaps) < 1.0, gaps  # SQLite's busy timeout (5 s) was never waited out on the loop
        other.execute("COMMIT")
        assert await asyncio.wait_for(write, 10) == 1
        assert threads[-1].startswith("baton-sqlite-write"), threads  # it waited on the writer thread
        # The lock is free again: the next one commits on the loop thread, on the same connection.
        await asyncio.sleep(0.05)
        assert await db.write_batched("r1", add, "b") == 2
        assert threads[-1] == threading.current_thread().name
        assert await db.read(_batched_bodies) == ["a", "b"]
    finally:
        other.close()
        await db.close()
