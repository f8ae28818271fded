"""Property: on the real store, random DAGs run every step exactly once and never before its needs.

The pure scheduler has the same property in tests/unit/test_scheduler.py; this one checks the
counter-based readiness the store actually uses (unmet-need counts updated as steps succeed).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import open_runtime
from baton.store.migrate import upgrade


@st.composite
def dags(draw: st.DrawFn) -> list[list[int]]:
    """needs[i] lists earlier steps that step i waits for."""
    size = draw(st.integers(1, 10))
    return [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(size)]


def _flow(needs: list[list[int]], order: list[str]) -> Flow:
    flow = Flow("prop")
    for i, wanted in enumerate(needs):

        async def step(ctx: object, key: str = f"s{i}") -> str:
            order.append(key)
            await asyncio.sleep(0)
            return key

        flow.step(f"s{i}", needs=[f"s{j}" for j in wanted])(step)
    return flow


async def _run(needs: list[list[int]]) -> tuple[str, list[str]]:
    order: list[str] = []
    with tempfile.TemporaryDirectory() as home:
        url = f"sqlite:///{Path(home) / 'b.db'}"
        upgrade(url)
        async with open_runtime(url, catalog=Catalog([_flow(needs, order)]), upgrade=False) as rt:
            run = await rt.lifecycle.create_run(RunRequest(flow="prop"))
            await rt.worker(WorkerSettings(concurrency=4, lease_s=5, poll_s=0.05)).run(until_idle=True)
            final = await rt.lifecycle.get_run(run["id"])
    return final["status"], order


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_every_step_runs_once_after_its_needs(needs: list[list[int]]) -> None:
    status, order = asyncio.run(_run(needs))
    assert status == "succeeded"
    assert sorted(order) == sorted(f"s{i}" for i in range(len(needs)))  # each exactly once
    position = {key: i for i, key in enumerate(order)}
    for i, wanted in enumerate(needs):
        for j in wanted:
            assert position[f"s{j}"] < position[f"s{i}"], (needs, order)
