"""Race: several worker processes share 500 ready steps; no step is ever completed twice."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import func, select

from baton.engine.lifecycle import RunRequest
from baton.flows.catalog import Catalog
from baton.runtime import open_runtime
from baton.store.schema import events, runs, steps, workers

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

TOTAL_STEPS = 500
RUNS = TOTAL_STEPS // procflows.RACE_WIDTH


@pytest.mark.parametrize(
    ("backend", "n_workers"),
    [("sqlite", 2), pytest.param("postgres", 3, marks=pytest.mark.postgres)],
)
async def test_workers_never_complete_a_step_twice(
    backend: str, n_workers: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url: str = request.getfixturevalue(f"{backend}_url")
    ledger = tmp_path / "ledger.txt"
    procs = []
    async with open_runtime(url, catalog=Catalog(procflows.FLOWS), upgrade=False) as rt:
        try:
            for i in range(n_workers):
                procs.append(
                    support.spawn_worker(
                        url,
                        procflows.PATH,
                        concurrency=8,
                        lease=10,
                        poll=0.05,
                        reaper=1,
                        log=tmp_path / f"w{i}.log",
                    )
                )

            async def all_registered() -> bool:
                count = await rt.db.read(
                    lambda c: c.execute(select(func.count()).select_from(workers)).scalar_one()
                )
                if any(p.poll() is not None for p in procs):
                    raise AssertionError("a worker exited: " + _logs(tmp_path))
                return count == n_workers

            # Every worker is polling before the first step exists, so they all race for them.
            await support.wait_until(all_registered, timeout=60, what=f"{n_workers} workers to register")
            run_ids = []
            for i in range(RUNS):
                created = await rt.lifecycle.create_run(
                    RunRequest("proc_wide", inputs={"ledger": str(ledger)}, concurrency_key=f"race-{i}")
                )
                run_ids.append(created["id"])

            async def all_finished() -> bool:
                statuses = await rt.db.read(lambda c: list(c.execute(select(runs.c.status)).scalars()))
                if any(p.poll() is not None for p in procs):
                    raise AssertionError("a worker exited: " + _logs(tmp_path))
                return all(s in ("succeeded", "failed", "cancelled") for s in statuses)

            await support.wait_until(all_finished, timeout=90, interval=0.2, what=f"{RUNS} runs to finish")
        finally:
            codes = [support.stop_worker(p) for p in procs]
        run_rows = await rt.db.read(lambda c: list(c.execute(select(runs.c.id, runs.c.status))))
        step_rows = await rt.db.read(
            lambda c: list(c.execute(select(steps.c.run_id, steps.c.key, steps.c.status, steps.c.attempt)))
        )
        event_rows = await rt.db.read(
            lambda c: list(
                c.execute(select(events.c.run_id, events.c.step_key, events.c.type, events.c.attempt))
            )
        )

    assert codes == [0] * n_workers, _logs(tmp_path)
    assert {r.id for r in run_rows} == set(run_ids)
    assert Counter(r.status for r in run_rows) == {"succeeded": RUNS}

    # The ledger: each of the 500 steps executed exactly once, by one of the workers.
    lines = procflows.read_ledger(ledger)
    executions = Counter((run_id, key) for run_id, key, _, _ in lines)
    twice = {k: n for k, n in executions.items() if n > 1}
    assert not twice, f"steps executed more than once: {twice}"
    assert len(executions) == TOTAL_STEPS
    retried = sorted((run_id, key) for run_id, key, attempt, _ in lines if attempt != 1)
    assert not retried, f"steps that ran as a later attempt: {retried}\n{_logs(tmp_path)}"
    worker_pids = {p.pid for p in procs}
    ran_on = Counter(pid for *_, pid in lines)
    assert set(ran_on) <= worker_pids
    assert len(ran_on) >= 2, f"only one worker ran steps ({dict(ran_on)}): the workers did not race"

    # The store: every step succeeded on its first attempt, with exactly one recorded completion.
    assert len(step_rows) == TOTAL_STEPS
    assert {(s.status, s.attempt) for s in step_rows} == {("succeeded", 1)}
    completions = Counter((e.run_id, e.step_key) for e in event_rows if e.type == "step.succeeded")
    assert len(completions) == TOTAL_STEPS and set(completions.values()) == {1}
    starts = Counter((e.run_id, e.step_key) for e in event_rows if e.type == "step.started")
    assert len(starts) == TOTAL_STEPS and set(starts.values()) == {1}
    assert not [
        e for e in event_rows if e.type in ("step.stale_result", "step.lease_expired", "step.retrying")
    ]


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("w*.log")))
