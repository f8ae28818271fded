"""R10: retries reuse completed work, and a step that kills its worker every time is dead-lettered.

(a) runs fail at step 4 and are resumed: 0 re-executions of steps 1-3, step 4's attempt is +1, and a
retry with the same idempotency key twice creates one run. (b) a poison step that `os._exit`s its
worker: executions ≤ max_attempts, then the run fails with a `worker lost` reason, and the respawned
workers stop dying (no crash loop).
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from baton.engine.lifecycle import RunRequest
from baton.flows.catalog import Catalog
from baton.runtime import open_runtime
from tests.reliability import _r_support as rs
from tests.reliability import rflows
from tests.reliability.tier import size

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

FAILING = size(4, 100)  # RELIABILITY.md PR size 20; scaled to the budget
POISON = size(3, 20)


class Supervisor(threading.Thread):
    """Respawns any worker that exits, counting respawns, until stopped (what systemd would do)."""

    def __init__(self, workers: list[subprocess.Popen[bytes]], spawn: object) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.workers, self.spawn = workers, spawn
        self.respawns: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.1):
            for index, proc in enumerate(self.workers):
                if proc.poll() is not None:
                    self.respawns.append(time.monotonic())
                    self.workers[index] = self.spawn()  # type: ignore[operator]


async def test_r10_retry_and_dead_letter(database_url: str, tmp_path: Path) -> None:
    rs.seeded("R10")
    ledger = tmp_path / "executions.txt"
    logs = iter(range(10_000))

    def spawn() -> subprocess.Popen[bytes]:
        return rs.spawn_worker(database_url, tmp_path / f"w{next(logs)}.log", concurrency=8)

    workers = [spawn(), spawn()]
    supervisor = Supervisor(workers, spawn)
    supervisor.start()
    try:
        async with open_runtime(database_url, catalog=Catalog(rflows.FLOWS), upgrade=False) as rt:
            # (a) fail at step 4, resume through the lifecycle (what POST /v1/runs/{id}/resume calls)
            failing = [
                (
                    await rt.lifecycle.create_run(
                        RunRequest("r_fail4", inputs={"ledger": str(ledger), "n": i}, concurrency_limit=1000)
                    )
                )["id"]
                for i in range(FAILING)
            ]
            rs.wait_for(
                lambda: all(s == "failed" for s in rs.run_statuses(database_url, failing).values()),
                timeout=60,
                what="the step-4 runs to fail",
            )
            before = rs.attempts_per_step(rs.read_executions(ledger))
            for run_id in failing:
                await rt.lifecycle.resume(run_id, by="r10")
            rs.wait_for(
                lambda: all(s == "succeeded" for s in rs.run_statuses(database_url, failing).values()),
                timeout=60,
                what="the resumed runs to succeed",
            )
            # A retry with the same key, twice: one new run.
            first = await rt.lifecycle.retry(failing[0], by="r10", idempotency_key="r10-retry")
            again = await rt.lifecycle.retry(failing[0], by="r10", idempotency_key="r10-retry")
            retries = [first["id"], again["id"]]

            # (b) poison
            poison = [
                (
                    await rt.lifecycle.create_run(
                        RunRequest("r_poison", inputs={"ledger": str(ledger), "n": i}, concurrency_limit=1000)
                    )
                )["id"]
                for i in range(POISON)
            ]
            rs.wait_for(
                lambda: all(
                    s in rs.TERMINAL for s in rs.run_statuses(database_url, poison + retries[:1]).values()
                ),
                timeout=90,
                what="the poison runs to be dead-lettered",
            )
            settled = len(supervisor.respawns)
            await asyncio.sleep(
                rs.LEASE_S + 2 * rs.REAPER_S
            )  # no crash loop: nothing kills the workers any more
            respawns_after = len(supervisor.respawns) - settled
            final = {r: await rt.lifecycle.get_run(r) for r in poison}
    finally:
        supervisor.halt.set()
        supervisor.join(5)
        rs.stop_all(workers)

    executions = rs.read_executions(ledger)
    starts = rs.attempts_per_step(executions)
    pre_steps = Counter(starts[(r, s)] for r in failing for s in ("s1", "s2", "s3"))
    s4_attempts = {
        r.run_id: r.attempt
        for r in rs.query(database_url, "SELECT run_id, attempt FROM steps WHERE key = 's4'")
        if r.run_id in failing
    }
    poison_starts = [starts[(r, "die")] for r in poison]
    report = rs.audit(database_url, failing + poison + retries[:1])
    print(
        f"R10 {database_url.split(':')[0]}: failing={FAILING} pre-step executions per step={dict(pre_steps)} "
        f"s4_attempts={sorted(set(s4_attempts.values()))} retry_same_key_runs={len(set(retries))} "
        f"poison={POISON} poison_executions={poison_starts} max_attempts={rflows.POISON_ATTEMPTS} "
        f"worker_respawns={len(supervisor.respawns)} respawns_after_dead_letter={respawns_after} "
        f"before_resume={sum(before.values())}"
    )
    assert report.clean, report
    assert pre_steps == Counter({1: 3 * FAILING}), pre_steps  # steps 1-3 ran once each, never again
    assert set(s4_attempts.values()) == {2}, s4_attempts
    assert len(set(retries)) == 1, retries
    # A worker's death ends every attempt it held, so a step may die before its body ran.
    assert all(n <= rflows.POISON_ATTEMPTS for n in poison_starts), poison_starts
    for run in final.values():
        assert run["status"] == "failed", run["status"]
        [step] = run["steps"]
        assert "worker lost" in (step["error"] or ""), step["error"]
    assert respawns_after == 0
