"""R5 stuck-run detection: no run stays non-terminal without an owner for longer than the bound.

Stranding points, K runs each, one after another in one scenario with three worker processes:
  run      SIGKILL the worker running K steps                               bound: lease + reaper + 1 s
  cancel   SIGKILL a worker mid-step and a second reaper host, then cancel  bound: 2 x (reaper hosts killed)
  claim    a worker dies right after committing its claims (failpoint after_claim_commit:always); the
           claimed steps are those of K failed runs just resumed, so this is also "kill during resume"
  input    K runs wait for an answer that never comes, past the request's deadline
  outage   every worker killed for a while (PR 3 s, nightly 10 s), then one restarted   bound from restart

Figures: the worst resolution time per point (stranding to requeued/failed/cancelled, on the
database clock, which is this machine's clock for both backends). Pass: each within its bound, and
the checker (doctor's "expired lease, no live owner" and the rest) clean at the end.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from baton.doctor import read_only_connection
from baton.engine.lifecycle import Lifecycle
from baton.flows.catalog import Catalog
from baton.runtime import open_runtime
from tests.reliability.harness import faults, ledgers
from tests.reliability.harness.flows import FLOWS, INPUT_TIMEOUT_S
from tests.reliability.harness.processes import (
    LEASE_S,
    REAPER_S,
    Proc,
    Scenario,
    create_runs,
    wait_terminal,
    wait_until,
)
from tests.reliability.tier import size

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

BOUND_S = LEASE_S + REAPER_S + 1.0


def first_events(url: str, run_ids: list[str], kind: str) -> dict[str, float]:
    """Per run, when its first event of `kind` was recorded (database clock)."""
    wanted = set(run_ids)
    with read_only_connection(url) as conn:
        rows = conn.execute(
            text("SELECT run_id, MIN(created_at) FROM events WHERE type = :kind GROUP BY run_id"),
            {"kind": kind},
        ).all()
    return {run_id: float(at) for run_id, at in rows if run_id in wanted}


def finished_at(url: str, run_ids: list[str]) -> dict[str, float]:
    wanted = set(run_ids)
    with read_only_connection(url) as conn:
        rows = conn.execute(text("SELECT id, finished_at FROM runs WHERE finished_at IS NOT NULL")).all()
    return {run_id: float(at) for run_id, at in rows if run_id in wanted}


async def started_in(sc: Scenario, proc: Proc, count: int, run_ids: list[str]) -> None:
    wanted = set(run_ids)

    def ready() -> bool:
        mine = {e.run for e in ledgers.read_executions(sc.dir) if e.phase == "start" and e.pid == proc.pid}
        return len(mine & wanted) >= count

    await wait_until(ready, timeout=60, interval=0.1, what=f"{count} steps to start in {proc.name}")


def worst(times: dict[str, float], since: float | dict[str, float], run_ids: list[str]) -> float:
    """The largest delay from `since` to each run's time; every run must have one."""
    missing = [r for r in run_ids if r not in times]
    assert not missing, f"never resolved: {missing}"
    starts = since if isinstance(since, dict) else dict.fromkeys(run_ids, since)
    return max(times[r] - starts[r] for r in run_ids)


