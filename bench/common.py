"""Shared helpers of the benchmarks: figures with targets, JSON results, servers, databases, the machine.

Every bench prints each figure as one line, `name: value unit (target <= X): PASS|MISS`, and writes
the same figures to `bench/results/NAME.json` (NAME-quick.json in --quick mode), which
`bench/report.py` turns into the Markdown table of docs/performance.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG_URL = os.environ.get("BATON_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


# --- figures ------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured number and, when the issue sets one, its target."""

    name: str
    value: float
    unit: str
    #: the bound the value must meet, and whether it is a maximum ("<=") or a minimum (">=")
    target: float | None = None
    op: str = "<="
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None or self.value != self.value:  # no target, or NaN
            return "" if self.target is None else "MISS"
        ok = self.value <= self.target if self.op == "<=" else self.value >= self.target
        return "PASS" if ok else "MISS"

    def line(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        target = f" (target {self.op} {_fmt(self.target)}{unit})" if self.target is not None else ""
        verdict = f": {self.verdict}" if self.verdict else ""
        note = f"  [{self.note}]" if self.note else ""
        return f"{self.name}: {_fmt(self.value)}{unit}{target}{verdict}{note}"


def _fmt(value: float) -> str:
    if value != value:
        return "n/a"
    if value == int(value) and abs(value) >= 10:
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"


@dataclass
class Results:
    """The figures of one bench run, printed as they come and saved as JSON at the end.

    Made at the start of a bench: a full-size one waits there for a quiet machine
    (`wait_for_quiet`), so that every bench gets the wait without each calling it.
    """

    bench: str
    quick: bool
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not self.quick:
            wait_for_quiet(self)

    def add(
        self,
        name: str,
        value: float,
        unit: str,
        target: float | None = None,
        op: str = "<=",
        note: str = "",
    ) -> Figure:
        figure = Figure(name, float(value), unit, target, op, note)
        self.figures.append(figure)
        print(figure.line(), flush=True)
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(text, flush=True)

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.bench}{'-quick' if self.quick else ''}.json"
        document = {
            "bench": self.bench,
            "quick": self.quick,
            "started": self.started,
            "seconds": round(time.time() - self.started, 1),
            "load_average": os.getloadavg(),
            "figures": [asdict(f) | {"verdict": f.verdict} for f in self.figures],
            "notes": self.notes,
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        return path

    @property
    def all_pass(self) -> bool:
        return all(f.verdict != "MISS" for f in self.figures)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 < q < 1) of the values, interpolated; NaN when there are none."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=1000, method="inclusive")[max(0, round(q * 1000) - 1)]


# --- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB (from /proc/PID/status)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def rss_mib(pid: int) -> float:
    return memory_kib(pid)["VmRSS"] / 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_env(home: Path) -> dict[str, str]:
    # The per-token rate limit would measure itself: the benches ask for more than a person would.
    return {
        **os.environ,
        "BATON_HOME": str(home),
        "BATON_SECRET": "bench-secret",
        "BATON_RATE_PER_S": "1000000",
        "BATON_RATE_BURST": "1000000",
        "BATON_MAX_STREAMS_PER_TOKEN": "100000",
    }


def start_server(
    url: str,
    home: Path,
    *,
    workers: int = 1,
    concurrency: int = 8,
    flows: Path | None = None,
    extra: Sequence[str] = (),
    timeout: float = 60.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """`baton serve` on a free loopback port, in its own session; returns it once /healthz answers."""
    port = free_port()
    args = [
        sys.executable, "-m", "baton", "serve",
        "--database", url,
        "--port", str(port),
        "--workers", str(workers),
        "--concurrency", str(concurrency),
    ]  # fmt: skip
    if flows is not None:
        args += ["--flows", str(flows)]
    args += list(extra)
    with open(home / "server.log", "ab") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=bench_env(home), start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"baton serve exited early:\n{(home / 'server.log').read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return process, base
        time.sleep(0.02)
    stop_process(process)
    raise SystemExit(f"baton serve did not become healthy:\n{(home / 'server.log').read_text()[-4000:]}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process's group, SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@contextlib.contextmanager
def server(url: str, home: Path, **kwargs: Any) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    process, base = start_server(url, home, **kwargs)
    try:
        yield process, base
    finally:
        stop_process(process)


async def make_tokens(url: str, user: str, projects: Sequence[str]) -> list[str]:
    """A member token per project for `user` (made, with the projects, if new)."""
    from baton.api.bootstrap import create_token_for
    from baton.runtime import open_runtime

    async with open_runtime(url, [], upgrade=None) as rt:
        return [
            await rt.db.write(create_token_for, user, project_id=p, name="bench", role="member")
            for p in projects
        ]


# --- databases ----------------------------------------------------------------------------------


def admin_dsn() -> str:
    return PG_URL.replace("postgresql+psycopg://", "postgresql://")


def pg_url_of(database: str) -> str:
    return admin_dsn().rpartition("/")[0] + "/" + database


def pg_problem() -> str | None:
    """None when the PostgreSQL server answers, else why not."""
    try:
        with psycopg.connect(admin_dsn(), connect_timeout=3):
            return None
    except psycopg.Error as error:
        return (str(error).strip().splitlines() or [type(error).__name__])[0]


def fresh_pg_database(name: str) -> str:
    """Drop and create `name` on the bench server and migrate it; returns its URL."""
    from baton.store.migrate import upgrade

    with psycopg.connect(admin_dsn(), autocommit=True, connect_timeout=3) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    url = pg_url_of(name)
    upgrade(url)
    return url


def drop_pg_database(name: str) -> None:
    with psycopg.connect(admin_dsn(), autocommit=True, connect_timeout=3) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def schema_key() -> str:
    """The head revision plus a digest of every migration file: a seeded cache is valid for one."""
    from baton.store.migrate import MIGRATIONS, head_revision

    digest = hashlib.sha256()
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return f"{head_revision()}_{digest.hexdigest()[:8]}"


# --- the machine --------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """Cores, RAM, CPU model, Python, SQLite and PostgreSQL versions, and the load right now."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        ram = f"{kib / 1024 / 1024:.1f} GiB"
    pg = "unreachable"
    with contextlib.suppress(psycopg.Error):
        with psycopg.connect(admin_dsn(), connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            pg = str(row[0]) if row else "unknown"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return {
        "cores": str(os.cpu_count()),
        "ram": ram,
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg,
        "os": f"{platform.system()} {platform.release()}",
        "load": load,
    }


#: a full bench starts once the 1-minute load average is below this share of the cores...
QUIET_LOAD_PER_CORE = 1.0
#: ...or after this many seconds of waiting for it
QUIET_WAIT_MAX_S = 150.0


def wait_for_quiet(results: Results) -> None:
    """Let what ran before (the previous bench's processes, its database's clean-up) die down.

    `make bench` runs the benches back to back, and the latency tails of one measured right
    after the throughput bench (load average 7) were twice those of the same code on a quiet
    machine.
    """
    below = QUIET_LOAD_PER_CORE * (os.cpu_count() or 1)
    started = time.monotonic()
    while os.getloadavg()[0] > below and time.monotonic() - started < QUIET_WAIT_MAX_S:
        time.sleep(2)
    waited = time.monotonic() - started
    if waited >= 2:
        results.note(f"waited {waited:.0f} s for a quieter machine: load average {os.getloadavg()[0]:.1f}")


def print_load(results: Results) -> None:
    one, five, _ = os.getloadavg()
    results.note(f"machine: {os.cpu_count()} CPUs, load average {one:.1f} (5 min {five:.1f})")
