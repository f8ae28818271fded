"""The reaper judges an expired lease again under the run's lock: two reapers, or a heartbeat
that landed in between, never repair a step twice or take one from a live worker."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from baton.engine import step_results
from baton.engine.lifecycle import RunRequest
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store import steps as step_store
from baton.store.events import events_after
from baton.store.schema import steps

one = Flow("one_step", title="One step")


@one.step("only")
async def only(ctx: Any) -> str:
    return "done"


CATALOG = Catalog([one])


@pytest.fixture
async def rt(database_url: str) -> Any:
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as runtime:
        yield runtime


async def _claimed_step(rt: Runtime) -> Any:
    """A run whose only step is claimed by a worker that is not running, its lease already over."""
    run = await rt.lifecycle.create_run(RunRequest("one_step", confirm=True))
    claimed = await rt.db.write(step_results.claim_with_events, "ghost:1:x", 30.0, 1, ["one_step"])
    assert [row.run_id for row in claimed] == [run["id"]]

    def expire(conn: Any) -> None:
        conn.execute(update(steps).where(steps.c.id == claimed[0].id).values(lease_expires_at=0.0))

    await rt.db.write(expire)
    return claimed[0]


def _types(rt_rows: list[Any]) -> list[str]:
    return [row.type for row in rt_rows]


async def test_two_reapers_that_saw_the_same_expired_lease_repair_it_once(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = await _claimed_step(rt)
    stale = await rt.db.read(step_store.expired_leases)
    # Both passes start from the same list, as two reapers in two processes would.
    monkeypatch.setattr(step_store, "expired_leases", lambda conn, limit=100: stale)
    assert await rt.db.write(step_results.reap, rt.catalog.as_mapping()) == 1
    assert await rt.db.write(step_results.reap, rt.catalog.as_mapping()) == 0
    events = await rt.db.read(events_after, step.run_id)
    assert _types(events).count("step.lease_expired") == 1
    assert _types(events).count("step.queued") == 2  # queued at the start, and again by the one repair


async def test_a_lease_extended_after_the_reaper_looked_is_left_alone(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = await _claimed_step(rt)
    stale = await rt.db.read(step_store.expired_leases)
    # The worker's heartbeat commits between the reaper's look and its repair.
    held = await rt.db.write(step_store.extend_leases, "ghost:1:x", [step.lease_token], 30.0)
    assert [row.lease_token for row in held] == [step.lease_token]
    monkeypatch.setattr(step_store, "expired_leases", lambda conn, limit=100: stale)
    assert await rt.db.write(step_results.reap, rt.catalog.as_mapping()) == 0
    row = await rt.db.read(step_store.get_step, step.id)
    assert (row.status, row.lease_token) == ("running", step.lease_token)
    assert "step.lease_expired" not in _types(await rt.db.read(events_after, step.run_id))
