"""Crash: a worker process SIGKILLed in the middle of a step; a second worker finishes the run.

Every step that had succeeded is kept and not re-run, the killed step runs exactly once more, the
reaper records `step.lease_expired`, and the killed worker's child process does not outlive it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path
from types import ModuleType

import pytest

from baton.engine.lifecycle import RunRequest
from baton.flows.catalog import Catalog
from baton.runtime import open_runtime
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

pytestmark = pytest.mark.slow

LEASE_S = 3.0  # heartbeat every lease/3; roomy enough for a loaded 2-core machine
REAPER_S = 0.5
STEP_S = 3.0  # the second attempt of the middle step
KILLED_STEP_S = 60.0  # the first attempt: its child would live this long without the parent-death signal


def _first_pid(path: Path) -> int | None:
    if not path.exists():
        return None
    words = path.read_text().split()
    return int(words[0]) if words else None


async def test_sigkilled_worker_step_runs_again_once(database_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    pid_file = tmp_path / "child.pids"
    workers = []
    async with open_runtime(database_url, catalog=Catalog(procflows.FLOWS), upgrade=False) as rt:
        run = await rt.lifecycle.create_run(
            RunRequest(
                "proc_chain",
                inputs={
                    "ledger": str(ledger),
                    "pid_file": str(pid_file),
                    "sleep_s": STEP_S,
                    "first_sleep_s": KILLED_STEP_S,
                },
                concurrency_limit=1000,
            )
        )
        run_id = run["id"]
        try:
            worker_a = support.spawn_worker(
                database_url, procflows.PATH, lease=LEASE_S, poll=0.2, reaper=REAPER_S, log=tmp_path / "a.log"
            )
            workers.append(worker_a)
            # Step 2 has started once its child process has written its pid.
            child = await support.wait_until(
                lambda: _first_pid(pid_file), timeout=60, what="step `second` to start its child in worker A"
            )
            keys = [(key, attempt) for _, key, attempt, _ in procflows.read_ledger(ledger)]
            assert keys == [("first", 1), ("second", 1)], keys
            assert worker_a.poll() is None, "worker A exited early: " + (tmp_path / "a.log").read_text()
            assert not support.pid_gone(child)

            os.kill(worker_a.pid, signal.SIGKILL)
            worker_a.wait(10)
            # The parent-death signal takes the step's child process down with the worker.
            await support.wait_until(
                lambda: support.pid_gone(child), timeout=5, what=f"child {child} of the killed worker to die"
            )

            worker_b = support.spawn_worker(
                database_url, procflows.PATH, lease=LEASE_S, poll=0.2, reaper=REAPER_S, log=tmp_path / "b.log"
            )
            workers.append(worker_b)

            async def finished() -> dict | None:
                current = await rt.lifecycle.get_run(run_id)
                return current if current["status"] in ("succeeded", "failed", "cancelled") else None

            final = await support.wait_until(
                finished, timeout=60, interval=0.1, what="the run to finish in worker B"
            )
        finally:
            for proc in workers:
                support.stop_worker(proc)
        events = await rt.db.read(events_after, run_id)

    assert final["status"] == "succeeded", (final["status_reason"], (tmp_path / "b.log").read_text())
    lines = procflows.read_ledger(ledger)
    executions = [(key, attempt) for _, key, attempt, _ in lines]
    assert executions == [("first", 1), ("second", 1), ("second", 2), ("third", 1)], executions
    pids = {key + str(attempt): pid for _, key, attempt, pid in lines}
    assert pids["first1"] == pids["second1"] == worker_a.pid
    assert pids["second2"] == pids["third1"] == worker_b.pid

    attempts = {s["key"]: (s["status"], s["attempt"]) for s in final["steps"]}
    assert attempts == {"first": ("succeeded", 1), "second": ("succeeded", 2), "third": ("succeeded", 1)}

    expired = [e for e in events if e.type == "step.lease_expired"]
    assert [(e.step_key, e.attempt) for e in expired] == [("second", 1)]
    assert "worker lost" in expired[0].payload["reason"]
    succeeded = [(e.step_key, e.attempt) for e in events if e.type == "step.succeeded"]
    assert succeeded == [("first", 1), ("second", 2), ("third", 1)]
    assert not [e for e in events if e.type == "step.stale_result"]
    # The second attempt also started a child; it finished normally and is gone too.
    assert all(support.pid_gone(int(pid)) for pid in pid_file.read_text().split())
