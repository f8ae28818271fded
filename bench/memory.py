"""Memory benchmark: an idle `baton serve`, and what 1,000 runs waiting for a human answer cost.

    python bench/memory.py [--quick] [--runs N]

1. `baton serve` (in-process worker, concurrency 8, lease 3 s so heartbeats come every second)
   on a new SQLite file: its resident memory (VmRSS) once healthy and settled 1 s: the idle RSS.
2. --runs runs (default 1,000; 100 with --quick) of a flow `prepare` (code) -> `approve` (input)
   -> `finish` are created through the engine from this process; the server's worker runs each
   `prepare`, then every run waits for its answer. Once all wait and the worker has heartbeated
   since: the server's RSS, steps holding a lease or running, and the worker's in-flight count
   (the worker slots in use, from its `workers` row; `GET /v1/workers` shows the same).
3. The server stops; a worker in this process opens the same database with its 1,000 waiting
   runs: its in-flight steps and its asyncio tasks (a step's task is named `baton-step-KEY`).

Targets (issue 7, item 6): idle `baton serve` at most 120 MB RSS; waiting runs hold no worker
slot (0 in flight, 0 leases) and no task.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from common import Results, print_load, rss_mib, server
from sqlalchemy import func, select

from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.runtime import open_runtime
from baton.store.schema import runs, steps, workers

TARGET_IDLE_MIB = 120.0

FLOWS = '''"""Flows of bench/memory.py: a run that prepares, then waits for a person."""

from baton.flows.spec import Flow

asks = Flow("bench_asks", title="Prepare, then wait for an answer")


@asks.step()
async def prepare(ctx):
    return {"ready": True}


asks.input("approve", prompt="Go on?", schema={"type": "object"}, needs=["prepare"])


@asks.step(needs=["approve"])
async def finish(ctx):
    return ctx.upstream["approve"]
'''


def _state(conn: object) -> dict[str, float]:
    execute = conn.execute  # type: ignore[attr-defined]
    count = func.count()
    return {
        "waiting": execute(select(count).where(runs.c.status == "waiting_for_input")).scalar_one(),
        "leased": execute(select(count).where(steps.c.lease_token.is_not(None))).scalar_one(),
        "running": execute(select(count).where(steps.c.status == "running")).scalar_one(),
        "in_flight": execute(select(func.coalesce(func.sum(workers.c.in_flight), 0))).scalar_one(),
        "last_beat": execute(select(func.max(workers.c.heartbeat_at))).scalar_one() or 0.0,
        "now": time.time(),
    }


async def create_waiting_runs(url: str, flows: Path, count: int) -> None:
    async with open_runtime(url, [str(flows)], upgrade=False) as rt:
        for _ in range(count):
            await rt.lifecycle.create_run(
                RunRequest("bench_asks", concurrency_key="bench", concurrency_limit=count + 1)
            )


async def wait_all_waiting(url: str, count: int, timeout: float) -> dict[str, float]:
    """Poll until every run waits and a heartbeat came after that; the state then."""
    async with open_runtime(url, [], upgrade=False) as rt:
        deadline = time.monotonic() + timeout
        settled_at: float | None = None
        state: dict[str, float] = {"waiting": 0}
        while time.monotonic() < deadline:
            state = await rt.db.read(_state)
            if state["waiting"] >= count and settled_at is None:
                settled_at = time.time()
            if settled_at is not None and state["last_beat"] > settled_at + 0.1:
                return state
            await asyncio.sleep(0.2)
        raise SystemExit(f"after {timeout:g} s only {state['waiting']:.0f} of {count} runs wait")


async def in_process_worker(url: str, flows: Path) -> tuple[int, int, int]:
    """Open a worker over the waiting runs: (its in-flight steps, step tasks, all tasks)."""
    async with open_runtime(url, [str(flows)], upgrade=False) as rt:
        worker = rt.worker(WorkerSettings(concurrency=8, lease_s=3.0))
        task = asyncio.create_task(worker.run(), name="bench-worker")
        try:
            await asyncio.sleep(2.0)  # reconcile, claim loop, a heartbeat
            tasks = [t for t in asyncio.all_tasks() if not t.done()]
            step_tasks = [t for t in tasks if t.get_name().startswith("baton-step-")]
            return len(worker.in_flight), len(step_tasks), len(tasks)
        finally:
            worker.stop()
            await task


def main(args: argparse.Namespace) -> int:
    count = args.runs or (100 if args.quick else 1000)
    results = Results("memory", args.quick)
    with tempfile.TemporaryDirectory(prefix="baton-bench-memory-") as tmp:
        home = Path(tmp)
        flows = home / "bench_memory_flows.py"
        flows.write_text(FLOWS)
        url = f"sqlite:///{home / 'bench.db'}"
        with server(url, home, workers=1, concurrency=8, flows=flows, extra=["--lease", "3"]) as (proc, _):
            time.sleep(1.0)
            idle = rss_mib(proc.pid)
            started = time.monotonic()
            asyncio.run(create_waiting_runs(url, flows, count))
            state = asyncio.run(wait_all_waiting(url, count, timeout=60 + count * 0.1))
            settle = time.monotonic() - started
            loaded = rss_mib(proc.pid)
        results.add("idle baton serve RSS (SQLite, 1 worker)", idle, "MiB", TARGET_IDLE_MIB)
        results.add(f"baton serve RSS with {count:,} runs waiting for input", loaded, "MiB")
        results.add("RSS per waiting run", (loaded - idle) * 1024 / count, "KiB")
        results.add(f"worker slots in use with {count:,} waiting runs", state["in_flight"], "slots", 0)
        results.add(f"step leases held with {count:,} waiting runs", state["leased"], "leases", 0)
        results.add(f"steps running with {count:,} waiting runs", state["running"], "steps", 0)
        in_flight, step_tasks, all_tasks = asyncio.run(in_process_worker(url, flows))
        results.add(f"worker step tasks with {count:,} waiting runs (in-process)", step_tasks, "tasks", 0)
        results.add(f"worker in-flight steps with {count:,} waiting runs (in-process)", in_flight, "steps", 0)
        results.note(
            f"{count:,} runs created and waiting in {settle:.1f} s; the in-process worker's loop "
            f"had {all_tasks} asyncio tasks in all (its own side tasks and this bench's)"
        )
    print_load(results)
    results.save()
    return 0 if results.all_pass else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 waiting runs (seconds)")
    parser.add_argument("--runs", type=int, default=0, help="runs left waiting for input")
    sys.exit(main(parser.parse_args()))
