"""Engine overhead benchmark: per-step cost of the durable run engine with no-op steps.

    python bench/engine.py [--repeat N] [--concurrency 8] [--no-postgres]
    python bench/engine.py --compare CHECKOUT [--rounds 3]   # this code against another's

With the in-process worker (concurrency 8) it runs two workloads of no-op async code steps:

* `chain n=200`: 200 steps, each needing the one before (fully serial: claim, run, record, queue next);
* `fanout n=100+1`: 100 independent steps and a join that needs all of them;

on SQLite (a temporary file, default settings: WAL, synchronous=FULL) and on PostgreSQL
(BATON_BENCH_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test: a fresh database
`baton_bench` is created on that server, migrated, and dropped afterwards; skipped with a message
when the server cannot be reached). Each case runs once as a warm-up, then `--repeat` times
(default 3); the median is printed, one line per case, for example

    sqlite chain n=200: 1.23 ms/step, 812 steps/s

ms/step is the wall time from `create_run` to the run's terminal status (the run row's
`created_at` .. `finished_at`, both on the database clock) divided by the number of steps. In
brackets: the same on this process's clock, and the CPU time this process spent per step (which a
busy machine disturbs less than wall time; PostgreSQL's own CPU is not in it).

Targets (issue 7): SQLite chain at most 0.4 ms per step, fan-out at most 0.3; PostgreSQL chain at
most 1.0, fan-out at most 0.4. Every event, lease and completion is durable: SQLite runs with its
default settings here (WAL, synchronous=FULL: each commit is fsynced, so an acknowledged step
survives a power loss, not only a crash of the process), PostgreSQL with synchronous_commit=on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy import select

from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store.migrate import upgrade
from baton.store.schema import runs

CHAIN_N = 200
FANOUT_N = 100
TARGETS_MS = {"sqlite chain": 0.4, "sqlite fanout": 0.3, "postgresql chain": 1.0, "postgresql fanout": 0.4}
PG_URL = os.environ.get("BATON_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_DATABASE = "baton_bench"


async def _noop() -> None:
    return None


def build_flows() -> list[Flow]:
    chain = Flow("bench_chain", title=f"{CHAIN_N} no-op steps in a chain")
    previous: list[str] = []
    for i in range(CHAIN_N):
        key = f"c{i:03d}"
        chain.step(key, needs=previous)(_noop)
        previous = [key]
    fan = Flow("bench_fanout", title=f"{FANOUT_N} no-op steps and a join")
    keys = [f"f{i:03d}" for i in range(FANOUT_N)]
    for key in keys:
        fan.step(key)(_noop)
    fan.step("join", needs=keys)(_noop)
    return [chain, fan]


CASES = [
    ("chain", "bench_chain", CHAIN_N, f"n={CHAIN_N}"),
    ("fanout", "bench_fanout", FANOUT_N + 1, f"n={FANOUT_N}+1"),
]


async def run_once(rt: Runtime, flow: str) -> tuple[float, float, float]:
    """One run to its end: seconds on the database clock, on this process's clock, of its CPU time."""
    started, cpu_started = time.perf_counter(), time.process_time()
    created = await rt.lifecycle.create_run(RunRequest(flow, concurrency_limit=1000, concurrency_key="bench"))
    run_id = created["id"]
    query = select(runs.c.status, runs.c.status_reason, runs.c.created_at, runs.c.finished_at).where(
        runs.c.id == run_id
    )
    while True:
        # A light poll of one row (not a snapshot of every step, which would load the worker): the
        # measured time comes from the run row's timestamps, so polling adds no latency to it.
        await asyncio.sleep(0.02)
        run = await rt.db.read(lambda conn: conn.execute(query).one())
        if run.status in ("succeeded", "failed", "cancelled"):
            break
    local, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if run.status != "succeeded":
        raise SystemExit(f"bench run {run_id} of {flow} ended {run.status}: {run.status_reason}")
    return float(run.finished_at) - float(run.created_at), local, cpu


async def bench_database(
    label: str, url: str, repeat: int, concurrency: int
) -> list[tuple[str, float, float]]:
    """Per case: its name, ms per step on the database clock, and this process's CPU ms per step."""
    results = []
    async with open_runtime(url, catalog=Catalog(build_flows()), upgrade=False) as rt:
        worker = rt.worker(WorkerSettings(concurrency=concurrency))
        task = asyncio.create_task(worker.run(), name="bench-worker")
        try:
            for case, flow, steps, shape in CASES:
                await run_once(rt, flow)  # warm-up
                samples = [await run_once(rt, flow) for _ in range(repeat)]
                seconds = statistics.median(s[0] for s in samples)
                local = statistics.median(s[1] for s in samples)
                cpu = statistics.median(s[2] for s in samples)
                ms = seconds * 1000 / steps
                line = f"{label} {case} {shape}: {ms:.2f} ms/step, {steps / seconds:.0f} steps/s"
                extra = (
                    f"local clock {local * 1000 / steps:.2f} ms/step, CPU {cpu * 1000 / steps:.2f} ms/step"
                )
                print(f"{line}  ({extra})", flush=True)
                results.append((f"{label} {case}", ms, cpu * 1000 / steps))
        finally:
            worker.stop()
            await task
    return results


