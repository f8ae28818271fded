"""A run's steps and their needs are stored alike whichever way they are inserted: from one JSON
array (PostgreSQL) or row by row through the driver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Connection, select

from baton.engine.lifecycle import RunRequest
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store import steps as step_store
from baton.store.schema import step_needs, steps

shapes = Flow("shapes", title="Steps of every shape")
shapes.step("a", max_attempts=5, timeout_s=2.5)(lambda: None)
shapes.step("b", artifact="b «ü».md")(lambda: None)
shapes.step("c", needs=["a", "b"])(lambda: None)
shapes.input("ask", prompt='Say "yes"\n', schema={"type": "object", "required": ["ok"]}, needs=["c"])
shapes.step("d", needs=["a", "ask", "c"])(lambda: None)


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    async with open_runtime(database_url, catalog=Catalog([shapes]), upgrade=False) as runtime:
        yield runtime


def _stored(conn: Connection, run_id: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    rows = conn.execute(select(steps).where(steps.c.run_id == run_id)).all()
    by_key = {row.key: {k: v for k, v in row._mapping.items() if k not in ("id", "run_id")} for row in rows}
    needs = conn.execute(
        select(step_needs.c.need, step_needs.c.step_key).where(step_needs.c.run_id == run_id)
    ).all()
    return by_key, sorted((row.need, row.step_key) for row in needs)


async def test_steps_from_one_json_array_are_stored_as_row_by_row(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = RunRequest("shapes", require_confirmation=True)  # not started: every step pending
    from_json = (await rt.lifecycle.create_run(request))["id"]
    monkeypatch.setattr(step_store, "_insertable_from_json", lambda rows: False)
    row_by_row = (await rt.lifecycle.create_run(request))["id"]
    one = await rt.db.read(_stored, from_json)
    other = await rt.db.read(_stored, row_by_row)
    assert one == other
    by_key, needs = one
    assert by_key["a"]["max_attempts"] == 5 and by_key["a"]["timeout_s"] == 2.5
    assert by_key["a"]["attempt"] == 0 and by_key["a"]["available_at"] == 0
    assert by_key["d"]["needs"] == ["a", "ask", "c"] and by_key["d"]["unmet"] == 3
    assert by_key["ask"]["spec"]["prompt"] == 'Say "yes"\n'
    assert ("ask", "d") in needs and len(needs) == 6


def test_rows_with_a_json_column_left_none_or_unlike_keys_go_row_by_row() -> None:
    plain = {"key": "a", "needs": [], "spec": {}}
    assert step_store._insertable_from_json([plain, dict(plain, key="b")])
    assert not step_store._insertable_from_json([dict(plain, output=None)])
    assert not step_store._insertable_from_json([plain, {"key": "b", "needs": [], "spec": {}, "engine": "x"}])
