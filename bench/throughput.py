"""Throughput benchmark: 1,000 runs of a 10-step flow, on PostgreSQL with 4 worker processes and on SQLite.

    python bench/throughput.py [--quick] [--runs N] [--database sqlite|postgres|both]

The flow is a chain of ten code steps that do no work but append one line (run, step, attempt,
pid) to a log file. --runs runs (default 1,000; 100 with --quick) are created through the engine
first, with a concurrency limit above their number, so every run is running and its first step
queued; then the workers start:

* PostgreSQL (BATON_BENCH_POSTGRES_URL; a fresh database `baton_bench_tp`, dropped afterwards):
  4 `baton worker` processes, 8 slots each;
* SQLite (a temporary file): `baton serve --workers 1 --concurrency 8`, the in-process worker.

Printed, per database: steps per second (every step of every run / the time from the first
step's start to the last step's end, on the database clock); queue-to-start latency p50 and p99
(the `step.started` event's time minus the step's `step.queued` event's time), for every step
for the first steps (queued when the runs were made, so they wait behind the whole backlog) and
for steps 2..10 (queued by their predecessor's completion: the engine's hand-off; 0 when the
finishing step claims its successor in its completing transaction); and double claims: a step attempt started
twice (two `step.started` events) or a step run twice (two lines in the log), which must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import (
    Results,
    bench_env,
    drop_pg_database,
    fresh_pg_database,
    percentile,
    pg_problem,
    print_load,
    server,
    stop_process,
)
from sqlalchemy import func, select

from baton.engine.lifecycle import RunRequest
from baton.runtime import open_runtime
from baton.store.schema import events, runs, steps

PG_DATABASE = "baton_bench_tp"
STEPS = 10
PG_WORKERS = 4
SLOTS = 8

FLOWS = f'''"""Flows of bench/throughput.py: a chain of {STEPS} steps that only log that they ran."""

import os

from baton.flows.spec import Flow

chain = Flow("bench_tp", title="{STEPS} logging steps in a chain")


def _make(key):
    async def step(ctx):
        line = f"{{ctx.run_id}} {{ctx.step_key}} {{ctx.attempt}} {{os.getpid()}}\\n".encode()
        fd = os.open(ctx.inputs["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one O_APPEND write: lines of concurrent processes never mix
        finally:
            os.close(fd)
        return None

    step.__name__ = key
    return step


_previous = []
for _i in range({STEPS}):
    _key = f"s{{_i:02d}}"
    chain.step(_key, needs=_previous)(_make(_key))
    _previous = [_key]
'''


async def create_runs(url: str, flows: Path, log: Path, count: int) -> float:
    """Create the runs, 16 at a time; returns the seconds it took."""
    started = time.perf_counter()
    async with open_runtime(url, [str(flows)], upgrade=False) as rt:
        request = RunRequest(
            "bench_tp", inputs={"log": str(log)}, concurrency_key="bench", concurrency_limit=count + 1
        )
        for first in range(0, count, 16):
            await asyncio.gather(
                *(rt.lifecycle.create_run(request) for _ in range(first, min(count, first + 16)))
            )
    return time.perf_counter() - started


async def wait_done(url: str, count: int, timeout: float) -> None:
    async with open_runtime(url, [], upgrade=False) as rt:
        deadline = time.monotonic() + timeout
        query = select(func.count()).where(runs.c.status.in_(["succeeded", "failed", "cancelled"]))
        while time.monotonic() < deadline:
            done = await rt.db.read(lambda conn: conn.execute(query).scalar_one())
            if done >= count:
                return
            await asyncio.sleep(0.25)
        raise SystemExit(f"only {done} of {count} runs ended within {timeout:g} s")


async def measure(
    url: str, executions: Counter[tuple[str, ...]], label: str, results: Results, count: int
) -> None:
    async with open_runtime(url, [], upgrade=False) as rt:

        def read(conn: object) -> tuple[list[object], list[object], list[object]]:
            execute = conn.execute  # type: ignore[attr-defined]
            step_rows = execute(
                select(steps.c.run_id, steps.c.key, steps.c.status, steps.c.attempt,
                       steps.c.started_at, steps.c.finished_at)
            ).all()  # fmt: skip
            event_rows = execute(
                select(events.c.run_id, events.c.step_key, events.c.type, events.c.attempt,
                       events.c.created_at)
                .where(events.c.type.in_(["step.queued", "step.started"]))
                .order_by(events.c.run_id, events.c.seq)
            ).all()  # fmt: skip
            run_rows = execute(select(runs.c.status)).all()
            return step_rows, event_rows, run_rows

        step_rows, event_rows, run_rows = await rt.db.read(read)
    statuses = Counter(r.status for r in run_rows)  # type: ignore[attr-defined]
    total = len(step_rows)
    first_start = min(r.started_at for r in step_rows)  # type: ignore[attr-defined]
    last_end = max(r.finished_at for r in step_rows)  # type: ignore[attr-defined]
    queued_at: dict[tuple[str, str], float] = {}
    latency_first: list[float] = []
    latency_next: list[float] = []
    starts: Counter[tuple[str, str, int]] = Counter()
    for e in event_rows:
        key = (e.run_id, e.step_key)  # type: ignore[attr-defined]
        if e.type == "step.queued":  # type: ignore[attr-defined]
            queued_at[key] = e.created_at  # type: ignore[attr-defined]
        elif key in queued_at:
            starts[(*key, e.attempt)] += 1  # type: ignore[attr-defined]
            ms = (e.created_at - queued_at.pop(key)) * 1000  # type: ignore[attr-defined]
            first = e.step_key == "s00"  # type: ignore[attr-defined]
            (latency_first if first else latency_next).append(ms)
    twice_started = sum(1 for n in starts.values() if n > 1)
    twice_run = sum(1 for n in executions.values() if n > 1)
    results.add(
        f"{label}: steps per second ({count:,} runs x {STEPS} steps)",
        total / (last_end - first_start),
        "steps/s",
    )
    results.add(
        f"{label}: queue-to-start p50, first steps (behind the backlog)", percentile(latency_first, 0.5), "ms"
    )
    results.add(
        f"{label}: queue-to-start p99, first steps (behind the backlog)",
        percentile(latency_first, 0.99),
        "ms",
    )
    results.add(
        f"{label}: queue-to-start p50, steps 2..{STEPS} (hand-off)", percentile(latency_next, 0.5), "ms"
    )
    results.add(
        f"{label}: queue-to-start p99, steps 2..{STEPS} (hand-off)", percentile(latency_next, 0.99), "ms"
    )
    results.add(
        f"{label}: double claims (attempt started twice or step run twice)", twice_started + twice_run, "", 0
    )
    results.add(f"{label}: runs succeeded", statuses.get("succeeded", 0), "runs", count, op=">=")
    retried = sum(1 for r in step_rows if r.attempt > 1)  # type: ignore[attr-defined]
    results.note(
        f"{label}: {total:,} steps in {last_end - first_start:.1f} s, {len(executions):,} steps logged, "
        f"{retried} retried; runs by status {dict(statuses)}"
    )


def executions_of(log: Path) -> Counter[tuple[str, ...]]:
    """How many times each (run, step) ran, from the steps' own log lines."""
    return Counter(tuple(line.split()[:2]) for line in log.read_text().splitlines())


