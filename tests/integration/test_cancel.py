"""Cancel: a running step that would take 60 s is stopped within 2 s of `lifecycle.cancel()`.

Both an async sleep (the coroutine is cancelled) and a subprocess with a grandchild (the whole
process group is killed), run by an in-process worker and by a worker in another process, which
PostgreSQL wakes with NOTIFY and which on SQLite notices at its next heartbeat.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.runtime import Runtime, open_runtime
from baton.store.events import events_after

HERE = Path(__file__).resolve().parent


def _load(name: str) -> ModuleType:
    module_name = f"baton_itest_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, HERE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


procflows = _load("procflows")
support = _load("workerproc")

CANCEL_WITHIN_S = 2.0
FLOW_OF = {"async_sleep": "proc_sleep", "subprocess": "proc_subprocess"}


def _pids(path: Path) -> list[int] | None:
    if not path.exists():
        return None
    words = path.read_text().split()
    return [int(w) for w in words] if len(words) == 2 else None


async def _start_and_cancel(rt: Runtime, kind: str, tmp_path: Path, check_worker: Any = None) -> None:
    """Start a 60 s step, wait until it runs, cancel it; assert everything stopped within 2 s."""
    ledger = tmp_path / "ledger.txt"
    pid_file = tmp_path / "pids.txt"
    run = await rt.lifecycle.create_run(
        RunRequest(
            FLOW_OF[kind],
            inputs={"ledger": str(ledger), "pid_file": str(pid_file), "sleep_s": 60},
            concurrency_limit=1000,
        )
    )
    run_id = run["id"]

    def started() -> Any:
        if check_worker is not None:
            check_worker()
        if not procflows.read_ledger(ledger):
            return None
        return _pids(pid_file) if kind == "subprocess" else True

    started_value = await support.wait_until(started, timeout=60, what=f"the {kind} step to start")
    pids: list[int] = started_value if kind == "subprocess" else []
    assert all(not support.pid_gone(pid) for pid in pids)

    began = time.monotonic()
    await rt.lifecycle.cancel(run_id, reason="test", by="tester")

    async def stopped() -> dict[str, Any] | None:
        current = await rt.lifecycle.get_run(run_id)
        if current["status"] != "cancelled":
            return None
        return current if all(support.pid_gone(pid) for pid in pids) else None

    final = await support.wait_until(stopped, timeout=CANCEL_WITHIN_S + 10, interval=0.02, what="the cancel")
    elapsed = time.monotonic() - began
    print(f"{kind}: cancelled and stopped {elapsed:.3f} s after cancel()")
    assert elapsed <= CANCEL_WITHIN_S, f"the {kind} step took {elapsed:.2f} s to stop"

    assert final["status_reason"].startswith("cancelled by tester"), final["status_reason"]
    [step] = final["steps"]
    assert (step["status"], step["attempt"]) == ("cancelled", 1)
    assert len(procflows.read_ledger(ledger)) == 1
    types = [e.type for e in await rt.db.read(events_after, run_id)]
    assert "run.cancel_requested" in types and types[-1] == "run.cancelled"
    assert "step.cancelled" in types and "step.succeeded" not in types


@pytest.mark.parametrize("kind", ["async_sleep", "subprocess"])
async def test_cancel_stops_a_step_in_process(database_url: str, tmp_path: Path, kind: str) -> None:
    async with open_runtime(database_url, catalog=Catalog(procflows.FLOWS), upgrade=False) as rt:
        # The default poll (1 s) and heartbeat (10 s) are too slow: the in-process wake-up must do it.
        worker = rt.worker(WorkerSettings(concurrency=4, lease_s=30, poll_s=1.0))
        task = asyncio.create_task(worker.run())

        def alive() -> None:
            if task.done():
                task.result()
                raise AssertionError("the worker stopped")

        try:
            await _start_and_cancel(rt, kind, tmp_path, alive)
            alive()
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["async_sleep", "subprocess"])
async def test_cancel_stops_a_step_in_another_process(database_url: str, tmp_path: Path, kind: str) -> None:
    # PostgreSQL: poll and heartbeat are far slower than the bound, so only NOTIFY can meet it.
    # SQLite: no cross-process wake-up; the 0.5 s heartbeat (lease 1.5 s) notices the request.
    lease = 30.0 if database_url.startswith("postgresql") else 1.5
    proc = support.spawn_worker(
        database_url, procflows.PATH, lease=lease, poll=5.0, reaper=5.0, log=tmp_path / "w.log"
    )

    def alive() -> None:
        if proc.poll() is not None:
            raise AssertionError("the worker exited: " + (tmp_path / "w.log").read_text())

    try:
        async with open_runtime(database_url, catalog=Catalog(procflows.FLOWS), upgrade=False) as rt:
            await _start_and_cancel(rt, kind, tmp_path, alive)
        alive()
    finally:
        code = support.stop_worker(proc)
    assert code == 0, (tmp_path / "w.log").read_text()
