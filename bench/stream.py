"""Live-stream benchmark: many SSE clients following live runs on one `baton serve`.

    python bench/stream.py [--clients 200] [--runs 20] [--database sqlite|postgres]
                           [--events 100] [--interval 0.05] [--repeat 3]

It starts one `baton serve` (API and the in-process worker) in a subprocess on a loopback port,
over a temporary SQLite file (default) or a fresh PostgreSQL database (`--database postgres`:
BATON_BENCH_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test; a database
`baton_bench_stream` is created there, migrated, and dropped afterwards). It loads a flows file
written here: one step that logs an event and streams a delta chunk every `--interval` seconds
(default 50 ms), about `--events` times (default 100, so a run talks for about 5 s).

Each round creates `--runs` runs (default clients / 10), each in its own project so that the
default concurrency rule (one active run per project and user) lets them all run together, and
each with its own length (80 % to 120 % of `--events`), so that they do not all end in the same
instant. The flow asks for confirmation, so every run waits. Then `--clients` SSE clients
(asyncio + httpx + httpx-sse, one connection each; client i follows run i mod runs, so about ten
clients share a run) open `GET /v1/runs/{id}/stream`; once all are connected the runs are
confirmed, and each client reads its stream to the clean end that follows the run's final event.

Latency of one event at one client = the client's `time.time()` when the frame is parsed minus the
event's `timestamp` (the database clock of the transaction that wrote it; the same machine's clock).
Events committed before a client connected (replayed history) are counted but left out of the
latency figures. Every client also checks that it saw the run's events exactly once, in order,
with no gap in the dense `seq` (the SSE id).

It prints one line per round (events received, gaps, streams without a clean end, p50 / p99 / max
latency), then the medians over the `--repeat` rounds (default 3), the server's resident memory
(VmRSS, and its peak VmHWM, from /proc/PID/status) after the last round, the CPU the server and
the clients used, and the machine's load (the clients share the machine: on a busy one the tail
grows). For example, on a 2-CPU machine shared with other jobs (load average 3):

    sqlite round 1/3: 200 clients, 20 runs: 41,600 events received (200 replayed, 41,400 live),
      0 gaps or duplicates, 0 streams without a clean end; latency p50 2.6 ms, p99 32.4 ms, max 42.0 ms
    ...
    sqlite, 200 clients: latency commit -> receipt p50 2.5 ms, p99 33.3 ms (medians of 3 rounds), max 64.0 ms
    server RSS 120.2 MiB (peak 120.2 MiB); server CPU 53% of a core; clients CPU 33% of a core;
      machine: 2 CPUs, load average 3.0
    target: sqlite p99 <= 100 ms with 200 clients: meets (33.3)

When other jobs keep that machine at a load average of 4 to 5, p99 rises to 105-190 ms.

Target (issue 3): p99 at most 100 ms on SQLite with the in-process worker, 200 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import psycopg
from httpx_sse import aconnect_sse

from baton.api.bootstrap import create_token_for
from baton.runtime import open_runtime
from baton.store.migrate import upgrade

TARGET_P99_MS = 100.0
PG_URL = os.environ.get("BATON_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_DATABASE = "baton_bench_stream"
TERMINAL = {"run.succeeded", "run.failed", "run.cancelled"}

FLOWS = '''"""Flows of bench/stream.py: one step that talks steadily."""

import asyncio

from baton.flows.spec import Flow

talker = Flow("bench_stream", title="Talks steadily", require_confirmation=True)


@talker.step(timeout_s=600)
async def talk(ctx):
    count = int(ctx.inputs.get("count", 100))
    interval = float(ctx.inputs.get("interval_s", 0.05))
    for i in range(count):
        ctx.log(f"tick {i}")
        ctx.emit(f"chunk {i}\\n")
        await asyncio.sleep(interval)
    return count
'''


@dataclass
class ClientResult:
    run_id: str
    latencies: list[float] = field(default_factory=list)
    replayed: int = 0
    received: int = 0
    gaps: int = 0
    ended: bool = False
    error: str | None = None


# --- server -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(url: str, home: Path, flows: Path, concurrency: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "BATON_HOME": str(home), "BATON_SECRET": "bench-secret"}
    args = [
        sys.executable, "-m", "baton", "serve",
        "--database", url,
        "--port", str(port),
        "--workers", "1",
        "--concurrency", str(concurrency),
        "--flows", str(flows),
    ]  # fmt: skip
    with open(home / "server.log", "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"baton serve exited early:\n{(home / 'server.log').read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return process, base
        time.sleep(0.1)
    stop_server(process)
    raise SystemExit(f"baton serve did not become healthy:\n{(home / 'server.log').read_text()}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def make_tokens(url: str, projects: list[str]) -> list[str]:
    """A token per project for user `bench` (a member of every one of them, made if new)."""
    async with open_runtime(url, [], upgrade=None) as rt:
        return [
            await rt.db.write(create_token_for, "bench", project_id=p, name="bench", role="member")
            for p in projects
        ]


# --- clients ----------------------------------------------------------------------------------


async def follow(
    client: httpx.AsyncClient, token: str, result: ClientResult, connected: asyncio.Semaphore
) -> None:
    """Read one run's stream to its end, timing every frame committed after the connection opened."""
    expected = 1
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with aconnect_sse(client, "GET", f"/v1/runs/{result.run_id}/stream", headers=headers) as source:
            source.response.raise_for_status()
            opened = time.time()
            connected.release()
            async for frame in source.aiter_sse():
                if not frame.data:
                    continue
                now = time.time()
                event = json.loads(frame.data)
                result.received += 1
                if event["id"] != expected:
                    result.gaps += 1
                expected = event["id"] + 1
                committed = datetime.fromisoformat(event["timestamp"]).timestamp()
                if committed >= opened:
                    result.latencies.append(now - committed)
                else:
                    result.replayed += 1
                if event["type"] in TERMINAL:
                    result.ended = True
    except (httpx.HTTPError, ValueError, KeyError) as error:
        result.error = f"{type(error).__name__}: {error}"
        connected.release()


