"""What running steps stream is written for all of them together: one transaction per flush,
fenced by every step's own lease, and always before the step's end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from baton.domain.events import EventDraft
from baton.engine import step_results
from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store.events import events_after
from baton.store.schema import events

chatty = Flow("chatty", title="One step that streams")


@chatty.step("talk")
async def talk(ctx: Any) -> int:
    for i in range(30):
        ctx.log(f"line {i}")
        ctx.emit(f"chunk {i}\n")
        await asyncio.sleep(0.01)
    return 30


WORKER = "test:1:output"


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    async with open_runtime(database_url, catalog=Catalog([chatty]), upgrade=False) as runtime:
        yield runtime


async def test_steps_streaming_together_share_transactions_and_keep_their_order(rt: Runtime) -> None:
    run_ids = [
        (await rt.lifecycle.create_run(RunRequest("chatty", confirm=True, concurrency_limit=10)))["id"]
        for _ in range(4)
    ]
    await asyncio.wait_for(rt.worker(WorkerSettings(concurrency=8, poll_s=0.05)).run(until_idle=True), 60)
    for run_id in run_ids:
        rows = await rt.db.read(events_after, run_id, 0, 10_000)
        assert [r.seq for r in rows] == list(range(1, len(rows) + 1)), "dense, in order"
        types = [r.type for r in rows]
        logs = [r.payload["message"] for r in rows if r.type == "log"]
        assert logs == [f"line {i}" for i in range(30)]
        text = "".join(r.payload["text"] for r in rows if r.type == "step.delta")
        assert text == "".join(f"chunk {i}\n" for i in range(30))
        last_output = max(i for i, t in enumerate(types) if t in ("log", "step.delta"))
        assert last_output < types.index("step.succeeded"), "a step's end comes after all it streamed"
    if rt.db.dialect.name == "postgresql":
        # `tx` is the writing transaction: output of different runs committed together.
        rows = await rt.db.read(
            lambda conn: conn.execute(
                select(events.c.tx, events.c.run_id).where(events.c.type == "log")
            ).all()
        )
        runs_by_tx: dict[int, set[str]] = {}
        for tx, run_id in rows:
            runs_by_tx.setdefault(tx, set()).add(run_id)
        assert max(len(runs) for runs in runs_by_tx.values()) > 1, (
            "each step's output had its own transaction"
        )


async def test_a_flush_writes_for_the_leases_it_holds_and_names_the_ones_lost(rt: Runtime) -> None:
    for _ in range(3):
        await rt.lifecycle.create_run(RunRequest("chatty", confirm=True, concurrency_limit=10))
    rows = await rt.db.write(step_results.claim_with_events, WORKER, 30.0, 3, ["chatty"])
    claims = [step_results.claim_of(row) for row in rows]
    stale = step_results.Claim(claims[2].step_id, claims[2].run_id, "talk", 1, "not-the-lease")
    batch = [
        (claims[0], [EventDraft("log", {"message": "a"}), EventDraft("log", {"message": "b"})]),
        (claims[1], [EventDraft("log", {"message": "c"})]),
        (stale, [EventDraft("log", {"message": "from a lost attempt"})]),
    ]
    before = {c.run_id: (await rt.db.read(events_after, c.run_id, 0, 1000))[-1].seq for c in claims}
    lost = await rt.db.write(step_results.append_steps_events, batch)
    assert lost == [stale]
    written = {c.run_id: await rt.db.read(events_after, c.run_id, before[c.run_id], 1000) for c in claims}
    assert [(r.seq, r.payload["message"]) for r in written[claims[0].run_id]] == [
        (before[claims[0].run_id] + 1, "a"),
        (before[claims[0].run_id] + 2, "b"),
    ]
    assert [r.payload["message"] for r in written[claims[1].run_id]] == ["c"]
    assert written[claims[2].run_id] == [], "a lost lease writes nothing"
