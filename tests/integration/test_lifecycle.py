"""Run lifecycle on real SQLite and PostgreSQL: confirm, cancel, retry, resume, concurrency, bad input."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from baton.domain.errors import (
    ConcurrencyLimitReached,
    IllegalTransition,
    InvalidFlow,
    InvalidInputs,
    UnknownFlow,
)
from baton.domain.status import StepKind
from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow, StepSpec
from baton.runtime import Runtime, open_runtime
from baton.store import runs as run_store
from baton.store import tenancy
from baton.store.events import events_after

#: How many times each step function ran, by "flow.step".
EXECUTIONS: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh_counts() -> Iterator[None]:
    EXECUTIONS.clear()
    yield
    EXECUTIONS.clear()


# --- flows --------------------------------------------------------------------------------------

chain = Flow("chain", title="Two-step chain")


@chain.step()
async def first(ctx: Any) -> dict[str, Any]:
    EXECUTIONS["chain.first"] += 1
    return {"n": 1}


@chain.step(needs=["first"])
async def second(ctx: Any) -> dict[str, Any]:
    EXECUTIONS["chain.second"] += 1
    return {"n": ctx.upstream["first"]["n"] + 1}


slow = Flow("slow")


@slow.step()
async def sleeper(ctx: Any) -> str:
    EXECUTIONS["slow.sleeper"] += 1
    await asyncio.sleep(60)
    return "never"


flaky = Flow("flaky")


@flaky.step("a")
async def flaky_a(ctx: Any) -> str:
    EXECUTIONS["flaky.a"] += 1
    return "a"


@flaky.step("b", needs=["a"], max_attempts=1)
async def flaky_b(ctx: Any) -> str:
    EXECUTIONS["flaky.b"] += 1
    if EXECUTIONS["flaky.b"] == 1:
        raise RuntimeError("boom on the first try")
    return ctx.upstream["a"] + "b"


@flaky.step("c", needs=["b"])
async def flaky_c(ctx: Any) -> str:
    EXECUTIONS["flaky.c"] += 1
    return ctx.upstream["b"] + "c"


typed = Flow(
    "typed",
    input_schema={
        "type": "object",
        "properties": {"count": {"type": "integer", "minimum": 1}, "label": {"type": "string"}},
        "required": ["count"],
    },
)


@typed.step()
async def echo(ctx: Any) -> dict[str, Any]:
    EXECUTIONS["typed.echo"] += 1
    return dict(ctx.inputs)


CATALOG = Catalog([chain, slow, flaky, typed])

CHAIN_EVENTS = [
    "run.created",
    "run.confirmed",
    "run.started",
    "step.queued",
    "step.started",
    "step.succeeded",
    "step.queued",
    "step.started",
    "step.succeeded",
    "artifact.created",
    "run.succeeded",
]


# --- helpers ------------------------------------------------------------------------------------


def settings(**overrides: Any) -> WorkerSettings:
    return WorkerSettings(**{"lease_s": 3.0, "poll_s": 0.05, "reaper_s": 0.5, **overrides})


def request(flow: str = "chain", **fields: Any) -> RunRequest:
    return RunRequest(flow=flow, **{"project_id": "proj", "created_by": "alice", **fields})


async def drain(rt: Runtime) -> None:
    await asyncio.wait_for(rt.worker(settings()).run(until_idle=True), 30)


async def run_events(rt: Runtime, run_id: str) -> list[Any]:
    return await rt.db.read(events_after, run_id, 0, 100_000)


async def event_types(rt: Runtime, run_id: str) -> list[str]:
    return [e.type for e in await run_events(rt, run_id)]


async def all_runs(rt: Runtime) -> list[Any]:
    return await rt.db.read(run_store.list_runs, limit=1000)


async def until(predicate: Any, timeout: float = 5.0, every: float = 0.02) -> float:
    """Poll an async predicate until it is true; returns the seconds it took."""
    start = time.monotonic()
    while True:
        if await predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(every)


def step_status(run: dict[str, Any]) -> dict[str, str]:
    return {s["key"]: s["status"] for s in run["steps"]}


@pytest.fixture
async def rt(database_url: str) -> Any:
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as runtime:
        for project_id in ("proj", "other"):
            await runtime.db.write(tenancy.create_project, project_id, project_id)
        yield runtime


# --- create, confirm, run ---------------------------------------------------------------------


async def test_confirmed_chain_runs_to_success_with_the_exact_events(rt: Runtime) -> None:
    created = await rt.lifecycle.create_run(request(require_confirmation=True))
    run_id = created["id"]
    assert created["status"] == "needs_confirmation"
    assert created["status_reason"] == "waiting for confirmation"
    # The plan is visible before confirming, and nothing is claimable yet.
    assert [s["key"] for s in created["steps"]] == ["first", "second"]
    assert step_status(created) == {"first": "pending", "second": "pending"}
    await drain(rt)
    assert EXECUTIONS == Counter()
    assert (await rt.lifecycle.get_run(run_id))["status"] == "needs_confirmation"

    confirmed = await rt.lifecycle.confirm(run_id, by="alice")
    assert confirmed["status"] == "running"
    assert step_status(confirmed) == {"first": "queued", "second": "pending"}

    await drain(rt)
    done = await rt.lifecycle.get_run(run_id)
    assert done["status"] == "succeeded"
    assert step_status(done) == {"first": "succeeded", "second": "succeeded"}
    assert done["result"] == {"second": {"n": 2}}
    assert EXECUTIONS == Counter({"chain.first": 1, "chain.second": 1})

    events = await run_events(rt, run_id)
    assert [e.type for e in events] == CHAIN_EVENTS
    assert [e.seq for e in events] == list(range(1, len(CHAIN_EVENTS) + 1))
    assert [e.step_key for e in events if e.type.startswith("step.")] == ["first"] * 3 + ["second"] * 3


@pytest.mark.parametrize("state", ["running", "succeeded"])
async def test_confirming_a_confirmed_run_is_refused_and_changes_nothing(rt: Runtime, state: str) -> None:
    run_id = (await rt.lifecycle.create_run(request()))["id"]
    if state == "succeeded":
        await drain(rt)
    before = await rt.lifecycle.get_run(run_id)
    events_before = await event_types(rt, run_id)
    assert before["status"] == state

    with pytest.raises(IllegalTransition) as caught:
        await rt.lifecycle.confirm(run_id)
    assert f"it is {state}" in caught.value.message
    assert caught.value.current == state

    assert await rt.lifecycle.get_run(run_id) == before
    assert await event_types(rt, run_id) == events_before


# --- cancel -------------------------------------------------------------------------------------


async def test_cancel_an_unconfirmed_run_is_immediate_and_twice_is_a_no_op(rt: Runtime) -> None:
    run_id = (await rt.lifecycle.create_run(request(require_confirmation=True)))["id"]
    cancelled = await rt.lifecycle.cancel(run_id, reason="changed my mind", by="alice")
    assert cancelled["status"] == "cancelled"
    assert cancelled["status_reason"] == "cancelled by alice: changed my mind"
    assert step_status(cancelled) == {"first": "cancelled", "second": "cancelled"}
    types = await event_types(rt, run_id)
    assert types[0] == "run.created" and types[-1] == "run.cancelled"

    again = await rt.lifecycle.cancel(run_id, by="bob")
    assert again == await rt.lifecycle.get_run(run_id)
    assert again["status_reason"] == "cancelled by alice: changed my mind"
    assert await event_types(rt, run_id) == types

    with pytest.raises(IllegalTransition, match="it is cancelled"):
        await rt.lifecycle.confirm(run_id)
    await drain(rt)
    assert EXECUTIONS == Counter()


async def test_cancel_a_run_waiting_for_a_slot_is_immediate(rt: Runtime) -> None:
    first_id = (await rt.lifecycle.create_run(request()))["id"]
    second = await rt.lifecycle.create_run(request())
    assert second["status"] == "queued"

    cancelled = await rt.lifecycle.cancel(second["id"], by="alice")
    assert cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] is not None
    assert (await rt.lifecycle.get_run(first_id))["status"] == "running"

    await drain(rt)
    assert (await rt.lifecycle.get_run(first_id))["status"] == "succeeded"
    assert (await rt.lifecycle.get_run(second["id"]))["status"] == "cancelled"
    assert EXECUTIONS == Counter({"chain.first": 1, "chain.second": 1})


async def test_cancel_stops_an_in_flight_step_within_two_seconds(rt: Runtime) -> None:
    run_id = (await rt.lifecycle.create_run(request("slow")))["id"]
    worker = rt.worker(settings(lease_s=3.0))
    task = asyncio.create_task(worker.run(until_idle=True))
    try:

        async def step_running() -> bool:
            return step_status(await rt.lifecycle.get_run(run_id)) == {"sleeper": "running"}

        await until(step_running)
        requested = await rt.lifecycle.cancel(run_id, reason="too slow", by="alice")
        assert requested["cancel_requested_at"] is not None

        async def run_cancelled() -> bool:
            return (await rt.lifecycle.get_run(run_id))["status"] == "cancelled"

        elapsed = await until(run_cancelled, timeout=5)
        assert elapsed < 2.0
        await asyncio.wait_for(task, 5)
    finally:
        if not task.done():
            task.cancel()
    run = await rt.lifecycle.get_run(run_id)
    assert step_status(run) == {"sleeper": "cancelled"}
    assert run["status_reason"] == "cancelled by alice: too slow"
    types = await event_types(rt, run_id)
    assert types.index("run.cancel_requested") < types.index("step.cancelled") < types.index("run.cancelled")
    assert types[-1] == "run.cancelled"
    assert EXECUTIONS["slow.sleeper"] == 1


async def test_cancelling_a_succeeded_run_is_refused(rt: Runtime) -> None:
    run_id = (await rt.lifecycle.create_run(request()))["id"]
    await drain(rt)
    before = await rt.lifecycle.get_run(run_id)
    with pytest.raises(IllegalTransition, match="it is succeeded"):
        await rt.lifecycle.cancel(run_id)
    assert await rt.lifecycle.get_run(run_id) == before


# --- retry, resume ------------------------------------------------------------------------------


async def test_retry_creates_a_new_run_with_the_same_inputs(rt: Runtime) -> None:
    old = await rt.lifecycle.create_run(request("typed", inputs={"count": 3, "label": "x"}))
    with pytest.raises(IllegalTransition, match="it is running"):
        await rt.lifecycle.retry(old["id"])
    await drain(rt)

    new = await rt.lifecycle.retry(old["id"], by="alice")
    assert new["id"] != old["id"]
    assert new["retry_of"] == old["id"]
    assert new["inputs"] == old["inputs"] == {"count": 3, "label": "x"}
    assert new["flow"] == "typed"
    await drain(rt)

    done = await rt.lifecycle.get_run(new["id"])
    assert done["status"] == "succeeded"
    assert done["result"] == {"echo": {"count": 3, "label": "x"}}
    assert EXECUTIONS["typed.echo"] == 2
    assert "run.retried" in await event_types(rt, old["id"])
    assert len(await all_runs(rt)) == 2


async def test_resume_reruns_only_the_failed_step_and_what_follows(rt: Runtime) -> None:
    run_id = (await rt.lifecycle.create_run(request("flaky")))["id"]
    await drain(rt)
    failed = await rt.lifecycle.get_run(run_id)
    assert failed["status"] == "failed"
    assert "step b failed" in failed["status_reason"] and "boom on the first try" in failed["status_reason"]
    assert step_status(failed) == {"a": "succeeded", "b": "failed", "c": "cancelled"}
    with pytest.raises(IllegalTransition, match="it is failed"):
        await rt.lifecycle.confirm(run_id)

    resumed = await rt.lifecycle.resume(run_id, by="alice")
    assert resumed["status"] == "running"
    assert step_status(resumed) == {"a": "succeeded", "b": "queued", "c": "pending"}
    await drain(rt)

    done = await rt.lifecycle.get_run(run_id)
    assert done["status"] == "succeeded"
    assert done["result"] == {"c": "abc"}
    assert EXECUTIONS == Counter({"flaky.a": 1, "flaky.b": 2, "flaky.c": 1})
    types = await event_types(rt, run_id)
    assert types.count("run.failed") == 1 and types.count("run.resumed") == 1
    assert types[-1] == "run.succeeded"
    seqs = [e.seq for e in await run_events(rt, run_id)]
    assert seqs == list(range(1, len(seqs) + 1))

    with pytest.raises(IllegalTransition, match="it is succeeded"):
        await rt.lifecycle.resume(run_id)


# --- idempotency and concurrency ------------------------------------------------------------


async def test_the_same_idempotency_key_returns_the_same_run(rt: Runtime) -> None:
    one = await rt.lifecycle.create_run(request(idempotency_key="k-1"))
    two = await rt.lifecycle.create_run(request(idempotency_key="k-1"))
    assert two["id"] == one["id"]
    assert len(await all_runs(rt)) == 1
    assert await event_types(rt, one["id"]) == ["run.created", "run.started", "step.queued"]

    other_user = await rt.lifecycle.create_run(request(idempotency_key="k-1", created_by="bob"))
    assert other_user["id"] != one["id"]
    assert len(await all_runs(rt)) == 2


async def test_a_second_run_waits_for_the_slot_and_is_promoted_in_order(rt: Runtime) -> None:
    ids = [(await rt.lifecycle.create_run(request()))["id"] for _ in range(3)]
    runs = [await rt.lifecycle.get_run(i) for i in ids]
    assert [r["status"] for r in runs] == ["running", "queued", "queued"]
    for waiting in runs[1:]:
        assert "waiting for a concurrency slot" in waiting["status_reason"]
        assert step_status(waiting) == {"first": "pending", "second": "pending"}
    assert await event_types(rt, ids[1]) == ["run.created", "run.queued"]

    await drain(rt)
    done = [await rt.lifecycle.get_run(i) for i in ids]
    assert [r["status"] for r in done] == ["succeeded"] * 3
    # FIFO, one at a time: each run started only after the one before it finished.
    for before, after in itertools.pairwise(done):
        assert after["started_at"] >= before["finished_at"]
    assert EXECUTIONS == Counter({"chain.first": 3, "chain.second": 3})
    assert (await event_types(rt, ids[1]))[:3] == ["run.created", "run.queued", "run.started"]


async def test_cancelling_the_active_run_promotes_the_oldest_waiting_one(rt: Runtime) -> None:
    ids = [(await rt.lifecycle.create_run(request()))["id"] for _ in range(3)]
    await rt.lifecycle.cancel(ids[0])
    statuses = [(await rt.lifecycle.get_run(i))["status"] for i in ids]
    assert statuses == ["cancelled", "running", "queued"]


async def test_other_users_and_projects_do_not_share_a_slot(rt: Runtime) -> None:
    await rt.lifecycle.create_run(request())
    bob = await rt.lifecycle.create_run(request(created_by="bob"))
    other_project = await rt.lifecycle.create_run(request(project_id="other"))
    assert bob["status"] == other_project["status"] == "running"


async def test_strategy_reject_raises_and_writes_nothing(rt: Runtime) -> None:
    first_id = (await rt.lifecycle.create_run(request()))["id"]
    events_before = await event_types(rt, first_id)
    with pytest.raises(ConcurrencyLimitReached) as caught:
        await rt.lifecycle.create_run(request(strategy="reject"))
    assert first_id in caught.value.message
    assert [r.id for r in await all_runs(rt)] == [first_id]
    assert await event_types(rt, first_id) == events_before


async def test_strategy_cancel_new_cancels_the_newcomer(rt: Runtime) -> None:
    first_id = (await rt.lifecycle.create_run(request()))["id"]
    new = await rt.lifecycle.create_run(request(strategy="cancel_new"))
    assert new["status"] == "cancelled"
    assert "cancel_new" in new["status_reason"]
    assert step_status(new) == {"first": "cancelled", "second": "cancelled"}
    assert (await event_types(rt, new["id"]))[0] == "run.created"
    await drain(rt)
    assert (await rt.lifecycle.get_run(first_id))["status"] == "succeeded"
    assert EXECUTIONS == Counter({"chain.first": 1, "chain.second": 1})


async def test_strategy_cancel_running_cancels_the_old_run_and_starts_the_new(rt: Runtime) -> None:
    old_id = (await rt.lifecycle.create_run(request()))["id"]
    new = await rt.lifecycle.create_run(request(strategy="cancel_running"))
    assert new["status"] == "running"
    old = await rt.lifecycle.get_run(old_id)
    assert old["status"] == "cancelled"
    assert new["id"] in old["status_reason"]

    new_events = await run_events(rt, new["id"])
    assert [e.type for e in new_events] == ["run.created", "run.started", "step.queued"]
    assert [e.seq for e in new_events] == [1, 2, 3]
    await drain(rt)
    assert (await rt.lifecycle.get_run(new["id"]))["status"] == "succeeded"
    assert EXECUTIONS == Counter({"chain.first": 1, "chain.second": 1})


async def test_strategy_cancel_running_stops_an_in_flight_old_run(rt: Runtime) -> None:
    old_id = (await rt.lifecycle.create_run(request("slow", concurrency_key="shared")))["id"]
    worker = rt.worker(settings())
    task = asyncio.create_task(worker.run(until_idle=True))
    try:

        async def step_running() -> bool:
            return step_status(await rt.lifecycle.get_run(old_id)) == {"sleeper": "running"}

        await until(step_running)
        new = await rt.lifecycle.create_run(
            request("chain", concurrency_key="shared", strategy="cancel_running")
        )
        assert new["status"] == "running"
        assert (await rt.lifecycle.get_run(old_id))["cancel_requested_at"] is not None
        await asyncio.wait_for(task, 10)
    finally:
        if not task.done():
            task.cancel()
    assert (await rt.lifecycle.get_run(old_id))["status"] == "cancelled"
    assert (await rt.lifecycle.get_run(new["id"]))["status"] == "succeeded"
    assert (await event_types(rt, new["id"]))[0] == "run.created"


# --- bad input writes nothing ---------------------------------------------------------------


async def test_an_unknown_flow_writes_nothing(rt: Runtime) -> None:
    with pytest.raises(UnknownFlow) as caught:
        await rt.lifecycle.create_run(request("no-such-flow"))
    assert "no-such-flow" in caught.value.message and "chain" in caught.value.message
    assert await all_runs(rt) == []


async def test_invalid_inputs_name_the_field_and_write_nothing(rt: Runtime) -> None:
    with pytest.raises(InvalidInputs) as caught:
        await rt.lifecycle.create_run(request("typed", inputs={"count": "three"}))
    assert "count" in caught.value.message
    assert [p["field"] for p in caught.value.problems] == ["count"]

    with pytest.raises(InvalidInputs) as missing:
        await rt.lifecycle.create_run(request("typed", inputs={"label": "x"}))
    assert "'count': required property missing" in missing.value.message
    assert await all_runs(rt) == []


def test_a_flow_with_an_unknown_need_or_a_cycle_is_refused_when_declared() -> None:
    flow = Flow("bad")

    @flow.step()
    def a(ctx: Any) -> None:
        return None

    with pytest.raises(InvalidFlow, match="'b' needs 'missing'"):
        flow.step("b", needs=["a", "missing"])(a)
    with pytest.raises(InvalidFlow, match="cycle: c -> c"):
        flow.step("c", needs=["c"])(a)
    assert [s.key for s in flow.steps] == ["a"]

    loop = [
        StepSpec(key="x", kind=StepKind.AGENT, needs=("y",), engine="offline"),
        StepSpec(key="y", kind=StepKind.AGENT, needs=("x",), engine="offline"),
    ]
    with pytest.raises(InvalidFlow, match="cycle"):
        Flow("loop", steps=loop)
    with pytest.raises(InvalidFlow, match="needs 'nowhere'"):
        Flow("dangling", steps=[StepSpec(key="x", kind=StepKind.AGENT, needs=("nowhere",), engine="offline")])


async def test_strategy_cancel_running_does_not_also_promote_an_older_waiting_run(rt: Runtime) -> None:
    old_id = (await rt.lifecycle.create_run(request()))["id"]
    waiting_id = (await rt.lifecycle.create_run(request()))["id"]
    new = await rt.lifecycle.create_run(request(strategy="cancel_running"))
    statuses = [(await rt.lifecycle.get_run(i))["status"] for i in (old_id, waiting_id, new["id"])]
    assert statuses == ["cancelled", "queued", "running"]
    await drain(rt)
    statuses = [(await rt.lifecycle.get_run(i))["status"] for i in (old_id, waiting_id, new["id"])]
    assert statuses == ["cancelled", "succeeded", "succeeded"]