async def test_stranded_runs_are_resolved_within_the_bound(database_url: str, tmp_path: Path) -> None:
    k = size(5, 20)
    figures: dict[str, float] = {}
    with Scenario(database_url, tmp_path) as sc:
        asking = await create_runs(database_url, "rel_input", k)
        flaky = await create_runs(database_url, "rel_flaky", k)

        # run: a worker dies holding K running steps; the others' reapers requeue them.
        holder = sc.worker("holder", concurrency=k)
        running = await create_runs(database_url, "rel_sleep", k, {"sleep_s": 0.2, "first_sleep_s": 30})
        await started_in(sc, holder, k, running)
        w2, w3 = sc.workers("w2", "w3")
        killed_at = time.time()
        faults.kill(holder.pid)
        await wait_terminal(database_url, running + asking + flaky, timeout=60)
        figures["run"] = worst(first_events(database_url, running, "step.lease_expired"), killed_at, running)

        # input: the requests expired INPUT_TIMEOUT_S after they were made; the reaper failed the runs.
        asked = first_events(database_url, asking, "input.requested")
        deadlines = {r: at + INPUT_TIMEOUT_S for r, at in asked.items()}
        figures["input"] = worst(finished_at(database_url, asking), deadlines, asking)

        # cancel: a worker and a second reaper host die; the runs are cancelled while nobody runs them.
        w2.stop()
        w3.stop()  # idle: each phase's holder must be the only one to claim its steps
        holder = sc.worker("holder2", concurrency=k)
        cancelling = await create_runs(database_url, "rel_sleep", k, {"sleep_s": 30})
        await started_in(sc, holder, k, cancelling)
        w2, w3 = sc.workers("w2", "w3")
        killed_at = time.time()
        faults.kill(holder.pid)
        faults.kill(w2.pid)
        async with open_runtime(database_url, catalog=Catalog(FLOWS), upgrade=False) as rt:
            lifecycle: Lifecycle = rt.lifecycle
            for run_id in cancelling:
                await lifecycle.cancel(run_id, reason="R5")
            statuses = await wait_terminal(database_url, cancelling, timeout=60)
            assert set(statuses.values()) == {"cancelled"}, statuses
            figures["cancel"] = worst(finished_at(database_url, cancelling), killed_at, cancelling)

            # claim / resume: no worker is left; K failed runs are resumed, and a worker that dies
            # right after its claim commits takes their steps; a fresh worker must reclaim them.
            faults.kill(w3.pid)
            w3.popen.wait(10)
            for run_id in flaky:
                await lifecycle.resume(run_id)
        crasher = sc.worker("crasher", concurrency=k, failpoint="after_claim_commit:always", wait=False)
        await wait_until(lambda: not crasher.alive(), timeout=30, what="the crasher to die at its claim")
        crashed_at = time.time()
        w3 = sc.worker("w3-again")
        statuses = await wait_terminal(database_url, flaky, timeout=60)
        assert set(statuses.values()) == {"succeeded"}, statuses
        resumed = first_events(database_url, flaky, "step.lease_expired")
        figures["claim+resume"] = worst(resumed, crashed_at, flaky)

        # outage: every worker gone with steps in flight; one comes back later.
        w3.stop()
        holder = sc.worker("holder3", concurrency=k)
        outage = await create_runs(database_url, "rel_sleep", k, {"sleep_s": 0.2, "first_sleep_s": 30})
        await started_in(sc, holder, k, outage)
        faults.kill(holder.pid)
        await asyncio.sleep(size(3, 10))  # the outage itself, not an oracle
        # The bound runs from the moment a worker (and so a reaper) is back: how long a Python
        # process takes to start on a loaded CI machine is not the reaper's latency.
        spawned_at = time.time()
        sc.worker("after-outage")
        restarted_at = time.time()
        await wait_terminal(database_url, outage, timeout=60)
        resolved = first_events(database_url, outage, "step.lease_expired")
        figures["outage"] = max(0.0, worst(resolved, restarted_at, outage))
        figures["outage worker start-up"] = restarted_at - spawned_at

        verdict = sc.check(running + asking + flaky + cancelling + outage, require_terminal=True)
    shown = ", ".join(f"{point} {seconds:.2f} s" for point, seconds in figures.items())
    print(
        f"R5 {database_url.split(':')[0]}: worst resolution per point ({k} each): {shown}; "
        f"bound {BOUND_S:g} s"
    )
    print(f"R5 figures: {verdict.figures}")
    for point, seconds in figures.items():
        if point.endswith("start-up"):
            continue  # reported, not bounded
        # With reaper hosts killed the contract allows twice the bound.
        bound = 2 * BOUND_S if point == "cancel" else BOUND_S
        assert seconds <= bound, f"{point}: stranded runs took {seconds:.2f} s to resolve (bound {bound:g} s)"