def bench_sqlite(home: Path, flows: Path, results: Results, count: int) -> None:
    url = f"sqlite:///{home / 'tp.db'}"
    log = home / "sqlite.log"
    log.touch()
    with server(url, home, workers=0, flows=flows):
        pass  # creates and migrates the file, with no worker to start on the runs yet
    took = asyncio.run(create_runs(url, flows, log, count))
    results.note(f"sqlite: {count:,} runs created in {took:.1f} s")
    with server(url, home, workers=1, concurrency=SLOTS, flows=flows):
        asyncio.run(wait_done(url, count, timeout=60 + count))
    asyncio.run(
        measure(url, executions_of(log), f"sqlite, in-process worker (concurrency {SLOTS})", results, count)
    )


def bench_postgres(home: Path, flows: Path, results: Results, count: int) -> None:
    problem = pg_problem()
    if problem is not None:
        results.note(f"postgresql: skipped, the server is not reachable ({problem})")
        return
    url = fresh_pg_database(PG_DATABASE)
    try:
        log = home / "postgres.log"
        log.touch()
        took = asyncio.run(create_runs(url, flows, log, count))
        results.note(f"postgresql: {count:,} runs created in {took:.1f} s")
        procs = []
        try:
            for _ in range(PG_WORKERS):
                args = [sys.executable, "-m", "baton", "worker", "--database", url, "--flows", str(flows)]
                args += ["--concurrency", str(SLOTS), "--log-level", "warning"]
                with open(home / "workers.log", "ab") as out:
                    procs.append(
                        subprocess.Popen(
                            args, stdout=out, stderr=subprocess.STDOUT, env=bench_env(home),
                            start_new_session=True,
                        )
                    )  # fmt: skip
            asyncio.run(wait_done(url, count, timeout=60 + count))
        finally:
            for proc in procs:
                with contextlib.suppress(Exception):
                    stop_process(proc)
        label = f"postgresql, {PG_WORKERS} worker processes x {SLOTS}"
        asyncio.run(measure(url, executions_of(log), label, results, count))
    finally:
        drop_pg_database(PG_DATABASE)


def main(args: argparse.Namespace) -> int:
    count = args.runs or (100 if args.quick else 1000)
    results = Results("throughput", args.quick)
    with tempfile.TemporaryDirectory(prefix="baton-bench-tp-") as tmp:
        home = Path(tmp)
        flows = home / "bench_tp_flows.py"
        flows.write_text(FLOWS)
        if args.database in ("postgres", "both"):
            bench_postgres(home, flows, results, count)
        if args.database in ("sqlite", "both"):
            bench_sqlite(home, flows, results, count)
    print_load(results)
    results.save()
    return 0 if results.all_pass else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 runs (seconds)")
    parser.add_argument("--runs", type=int, default=0, help="runs of the 10-step flow")
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    sys.exit(main(parser.parse_args()))
