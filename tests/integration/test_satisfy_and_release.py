"""`satisfy_and_release` counts the dependents' needs down and releases those left with none, in
one statement, leaving every row as counting them down and then `release_ready` leaves it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import Connection, select, update

from baton.engine.lifecycle import RunRequest
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store import steps as step_store
from baton.store.schema import step_needs, steps

graph = Flow("graph", title="Two roots, a join, a question and a tail")
graph.step("a")(lambda: None)
graph.step("b")(lambda: None)
graph.step("c", needs=["a", "b"])(lambda: None)
graph.input("ask", prompt="Go on?", schema={"type": "object"}, needs=["a"])
graph.step("d", needs=["c"])(lambda: None)
graph.step("e", needs=["a", "b", "c"])(lambda: None)

NOW = 1_900_000_000.25
#: started runs (their roots released), side by side
STARTED = RunRequest("graph", confirm=True, concurrency_key="side-by-side", concurrency_limit=10)


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    async with open_runtime(database_url, catalog=Catalog([graph]), upgrade=False) as runtime:
        yield runtime


def _rows(conn: Connection, run_id: str) -> dict[str, tuple[Any, ...]]:
    """Each step's status, unmet needs, and whether it was made available or started at NOW
    (the roots were released when their run was created, at different times)."""
    columns = (steps.c.key, steps.c.status, steps.c.unmet, steps.c.available_at, steps.c.started_at)
    rows = conn.execute(select(*columns).where(steps.c.run_id == run_id))
    return {row.key: (row.status, row.unmet, row.available_at == NOW, row.started_at == NOW) for row in rows}


def _one_statement(conn: Connection, run_id: str, keys: Sequence[str]) -> Any:
    queued, inputs = step_store.satisfy_and_release(conn, run_id, keys, NOW)
    return queued, [row.key for row in inputs]


def _two_statements(conn: Connection, run_id: str, keys: Sequence[str]) -> Any:
    """The reference: each key satisfies its pending dependents, then ready steps are released."""
    for key in keys:
        dependents = select(step_needs.c.step_key).where(
            step_needs.c.run_id == run_id, step_needs.c.need == key
        )
        conn.execute(
            update(steps)
            .where(steps.c.run_id == run_id, steps.c.key.in_(dependents), steps.c.status == "pending")
            .values(unmet=steps.c.unmet - 1)
        )
    queued, inputs = step_store.release_ready(conn, run_id, NOW)
    return queued, [row.key for row in inputs]


@pytest.mark.parametrize(
    "rounds",
    [
        [["a"], ["b"]],  # one need at a time: the question is asked first, then c is released
        [["a", "b"]],  # together: c and the question at once; e still needs c
        [["b"], ["a"], ["c"]],  # down to the tail: d and e
        [["a", "b"], ["c"], ["c"]],  # c again: nothing pending needs it any more
    ],
)
async def test_one_statement_leaves_what_satisfying_then_releasing_leaves(
    rt: Runtime, rounds: list[list[str]]
) -> None:
    one = (await rt.lifecycle.create_run(STARTED))["id"]
    two = (await rt.lifecycle.create_run(STARTED))["id"]
    for keys in rounds:
        released = await rt.db.write(_one_statement, one, keys)
        expected = await rt.db.write(_two_statements, two, keys)
        assert released == expected
        assert await rt.db.read(_rows, one) == await rt.db.read(_rows, two)
    final = await rt.db.read(_rows, one)
    if rounds == [["a"], ["b"]]:
        assert final["ask"] == ("waiting", 0, False, True)
        assert final["c"] == ("queued", 0, True, False)
        assert final["e"] == ("pending", 1, False, False)


async def test_a_release_wakes_claimers_and_a_count_down_alone_does_not(rt: Runtime) -> None:
    run_id = (await rt.lifecycle.create_run(STARTED))["id"]

    def release(conn: Connection, keys: list[str]) -> tuple[list[str], set[str]]:
        queued, _inputs = step_store.satisfy_and_release(conn, run_id, keys, NOW)
        return queued, set(conn.info.get("baton_topics", set()))

    queued, topics = await rt.db.write(release, ["b"])
    assert queued == [] and "steps" not in topics
    queued, topics = await rt.db.write(release, ["a"])
    assert queued == ["c"] and "steps" in topics