def _admin_dsn() -> str:
    return PG_URL.replace("postgresql+psycopg://", "postgresql://")


def _pg_bench_url() -> str | None:
    """Create a fresh `baton_bench` database on the server and migrate it; None when unreachable."""
    try:
        with psycopg.connect(_admin_dsn(), autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {PG_DATABASE}")
    except psycopg.OperationalError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"postgresql: skipped, {PG_URL} is not reachable ({first})", flush=True)
        return None
    url = _admin_dsn().rpartition("/")[0] + "/" + PG_DATABASE
    upgrade(url)
    return url


def _drop_pg_bench() -> None:
    with psycopg.connect(_admin_dsn(), autocommit=True, connect_timeout=3) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")


async def main(args: argparse.Namespace) -> int:
    results: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        results += await bench_database("sqlite", url, args.repeat, args.concurrency)
    if not args.no_postgres:
        pg_url = _pg_bench_url()
        if pg_url is not None:
            try:
                results += await bench_database("postgresql", pg_url, args.repeat, args.concurrency)
            finally:
                _drop_pg_bench()
    for case, ms, _cpu in results:
        target = TARGETS_MS[case]
        verdict = "PASS" if ms <= target else "MISS"
        print(f"target: {case} <= {target:g} ms/step: {verdict} ({ms:.2f})", flush=True)
    if args.json:
        # The CPU figures too: less swayed than the wall clock by a machine whose speed drifts.
        figures = [(case, ms) for case, ms, _cpu in results] + [
            (f"{case} CPU", cpu) for case, _ms, cpu in results
        ]
        print(json.dumps(figures), flush=True)
    return 0


# --- --compare: this checkout against another, alternating ------------------------------------


def compare(args: argparse.Namespace) -> int:
    """Run this bench on this checkout's code and on another's, alternating, and print both.

    The machine's speed can drift by half within an hour, so two runs made minutes apart say
    little; rounds alternate (this, other; then other, this) so that a drift weighs on both.
    The other checkout's `src/` goes first on PYTHONPATH; the bench itself is this file.
    """
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, not {args.rounds}")
    other = Path(args.compare).resolve()
    if not (other / "src" / "baton").is_dir():
        raise SystemExit(
            f"--compare {args.compare}: no src/baton there; give the root of a Baton checkout, "
            "for example one made with `git worktree add /tmp/before <commit>`"
        )
    sides = {"this": Path(__file__).resolve().parent.parent / "src", "other": other / "src"}
    figures: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
    for round_ in range(args.rounds):
        for side in ("this", "other") if round_ % 2 == 0 else ("other", "this"):
            command = [sys.executable, __file__, "--json", "--repeat", str(args.repeat)]
            command += ["--concurrency", str(args.concurrency)]
            command += ["--no-postgres"] if args.no_postgres else []
            env = {**os.environ, "PYTHONPATH": str(sides[side])}
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"the bench on {sides[side]} failed:\n{done.stderr[-2000:]}")
            for case, ms in json.loads(done.stdout.strip().splitlines()[-1]):
                figures[side].setdefault(case, []).append(ms)
                print(f"round {round_ + 1}, {side} ({sides[side]}): {case} {ms:.2f} ms/step", flush=True)
    for line in comparison_lines(figures["this"], figures["other"]):
        print(line, flush=True)
    return 0


def comparison_lines(this: dict[str, list[float]], other: dict[str, list[float]]) -> list[str]:
    """One line per case: each side's figures and median, and how this side's median compares."""
    lines = []
    for case in this:
        mine, theirs = this[case], other.get(case, [])
        if not theirs:
            lines.append(f"{case}: this {_listed(mine)}; the other checkout has no figure")
            continue
        ours, before = statistics.median(mine), statistics.median(theirs)
        change = (ours - before) / before
        lines.append(f"{case}: this {_listed(mine)} against {_listed(theirs)} ms/step: {change:+.0%}")
    return lines


def _listed(values: list[float]) -> str:
    return f"{'/'.join(f'{v:.2f}' for v in values)} (median {statistics.median(values):.2f})"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per case (median printed)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--compare",
        metavar="CHECKOUT",
        help="another Baton checkout (its root): run the bench on both codes, alternating",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: runs of each side")
    parser.add_argument("--json", action="store_true", help="also print the figures as a JSON line")
    parsed = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(compare(parsed) if parsed.compare else asyncio.run(main(parsed)))
