"""Attempts of one run recorded together (`record_successes`) and claims of several steps at once:
each attempt ends only under its own lease, claims what it would have claimed alone, and the run
moves on exactly as if they had been recorded one by one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, select

from baton.engine import step_results
from baton.engine.lifecycle import RunRequest
from baton.engine.step_results import Claim, ClaimNext, Produced, Success
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store import steps as step_store
from baton.store.schema import artifacts, events, steps

fan = Flow("fan", title="Four branches and a join")
for _key in ("a", "b", "c", "d"):
    fan.step(_key)(lambda: None)


@fan.step("join", needs=["a", "b", "c", "d"])
def join(ctx: Any) -> dict[str, Any]:
    return dict(ctx.upstream)


named = Flow("named", title="Branches whose outputs are named artifacts")
named.step("notes", artifact="notes.md")(lambda: None)
named.step("plan", artifact="plan.json")(lambda: None)
named.step("plain")(lambda: None)

WORKER = "test:1:batched"
T = TypeVar("T")


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    async with open_runtime(database_url, catalog=Catalog([fan, named]), upgrade=False) as runtime:
        yield runtime


def _states(conn: Connection, run_id: str) -> dict[str, tuple[str, int, str | None]]:
    rows = conn.execute(
        select(steps.c.key, steps.c.status, steps.c.unmet, steps.c.lease_token).where(
            steps.c.run_id == run_id
        )
    )
    return {row.key: (row.status, row.unmet, row.lease_token) for row in rows}


def _events(conn: Connection, run_id: str) -> list[tuple[int, str, str | None]]:
    rows = conn.execute(
        select(events.c.seq, events.c.type, events.c.step_key)
        .where(events.c.run_id == run_id)
        .order_by(events.c.seq)
    )
    return [(row.seq, row.type, row.step_key) for row in rows]


async def test_a_claim_of_several_steps_takes_at_most_that_many_each_with_its_own_lease(rt: Runtime) -> None:
    created = await rt.lifecycle.create_run(RunRequest("fan", confirm=True))
    rows = await rt.db.write(step_store.claim_steps, WORKER, 30.0, 3, ["fan"])
    assert len(rows) == 3 and len({row.lease_token for row in rows}) == 3
    states = await rt.db.read(_states, created["id"])
    running = {key for key, (status, _unmet, _token) in states.items() if status == "running"}
    assert running == {row.key for row in rows}
    assert all(states[row.key][2] == row.lease_token for row in rows)
    # Fewer ready than asked for: only those, and the pending join is never taken.
    more = await rt.db.write(step_store.claim_steps, WORKER, 30.0, 5, ["fan"], run_id=created["id"])
    assert [row.key for row in more] == sorted({"a", "b", "c", "d"} - running)
    two = await rt.db.write(step_store.claim_steps, WORKER, 30.0, 2, ["fan"], run_id=created["id"])
    assert two == []


async def test_successes_recorded_together_move_the_run_on_as_one_by_one_would(rt: Runtime) -> None:
    flows = rt.catalog.as_mapping()
    created = await rt.lifecycle.create_run(RunRequest("fan", confirm=True))
    run_id = created["id"]
    rows = await rt.db.write(step_results.claim_with_events, WORKER, 30.0, 3, ["fan"], run_id=run_id)
    assert [row.key for row in rows] == ["a", "b", "c"]  # one run's steps: in flow order
    claims = {row.key: step_results.claim_of(row) for row in rows}
    next_one = ClaimNext(WORKER, 30.0, 1, ["fan"])
    lost = Claim(claims["c"].step_id, run_id, "c", claims["c"].attempt, "not-the-lease")
    before = len(await rt.db.read(_events, run_id))
    handed = await rt.db.write(
        step_results.record_successes,
        [
            Success(claims["a"], Produced("A"), flows, next_one),
            Success(claims["b"], Produced({"b": 2}), flows, next_one),
            Success(lost, Produced("stale"), flows, next_one),  # its lease is not this token
        ],
    )
    # One step was left to claim (d): the first attempt takes it; the lost one claims nothing.
    assert [[row.key for row in share] for share in handed] == [["d"], [], []]
    states = await rt.db.read(_states, run_id)
    assert states["a"][0] == states["b"][0] == "succeeded"
    assert states["c"][0] == "running" and states["c"][2] == claims["c"].token
    assert states["d"][0] == "running" and states["d"][2] == handed[0][0].lease_token
    assert states["join"][:2] == ("pending", 2)  # c and d still to come
    logged = await rt.db.read(_events, run_id)
    assert [seq for seq, _type, _key in logged] == list(range(1, len(logged) + 1))
    assert [(kind, key) for _seq, kind, key in logged[before:]] == [
        ("step.stale_result", "c"),
        ("step.succeeded", "a"),
        ("step.succeeded", "b"),
        ("step.started", "d"),
    ]
    # The last two branches together release the join, which c's attempt claims; its context
    # holds every branch's output.
    d = step_results.claim_of(handed[0][0])
    handed = await rt.db.write(
        step_results.record_successes,
        [Success(claims["c"], Produced("C"), flows, next_one), Success(d, Produced(None), flows, next_one)],
    )
    assert [[row.key for row in share] for share in handed] == [["join"], []]
    [joined] = handed[0]
    # Outputs recorded in the claiming transaction come with the claim; the others are read.
    assert joined.context.upstream == {"a": "A", "b": {"b": 2}, "c": "C", "d": None}
    [done] = await rt.db.write(
        step_results.record_successes, [Success(step_results.claim_of(joined), Produced("joined"), flows)]
    )
    assert done == []
    run = await rt.lifecycle.get_run(run_id)
    assert run["status"] == "succeeded", run
    kinds = [(kind, key) for _seq, kind, key in await rt.db.read(_events, run_id)]
    for key in ("a", "b", "c", "d", "join"):
        assert kinds.count(("step.succeeded", key)) == 1
    assert kinds.count(("step.queued", "join")) == 1
    assert kinds[-1] == ("run.succeeded", None)


async def test_a_claim_across_runs_reads_each_run_and_appends_its_events_once(rt: Runtime) -> None:
    first = await rt.lifecycle.create_run(RunRequest("fan", confirm=True, concurrency_limit=2))
    second = await rt.lifecycle.create_run(RunRequest("fan", confirm=True, concurrency_limit=2))
    before = {run["id"]: len(await rt.db.read(_events, run["id"])) for run in (first, second)}
    rows = await rt.db.write(step_results.claim_with_events, WORKER, 30.0, 8, ["fan"])
    assert len(rows) == 8 and len({row.lease_token for row in rows}) == 8
    assert {row.run_id for row in rows} == {first["id"], second["id"]}
    for row in rows:
        assert row.flow == "fan"
        assert row.context.inputs == {} and row.context.upstream == {}
        assert row.context.policy == (first if row.run_id == first["id"] else second)["policy"]
    for run_id, count in before.items():
        logged = await rt.db.read(_events, run_id)
        assert [seq for seq, _type, _key in logged] == list(range(1, len(logged) + 1))
        mine = sorted(row.key for row in rows if row.run_id == run_id)
        assert sorted(key for _seq, kind, key in logged[count:] if kind == "step.started") == mine
        assert len(logged) == count + len(mine)


def _ended_fields(conn: Connection, run_id: str) -> dict[str, tuple[Any, ...]]:
    columns = (steps.c.status, steps.c.output, steps.c.output_text, steps.c.output_ref, steps.c.usage)
    rows = conn.execute(
        select(steps.c.key, *columns, steps.c.lease_token, steps.c.error).where(steps.c.run_id == run_id)
    )
    return {row.key: tuple(row)[1:] for row in rows}


async def _ended_both_ways(
    rt: Runtime, flow: str, outputs: dict[str, Any], read: Callable[[Connection, str], T]
) -> tuple[T, T]:
    """What `read` finds in a run whose first steps ended one by one, then in one where they
    ended together (`record_successes` of them all)."""
    flows = rt.catalog.as_mapping()
    stored = []
    for together in (False, True):
        created = await rt.lifecycle.create_run(RunRequest(flow, confirm=True, concurrency_limit=2))
        run_id = created["id"]
        rows = await rt.db.write(
            step_results.claim_with_events, WORKER, 30.0, len(outputs), [flow], run_id=run_id
        )
        successes = [Success(step_results.claim_of(row), Produced(outputs[row.key]), flows) for row in rows]
        if together:
            await rt.db.write(step_results.record_successes, successes)
        else:
            for success in successes:
                await rt.db.write(step_results.record_successes, [success])
        stored.append(await rt.db.read(read, run_id))
    one_by_one, at_once = stored
    return one_by_one, at_once


async def test_steps_ended_together_store_what_ending_them_one_by_one_stores(rt: Runtime) -> None:
    outputs = {"a": "A ü «quoted»", "b": {"b": [1, 2.5, None], "t": True}, "c": None, "d": 7}
    one_by_one, at_once = await _ended_both_ways(rt, "fan", outputs, _ended_fields)
    assert at_once == one_by_one
    assert at_once["a"][:3] == ("succeeded", outputs["a"], outputs["a"])
    assert at_once["b"][1] == outputs["b"] and at_once["b"][2] is None


def _artifacts(conn: Connection, run_id: str) -> dict[str, tuple[Any, ...]]:
    """The run's artifacts by name, but for its report."""
    columns = (artifacts.c.name, artifacts.c.step_key, artifacts.c.media_type, artifacts.c.content)
    rows = conn.execute(select(*columns).where(artifacts.c.run_id == run_id, artifacts.c.name != "report.md"))
    return {row.name: tuple(row)[1:] for row in rows}


async def test_steps_ended_together_store_their_named_artifacts_as_one_by_one(rt: Runtime) -> None:
    outputs = {"notes": "# Notes\n\nü", "plan": {"steps": [1, 2]}, "plain": "no artifact"}
    one_by_one, at_once = await _ended_both_ways(rt, "named", outputs, _artifacts)
    assert at_once == one_by_one
    assert at_once["notes.md"] == ("notes", "text/markdown", "# Notes\n\nü".encode())
    assert at_once["plan.json"][:2] == ("plan", "application/json")
    assert set(at_once) == {"notes.md", "plan.json"}
