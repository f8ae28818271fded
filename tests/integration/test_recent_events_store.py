"""Events a process committed are served to its live streams from memory, byte for byte as the
store would give them, and only once their transaction has committed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from baton.api.stream import _encode, _next_frames, _SharedPages
from baton.domain.events import EventDraft
from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store.database import Database
from baton.store.dialects import NOTIFY_CHANNEL
from baton.store.events import append_events, events_after

talky = Flow("talky", title="Logs, streams, retries and returns structure")
_failed_once: set[str] = set()


@talky.step("speak")
async def speak(ctx: Any) -> dict[str, Any]:
    ctx.log('héllo — «quoted» "and" \\ back\nslash ✓')
    ctx.emit("chunk one\n")
    ctx.emit("chunk two\t🙂\n")
    return {"n": 1, "nested": {"list": [1, 2.5, None, True], "text": "é"}}


@talky.step("flaky", needs=["speak"], max_attempts=2)
async def flaky(ctx: Any) -> str:
    if ctx.run_id not in _failed_once:
        _failed_once.add(ctx.run_id)
        raise RuntimeError("first attempt fails")
    ctx.artifact("notes.md", "# notes\n")
    return "ok"


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    async with open_runtime(database_url, catalog=Catalog([talky]), upgrade=False) as runtime:
        yield runtime


async def test_frames_from_memory_equal_frames_from_the_store(rt: Runtime) -> None:
    created = await rt.lifecycle.create_run(RunRequest("talky", confirm=True))
    await rt.worker(WorkerSettings(lease_s=5, poll_s=0.05)).run(until_idle=True)
    stored = await rt.db.read(events_after, created["id"], 0, 1000)
    assert stored[-1].type == "run.succeeded"
    assert {"log", "step.delta", "step.retrying", "artifact.created"} <= {row.type for row in stored}
    recent = rt.db.recent_events.after(created["id"], 0, 1000)
    assert recent is not None, "this process wrote every event of the run: all of them are in memory"
    assert [e.seq for e in recent] == [row.seq for row in stored]
    for row, event in zip(stored, recent, strict=True):
        assert _encode(event) == _encode(row)


async def test_nothing_is_published_when_the_transaction_fails(rt: Runtime) -> None:
    created = await rt.lifecycle.create_run(RunRequest("talky"))
    before = await rt.db.read(events_after, created["id"], 0, 1000)

    def append_then_fail(conn: Any) -> None:
        append_events(conn, created["id"], [EventDraft("log", {"message": "never committed"})])
        raise ValueError("the body fails after appending")

    with pytest.raises(ValueError):
        await rt.db.write(append_then_fail)
    after = await rt.db.read(events_after, created["id"], 0, 1000)
    assert [r.seq for r in after] == [r.seq for r in before]
    last = before[-1].seq
    assert rt.db.recent_events.after(created["id"], last, 10) is None
    # The next commit continues the run's sequence where the store is, and is served from memory.
    await rt.db.write(append_events, created["id"], [EventDraft("log", {"message": "committed"})])
    served = rt.db.recent_events.after(created["id"], last, 10)
    assert served is not None
    assert [(e.seq, e.payload) for e in served] == [(last + 1, {"message": "committed"})]


@pytest.mark.postgres
async def test_a_server_takes_other_processes_events_from_their_notifications(postgres_url: str) -> None:
    """PostgreSQL: a worker's committed events reach a server's memory in the notification.

    Two `Database`s on one database stand for a worker and an API server: each has its own
    pool, its own LISTEN connection and its own window, as two processes would.
    """
    server = await Database.open(postgres_url)
    server.receive_events = True
    try:
        async with open_runtime(postgres_url, catalog=Catalog([talky]), upgrade=False) as worker:
            run_id = (await worker.lifecycle.create_run(RunRequest("talky")))["id"]
            # The first wait starts the server's listener, which wakes every waiter once it listens.
            assert await server.wait([f"run:{run_id}"], 10.0)
            last = (await server.read(events_after, run_id, 0, 1000))[-1].seq

            async def written_and_heard(drafts: list[EventDraft]) -> None:
                seen = server.topics.version([f"run:{run_id}"])
                await worker.db.write(append_events, run_id, drafts)
                assert await server.wait([f"run:{run_id}"], 10.0, since=seen), "no notification came"
                for _ in range(50):  # the topics and the events notifications may come in either order
                    if server.recent_events.after(run_id, last, 100) is not None:
                        return
                    await server.wait([f"run:{run_id}"], 0.1)

            drafts = [
                EventDraft("log", {"message": 'héllo «q» "x" ✓\n'}),
                EventDraft("step.delta", {"text": "ab"}),
            ]
            await written_and_heard(drafts)
            heard = server.recent_events.after(run_id, last, 100)
            stored = await server.read(events_after, run_id, last, 100)
            assert heard is not None and [e.seq for e in heard] == [r.seq for r in stored] == [
                last + 1,
                last + 2,
            ]
            assert [_encode(e) for e in heard] == [_encode(r) for r in stored]
            # Every writer says what it committed: a stream caught up is told so without a read.
            assert server.recent_events.after(run_id, last + 2, 100) == []

            # Too big for one notification together: each goes in a notification of its own.
            last = stored[-1].seq
            await written_and_heard([EventDraft("step.delta", {"text": "x" * 5000}) for _ in range(2)])
            assert [e.seq for e in server.recent_events.after(run_id, last, 100) or []] == [
                last + 1,
                last + 2,
            ]
            last += 2

            # Too big for any notification: not sent, so the server's streams read the store.
            seen = server.topics.version([f"run:{run_id}"])
            await worker.db.write(append_events, run_id, [EventDraft("step.delta", {"text": "x" * 9000})])
            assert await server.wait([f"run:{run_id}"], 10.0, since=seen)
            await asyncio.sleep(0.2)
            assert server.recent_events.after(run_id, last, 100) is None
            last += 1
            await written_and_heard([EventDraft("log", {"message": "after the big one"})])
            assert [e.seq for e in server.recent_events.after(run_id, last, 100) or []] == [last + 1]
            assert server.recent_events.after(run_id, last + 1, 100) == []

            # A run's topic without word of its events (an older writer): its streams read again.
            seen = server.topics.version([f"run:{run_id}"])
            await worker.db.write(
                lambda conn: conn.execute(
                    text("SELECT pg_notify(:channel, :topic)"),
                    {"channel": NOTIFY_CHANNEL, "topic": f"run:{run_id}"},
                )
            )
            assert await server.wait([f"run:{run_id}"], 10.0, since=seen)
            assert server.recent_events.after(run_id, last + 1, 100) is None
    finally:
        await server.close()


@pytest.mark.postgres
async def test_a_lost_notification_delays_a_stream_by_one_wait_at_most(postgres_url: str) -> None:
    async with (
        open_runtime(postgres_url, catalog=Catalog([talky]), upgrade=False) as server,
        open_runtime(postgres_url, catalog=Catalog([talky]), upgrade=False) as worker,
    ):
        server.db.receive_events = True
        run_id = (await worker.lifecycle.create_run(RunRequest("talky")))["id"]
        assert await server.db.wait([f"run:{run_id}"], 10.0)  # listening now
        seen = server.db.topics.version([f"run:{run_id}"])
        last = (await worker.db.write(append_events, run_id, [EventDraft("log", {"message": "heard"})]))[-1]
        assert await server.db.wait([f"run:{run_id}"], 10.0, since=seen)
        pages = _SharedPages()
        assert (await _next_frames(server, pages, run_id, last - 1, timeout=5.0))[0] != []
        assert server.db.recent_events.after(run_id, last, 10) == []  # caught up, as far as it knows

        listener = server.db._listener
        assert listener is not None
        listener.cancel()  # the LISTEN connection is gone and nothing says so
        await worker.db.write(append_events, run_id, [EventDraft("log", {"message": "not heard"})])
        began = time.monotonic()
        frames, _ = await _next_frames(server, pages, run_id, last, timeout=1.0)
        assert [f.seq for f in frames] == [last + 1], "the stream must find the event in the store"
        assert time.monotonic() - began < 3.0


async def test_a_stream_that_sent_a_short_page_waits_for_a_commit_before_reading_again(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    real_read = _SharedPages._read

    async def counted(rt: Runtime, run_id: str, after: int) -> Any:
        reads.append(after)
        return await real_read(rt, run_id, after)

    monkeypatch.setattr(_SharedPages, "_read", staticmethod(counted))
    async with open_runtime(sqlite_url, catalog=Catalog([talky]), upgrade=False) as rt:
        run_id = (await rt.lifecycle.create_run(RunRequest("talky")))["id"]
        pages = _SharedPages()
        frames, version = await _next_frames(rt, pages, run_id, 0, timeout=1.0)
        last = frames[-1].seq
        assert reads == []  # this process wrote them: from memory

        # This process commits while the stream waits: the event comes from memory, no read.
        waiting = asyncio.ensure_future(_next_frames(rt, pages, run_id, last, timeout=5.0, since=version))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await rt.db.write(append_events, run_id, [EventDraft("log", {"message": "one more"})])
        frames, version = await asyncio.wait_for(waiting, 5.0)
        assert [f.seq for f in frames] == [last + 1]
        assert reads == []

        # Another process's commit, which this one is not told of, is found by the poll.
        other = await Database.open(sqlite_url)
        try:
            await other.write(append_events, run_id, [EventDraft("log", {"message": "from afar"})])
        finally:
            await other.close()
        began = time.monotonic()
        frames, _ = await _next_frames(rt, pages, run_id, last + 1, timeout=5.0, since=version)
        assert [f.seq for f in frames] == [last + 2]
        assert time.monotonic() - began < 2.0
        assert reads == [last + 1]
