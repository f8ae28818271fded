"""Schedules fire on time, exactly once per fire time with three worker processes, and missed fires
follow their schedule's policy. This file is also the flow source the worker processes load."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import Connection, func, select

from baton.engine.schedules import ScheduleRequest, Schedules
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store import schedules as schedule_store
from baton.store.schema import events, runs, workers

HERE = Path(__file__).resolve()

beat = Flow("sched_beat", title="One quick step", require_confirmation=True)


@beat.step()
def once(ctx: Any) -> dict[str, Any]:
    return {"n": ctx.inputs.get("n", 0)}


FLOWS = [beat]
TICK_S = 0.1


def _support() -> ModuleType:
    name = "baton_itest_workerproc"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE.parent / "workerproc.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(autouse=True)
def short_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers (in this process, or spawned: they inherit the environment) look every 0.1 s."""
    monkeypatch.setenv("BATON_SCHEDULE_TICK_S", str(TICK_S))


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    async with open_runtime(database_url, catalog=Catalog(FLOWS), upgrade=False) as opened:
        yield opened


def _runs_of(conn: Connection, schedule_id: str) -> list[Any]:
    return list(
        conn.execute(select(runs).where(runs.c.schedule_id == schedule_id).order_by(runs.c.created_at))
    )


async def _with_worker(rt: Runtime, until: Any, *, timeout: float, what: str) -> Any:
    """Run one in-process worker (and so its schedule service) until `until()` is truthy."""
    worker = rt.worker(WorkerSettings(poll_s=0.05, drain_s=2.0))
    task = asyncio.create_task(worker.run(), name="worker")
    try:
        return await _support().wait_until(until, timeout=timeout, what=what)
    finally:
        worker.stop()
        await task


async def test_a_fire_makes_its_run_within_a_tick(rt: Runtime) -> None:
    book = Schedules(rt.db, rt.catalog)
    made = await book.create(
        ScheduleRequest(flow="sched_beat", interval_s=1.0, inputs={"n": 7}, title="tick")
    )
    assert made["next_fires"][:2] == [made["next_fire_at"], made["next_fire_at"] + 1.0]

    async def first_run() -> list[Any]:
        return await rt.db.read(_runs_of, made["id"])

    found = await _with_worker(rt, first_run, timeout=20, what="the schedule's first run")
    run = found[0]
    lateness = run.created_at - made["next_fire_at"]
    # Due at next_fire_at; the service looks every tick. The margin is for a loaded CI machine.
    assert -0.01 <= lateness < TICK_S + 2.0, lateness
    assert run.source["kind"] == "schedule" and run.source["schedule_id"] == made["id"]
    assert "missed_from" not in run.source
    # auto_confirm (the default) skips the flow's confirmation; the run went through like any other.
    assert run.status in ("queued", "running", "succeeded")
    assert run.inputs == {"n": 7} and run.title == "tick"
    assert run.policy["effective"] is not None
    created = await rt.db.read(
        lambda c: (
            c.execute(
                select(events.c.payload).where(events.c.run_id == run.id, events.c.type == "run.created")
            )
            .scalars()
            .all()
        )
    )
    assert created[0]["schedule_id"] == made["id"]
    after = await book.get(made["id"])
    assert after["fires"] >= 1 and after["last_error"] is None
    assert after["next_fire_at"] > made["next_fire_at"]


@pytest.mark.parametrize("missed", ["skip", "run_once"])
async def test_missed_fires_follow_the_policy(rt: Runtime, missed: str) -> None:
    book = Schedules(rt.db, rt.catalog)
    made = await book.create(
        ScheduleRequest(flow="sched_beat", interval_s=3600.0, missed=missed, auto_confirm=False)
    )
    # As if no worker ran for two and a half hours: fires at -9000 s, -5400 s and -1800 s were missed.
    now = made["created_at"]
    overdue = now - 9000.0
    await rt.db.write(schedule_store.update_schedule, made["id"], next_fire_at=overdue)

    async def moved_on() -> bool:
        return (await book.get(made["id"]))["next_fire_at"] > now

    await _with_worker(rt, moved_on, timeout=20, what="the schedule to move past its missed fires")
    after = await book.get(made["id"])
    assert after["next_fire_at"] == pytest.approx(overdue + 3 * 3600.0)
    made_runs = await rt.db.read(_runs_of, made["id"])
    if missed == "skip":
        assert made_runs == []
        assert after["fires"] == 0 and after["last_fire_at"] is None
        return
    assert len(made_runs) == 1
    run = made_runs[0]
    assert run.source["missed_from"].startswith(_iso_prefix(overdue))
    assert run.source["missed_until"].startswith(_iso_prefix(overdue + 7200.0))
    assert run.idempotency_key.endswith(f"schedule:{made['id']}:{run.source['fire_at']}")
    # auto_confirm off: the flow's confirmation applies, as it would to a person's run.
    assert run.status == "needs_confirmation"
    assert after["fires"] == 1 and after["last_run_id"] == run.id


def _iso_prefix(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "")


@pytest.mark.slow
@pytest.mark.postgres
async def test_three_workers_make_exactly_one_run_per_fire(postgres_url: str, tmp_path: Path) -> None:
    support = _support()
    n_workers = 3
    async with open_runtime(postgres_url, catalog=Catalog(FLOWS), upgrade=False) as rt:
        procs = [
            support.spawn_worker(postgres_url, HERE, poll=0.05, reaper=1, log=tmp_path / f"w{i}.log")
            for i in range(n_workers)
        ]
        try:

            async def all_registered() -> bool:
                if any(p.poll() is not None for p in procs):
                    raise AssertionError("a worker exited: " + _logs(tmp_path))
                count = await rt.db.read(
                    lambda c: c.execute(select(func.count()).select_from(workers)).scalar_one()
                )
                return bool(count == n_workers)

            # Every worker is ticking before the schedule exists, so all three race for each fire.
            await support.wait_until(all_registered, timeout=60, what=f"{n_workers} workers to register")
            book = Schedules(rt.db, rt.catalog)
            made = await book.create(ScheduleRequest(flow="sched_beat", interval_s=1.0))
            wanted = 4

            async def enough() -> bool:
                return (await book.get(made["id"]))["fires"] >= wanted

            await support.wait_until(enough, timeout=40, what=f"{wanted} fires")
            await book.pause(made["id"])
        finally:
            for proc in procs:
                support.stop_worker(proc)
        schedule = await book.get(made["id"])
        made_runs = await rt.db.read(_runs_of, made["id"])
        fire_times = [r.source["fire_at"] for r in made_runs]
        assert len(made_runs) == schedule["fires"] >= wanted, _logs(tmp_path)
        assert len(set(fire_times)) == len(fire_times), f"a fire time made two runs: {sorted(fire_times)}"
        # One run for every fire time on the 1-second grid, none skipped.
        assert sorted(fire_times) == fire_times
        from datetime import datetime

        seconds = [datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in fire_times]
        assert [round(b - a, 3) for a, b in itertools.pairwise(seconds)] == [1.0] * (len(seconds) - 1)
        assert schedule["last_error"] is None
        created_events = await rt.db.read(
            lambda c: c.execute(
                select(func.count())
                .select_from(events)
                .where(events.c.type == "run.created", events.c.run_id.in_([r.id for r in made_runs]))
            ).scalar_one()
        )
        assert created_events == len(made_runs)


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(tmp_path.glob("w*.log")))
