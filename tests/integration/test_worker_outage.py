"""A worker outlives its database's outage: it pauses claiming instead of dying (RELIABILITY.md R7).

Before the fix, the first claim that met a refused connection raised StoreUnavailable out of the
claim loop: `baton worker` exited and the in-process worker of `baton serve` stopped for good,
while the API went on answering.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import make_url
from tests.reliability.harness.proxy import FaultProxy

from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.runtime import open_runtime

pytestmark = pytest.mark.postgres


async def test_a_worker_survives_refused_connections_and_stops_cleanly(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = make_url(postgres_url)
    proxy = FaultProxy(target.host or "127.0.0.1", target.port or 5432).start()
    url = proxy.rewrite(postgres_url)
    async with open_runtime(url, catalog=Catalog([]), upgrade=False) as rt:
        worker = rt.worker(WorkerSettings(concurrency=1, lease_s=3.0, poll_s=0.1, reaper_s=0.5))
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.5)
        assert not task.done(), task
        proxy.stop()  # the database is gone: every new connection is refused
        await asyncio.sleep(2.0)
        assert not task.done(), f"the worker died with the database: {task.exception()!r}"
        assert any("claim loop paused" in r.getMessage() for r in caplog.records), "no outage seen"
        worker.stop()
        await asyncio.wait_for(task, 20)