async def bench(
    base: str, tokens: list[str], projects: list[str], args: argparse.Namespace
) -> list[ClientResult]:
    limits = httpx.Limits(max_connections=args.clients + 50, max_keepalive_connections=args.clients + 50)
    timeout = httpx.Timeout(120.0, connect=30.0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        run_ids = []
        for i, (token, project) in enumerate(zip(tokens, projects, strict=True)):
            # Lengths from 80 % to 120 % of --events: live runs do not all end in the same instant.
            count = round(args.events * (0.8 + 0.4 * i / max(1, len(projects) - 1)))
            response = await client.post(
                "/v1/runs",
                headers={"Authorization": f"Bearer {token}"},
                json={
                    "flow": "bench_stream",
                    "project_id": project,
                    "inputs": {"count": count, "interval_s": args.interval},
                },
            )
            response.raise_for_status()
            run_ids.append(response.json()["id"])
        connected = asyncio.Semaphore(0)
        results = [ClientResult(run_ids[i % len(run_ids)]) for i in range(args.clients)]
        tasks = [
            asyncio.create_task(follow(client, tokens[i % len(tokens)], result, connected))
            for i, result in enumerate(results)
        ]
        for _ in range(args.clients):
            await asyncio.wait_for(connected.acquire(), 60)
        await asyncio.gather(
            *(
                client.post(f"/v1/runs/{run_id}/confirm", headers={"Authorization": f"Bearer {token}"})
                for run_id, token in zip(run_ids, tokens, strict=True)
            )
        )
        await asyncio.wait_for(asyncio.gather(*tasks), 1.2 * args.events * args.interval + 120)
        return results


# --- databases --------------------------------------------------------------------------------


def _admin_dsn() -> str:
    return PG_URL.replace("postgresql+psycopg://", "postgresql://")


def _pg_url() -> str:
    try:
        with psycopg.connect(_admin_dsn(), autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {PG_DATABASE}")
    except psycopg.OperationalError as error:
        raise SystemExit(f"PostgreSQL at {PG_URL} is not reachable: {error}") from None
    url = _admin_dsn().rpartition("/")[0] + "/" + PG_DATABASE
    upgrade(url)
    return url


def _drop_pg() -> None:
    with psycopg.connect(_admin_dsn(), autocommit=True, connect_timeout=3) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def report(label: str, results: list[ClientResult]) -> tuple[float, float, float, bool]:
    """Print one round; returns p50, p99 and max latency (ms) and whether every stream was sound."""
    latencies = sorted(s * 1000 for r in results for s in r.latencies)
    gaps = sum(r.gaps for r in results)
    unfinished = sum(1 for r in results if not r.ended)
    errors = sorted({r.error for r in results if r.error})
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = _percentile(latencies, 0.99) if len(latencies) > 1 else float("nan")
    top = latencies[-1] if latencies else float("nan")
    print(
        f"{label}: {sum(r.received for r in results):,} events received "
        f"({sum(r.replayed for r in results):,} replayed, {len(latencies):,} live), {gaps} gaps or "
        f"duplicates, {unfinished} streams without a clean end; latency p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, max {top:.1f} ms",
        flush=True,
    )
    for error in errors[:5]:
        print(f"  client error: {error}", flush=True)
    return p50, p99, top, bool(latencies) and not (gaps or unfinished or errors)


def main(args: argparse.Namespace) -> int:
    runs = args.runs or max(1, args.clients // 10)
    projects = [f"bench-{i:03d}" for i in range(runs)]
    rounds: list[tuple[float, float, float, bool]] = []
    with tempfile.TemporaryDirectory(prefix="baton-bench-stream-") as tmp:
        home = Path(tmp)
        flows = home / "bench_flows.py"
        flows.write_text(FLOWS)
        url = f"sqlite:///{home / 'bench.db'}" if args.database == "sqlite" else _pg_url()
        try:
            tokens = asyncio.run(make_tokens(url, projects))
            server, base = start_server(url, home, flows, concurrency=runs)
            try:
                cpu_before, wall_before = cpu_seconds(server.pid), time.monotonic()
                client_cpu_before = time.process_time()
                for i in range(args.repeat):
                    results = asyncio.run(bench(base, tokens, projects, args))
                    shape = f"{args.clients} clients, {runs} runs"
                    rounds.append(report(f"{args.database} round {i + 1}/{args.repeat}: {shape}", results))
                wall = time.monotonic() - wall_before
                server_cpu = (cpu_seconds(server.pid) - cpu_before) / wall
                client_cpu = (time.process_time() - client_cpu_before) / wall
                memory = memory_kib(server.pid)
                load = os.getloadavg()[0]
            finally:
                stop_server(server)
        finally:
            if args.database == "postgres":
                _drop_pg()

    p50 = statistics.median(r[0] for r in rounds)
    p99 = statistics.median(r[1] for r in rounds)
    top = max(r[2] for r in rounds)
    print(
        f"{args.database}, {args.clients} clients: latency commit -> receipt p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms (medians of {len(rounds)} rounds), max {top:.1f} ms",
        flush=True,
    )
    print(
        f"server RSS {memory['VmRSS'] / 1024:.1f} MiB (peak {memory['VmHWM'] / 1024:.1f} MiB); "
        f"server CPU {server_cpu:.0%} of a core; clients CPU {client_cpu:.0%} of a core; "
        f"machine: {os.cpu_count()} CPUs, load average {load:.1f}",
        flush=True,
    )
    if args.database == "sqlite" and args.clients >= 200:
        verdict = "meets" if p99 <= TARGET_P99_MS else "MISSES"
        print(
            f"target: sqlite p99 <= {TARGET_P99_MS:g} ms with 200 clients: {verdict} ({p99:.1f})", flush=True
        )
    return 0 if all(r[3] for r in rounds) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200, help="concurrent SSE clients")
    parser.add_argument("--runs", type=int, default=0, help="live runs (default: clients / 10)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--events", type=int, default=100, help="log events per run (and as many deltas)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between a run's events")
    parser.add_argument("--repeat", type=int, default=3, help="rounds on the same server (medians printed)")
    sys.exit(main(parser.parse_args()))
