"""Statements run on the DBAPI cursor (store/direct.py) give what `Connection.execute` gives: the
same rows with the same processed values, and SQLAlchemy's errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import bindparam, exc, insert, select

from baton.domain.errors import StoreError
from baton.engine.lifecycle import RunRequest
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store import direct
from baton.store.runs import _LOCK_RUN
from baton.store.schema import events, steps
from baton.store.steps import _RELEASE_READY

pair = Flow("pair_direct", title="Two steps")


@pair.step("first")
async def first(ctx: Any) -> str:
    return "one"


@pair.step("second", needs=["first"])
async def second(ctx: Any) -> str:
    return "two"


_STEPS_OF_RUN = select(steps).where(steps.c.run_id == bindparam("run_id")).order_by(steps.c.position)
_INSERT_ONE = (
    insert(events)
    .inline()
    .values(
        {
            name: bindparam(name, type_=events.c[name].type)
            for name in ("run_id", "seq", "type", "payload", "created_at")
        }
    )
)


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    async with open_runtime(database_url, catalog=Catalog([pair]), upgrade=False) as runtime:
        yield runtime


async def test_rows_equal_those_of_connection_execute(rt: Runtime) -> None:
    created = await rt.lifecycle.create_run(RunRequest("pair_direct", inputs={"n": [1, {"k": "é"}]}))
    params = {"run_id": created["id"], "now": 123.5}

    def both(conn: Any) -> tuple[Any, Any, Any, Any]:
        core = conn.execute(_LOCK_RUN, params).first()
        fast = direct.first(conn, _LOCK_RUN, params)
        core_steps = list(conn.execute(_STEPS_OF_RUN, params))
        fast_steps = direct.rows(conn, _STEPS_OF_RUN, params)
        return core, fast, core_steps, fast_steps

    core, fast, core_steps, fast_steps = await rt.db.write(both)
    assert fast._mapping == dict(core._mapping)
    assert fast.inputs == {"n": [1, {"k": "é"}]} and isinstance(fast.updated_at, float)
    assert [dict(r._mapping) for r in core_steps] == [r._mapping for r in fast_steps]
    assert [type(v) for v in fast_steps[1]] == [type(v) for v in core_steps[1]]
    assert fast_steps[1].needs == ["first"]


async def test_statement_literals_and_no_rows(rt: Runtime) -> None:
    created = await rt.lifecycle.create_run(RunRequest("pair_direct"))
    # Nothing is pending with every need met once the run has queued its first step: no rows.
    released = await rt.db.write(
        lambda conn: direct.rows(conn, _RELEASE_READY, {"rid": created["id"], "now": 1.0})
    )
    assert released == []
    assert (
        await rt.db.write(lambda conn: direct.first(conn, _LOCK_RUN, {"run_id": "nope", "now": 1.0})) is None
    )


async def test_driver_errors_are_sqlalchemy_errors(rt: Runtime) -> None:
    created = await rt.lifecycle.create_run(RunRequest("pair_direct"))
    duplicate = {"run_id": created["id"], "seq": 1, "type": "log", "payload": {}, "created_at": 1.0}

    def insert_twice(conn: Any) -> None:
        direct.execute_many(conn, _INSERT_ONE, [duplicate])

    # seq 1 (run.created) exists: the unique (run_id, seq) refuses it, as an IntegrityError.
    with pytest.raises(StoreError) as refused:
        await rt.db.write(insert_twice)
    assert isinstance(refused.value.__cause__, exc.IntegrityError)
    # The failed transaction left nothing behind and the connection still works.
    count = await rt.db.read(
        lambda conn: len(list(conn.execute(select(events.c.seq).where(events.c.run_id == created["id"]))))
    )
    assert count >= 1
    assert await rt.db.write(
        lambda conn: direct.first(conn, _LOCK_RUN, {"run_id": created["id"], "now": 2.0})
    )


async def test_an_in_list_is_refused_with_what_to_do_instead(rt: Runtime) -> None:
    statement = select(steps.c.id).where(steps.c.status.in_(["queued", "running"]))
    with pytest.raises(ValueError, match="OR of equalities"):
        await rt.db.read(lambda conn: direct.rows(conn, statement, {}))
