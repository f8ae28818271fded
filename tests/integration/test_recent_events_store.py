"""Events a process committed are served to its live streams from memory, byte for byte as the
store would give them, and only once their transaction has committed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from baton.api.stream import _encode
from baton.domain.events import EventDraft
from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
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
