"""A step that claims its successor in its own transaction hands it off even when it is cancelled
right after that transaction commits (a heartbeat that raced with the commit, or a stopping worker);
otherwise the successor sat claimed by nobody until its lease expired and ran as attempt 2."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from baton.engine import step_results
from baton.engine.execution import StepExecution
from baton.engine.lifecycle import RunRequest
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store import steps as step_store

pair = Flow("pair", title="Two steps in a row")


@pair.step("first")
async def first(ctx: Any) -> str:
    return "one"


@pair.step("second", needs=["first"])
async def second(ctx: Any) -> str:
    return "two"


WORKER = "test:1:handoff"


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    async with open_runtime(database_url, catalog=Catalog([pair]), upgrade=False) as runtime:
        yield runtime


async def _execution_of_first(rt: Runtime, interrupt: Any) -> tuple[StepExecution, list[Any]]:
    """`first`, claimed and running; `interrupt(execution)` is called the moment its end commits."""
    await rt.lifecycle.create_run(RunRequest("pair", confirm=True))
    [row] = await rt.db.write(step_results.claim_with_events, WORKER, 30.0, 1, ["pair"])
    flows = rt.catalog.as_mapping()
    execution = StepExecution(rt.db, flows, row, flows["pair"])
    handed: list[Any] = []
    execution.claim_next = lambda: step_results.ClaimNext(WORKER, 30.0, 1, ["pair"])
    execution.handoff = handed.extend
    real_write = rt.db.write_batched

    async def write_then_interrupt(run_id: str, fn: Any, item: Any) -> Any:
        result = await real_write(run_id, fn, item)
        if fn is step_results.record_successes:
            # The task has not resumed yet: this lands exactly between commit and hand-off.
            interrupt(execution)
        return result

    rt.db.write_batched = write_then_interrupt  # type: ignore[method-assign,assignment]
    execution.task = asyncio.create_task(execution.run())
    return execution, handed


async def test_a_lease_check_that_races_with_the_commit_does_not_orphan_the_successor(rt: Runtime) -> None:
    # The heartbeat extended no lease for `first` (its row had just succeeded) and so calls it lost.
    execution, handed = await _execution_of_first(rt, lambda e: e.cancel(lost=True))
    await asyncio.wait_for(execution.task, 10)  # type: ignore[arg-type]
    assert execution.recorded
    assert [row.key for row in handed] == ["second"]
    [successor] = handed
    stored = await rt.db.read(step_store.get_step, successor.id)
    assert stored is not None
    assert (stored.status, stored.claimed_by, stored.attempt) == ("running", WORKER, 1)


async def test_a_worker_stopping_right_after_the_commit_still_gets_the_successor(rt: Runtime) -> None:
    execution, handed = await _execution_of_first(rt, lambda e: e.task.cancel())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(execution.task, 10)  # type: ignore[arg-type]
    assert execution.recorded
    assert [row.key for row in handed] == ["second"]
