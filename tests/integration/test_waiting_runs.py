"""Runs blocked on a human answer hold no lease, no worker slot and no worker task (issue 7, item 6)."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select
from tests.integration.workerproc import wait_until

from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import open_runtime
from baton.store import inputs as input_store
from baton.store.schema import runs, steps, workers

#: Enough runs to exceed the worker's slots many times over, few enough for a quick test.
WAITING_RUNS = 40
SLOTS = 4

asks = Flow("asks_then_finishes", title="Prepare, wait for an answer, finish")


@asks.step()
async def prepare(ctx: Any) -> dict[str, Any]:
    return {"ready": True}


asks.input("approve", prompt="Go on?", schema={"type": "object"}, needs=["prepare"])


@asks.step(needs=["approve"])
async def finish(ctx: Any) -> dict[str, Any]:
    return {"answer": ctx.upstream["approve"]}


def _holdings(conn: Any, worker_id: str) -> dict[str, int]:
    """What the database says is held: steps with a live lease or running, and the worker's count."""
    leased = conn.execute(select(func.count()).where(steps.c.lease_token.is_not(None))).scalar_one()
    running = conn.execute(select(func.count()).where(steps.c.status == "running")).scalar_one()
    waiting = conn.execute(select(func.count()).where(runs.c.status == "waiting_for_input")).scalar_one()
    in_flight = conn.execute(select(workers.c.in_flight).where(workers.c.id == worker_id)).scalar_one()
    return {"leased": leased, "running": running, "waiting": waiting, "in_flight": in_flight}


def _step_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("baton-step-") and not t.done()]


async def test_waiting_runs_hold_no_lease_slot_or_task(database_url: str) -> None:
    # A short lease makes the heartbeat (lease / 3) report the worker's in-flight count promptly.
    settings = WorkerSettings(concurrency=SLOTS, lease_s=1.5, poll_s=0.2)
    async with open_runtime(database_url, catalog=Catalog([asks]), upgrade=False) as rt:
        worker = rt.worker(settings)
        task = asyncio.create_task(worker.run(), name="test-worker")
        try:
            run_ids = [
                (
                    await rt.lifecycle.create_run(
                        RunRequest("asks_then_finishes", concurrency_key="waiting", concurrency_limit=1000)
                    )
                )["id"]
                for _ in range(WAITING_RUNS)
            ]

            async def all_waiting() -> bool:
                held = await rt.db.read(_holdings, worker.id)
                return held["waiting"] == WAITING_RUNS and held["in_flight"] == 0

            await wait_until(all_waiting, timeout=60, what=f"{WAITING_RUNS} runs waiting for input")

            held = await rt.db.read(_holdings, worker.id)
            assert held == {"leased": 0, "running": 0, "waiting": WAITING_RUNS, "in_flight": 0}
            assert worker.in_flight == {}, "a waiting run must not occupy a worker slot"
            assert _step_tasks() == [], "a waiting run must not keep a task alive in the worker"
            # Ten times more waiting runs than slots, and every slot is still free for new work.
            assert SLOTS - len(worker.in_flight) == SLOTS

            pending = await rt.db.read(input_store.list_requests)
            assert sorted(r.run_id for r in pending) == sorted(run_ids)
            for request in pending:
                await rt.lifecycle.answer(request.id, {"ok": True})

            async def all_succeeded() -> bool:
                statuses = await rt.db.read(
                    lambda conn: (
                        conn.execute(select(runs.c.status).where(runs.c.id.in_(run_ids))).scalars().all()
                    )
                )
                return set(statuses) == {"succeeded"}

            await wait_until(all_succeeded, timeout=60, what="every answered run to succeed")
        finally:
            worker.stop()
            await task
