"""Private support for R1 and R6-R10: executions ledger, ledgered fake LLM, agents, procfs scans, audits.

The shared harness (tests/reliability/harness/) was not there when these tests were written; what
they need from it lives here, so that nothing in it is edited from two places.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from baton.store.database import sync_url
from tests.fakes.openai_server import FakeOpenAIServer, RecordedRequest, Reply
from tests.fakes.openai_server import text as text_reply

ROOT = Path(__file__).resolve().parents[2]
FAKE_AGENT = ROOT / "tests" / "fakes" / "fake_agent.py"
WORKERPROC = ROOT / "tests" / "integration" / "workerproc.py"
TERMINAL = ("succeeded", "failed", "cancelled")
#: RELIABILITY.md §4.1 test parameters: lease 3 s, heartbeat lease/3, reaper 0.5 s
LEASE_S = 3.0
REAPER_S = 0.5


# --- seed ------------------------------------------------------------------------------------------


def seeded(name: str) -> random.Random:
    """A Random seeded from BATON_RELIABILITY_SEED or at random; the seed is printed for replays."""
    raw = os.environ.get("BATON_RELIABILITY_SEED")
    seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    print(f"{name}: BATON_RELIABILITY_SEED={seed}")
    return random.Random(seed)


# --- executions ledger (written by the steps, in the worker processes) ------------------------------


def record(ctx: Any, phase: str) -> None:
    """Append `run step attempt phase pid t` to the run's `ledger` file: one O_APPEND write per line."""
    ledger = ctx.inputs.get("ledger")
    if not ledger:
        return
    line = f"{ctx.run_id} {ctx.step_key} {ctx.attempt} {phase} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Execution:
    run_id: str
    step: str
    attempt: int
    phase: str
    pid: int
    t: float


def read_executions(path: Path) -> list[Execution]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 6:  # a line cut by a SIGKILL mid-write cannot happen (one write), but be safe
            run_id, step, attempt, phase, pid, t = parts
            rows.append(Execution(run_id, step, int(attempt), phase, int(pid), float(t)))
    return rows


# --- fake LLM that never runs out of replies --------------------------------------------------------


class LedgerLLM(FakeOpenAIServer):
    """The scripted fake OpenAI server, answering every request: a short stream, or a slow one.

    A prompt containing SLOW gets `slow_chunks` chunks `slow_delay` s apart (R8's mid-stream cancel).
    Every request is in `requests` with its headers (the Idempotency-Key ledger) and arrival time.
    """

    def __init__(self, *, delay: float = 0.03, slow_chunks: int = 400, slow_delay: float = 0.05) -> None:
        super().__init__()
        self.delay = delay
        self.slow = text_reply(*(f"tok{i} " for i in range(slow_chunks)), delay=slow_delay)
        self.arrivals: list[float] = []

    def _record(self, request: RecordedRequest) -> Reply | None:
        with self._received:
            self.requests.append(request)
            self.arrivals.append(time.time())
            self._received.notify_all()
        if "SLOW" in request.text_of("user"):
            return self.slow
        return text_reply("fake ", "model ", "answer", delay=self.delay)

    def by_key(self) -> dict[str, list[float]]:
        """Arrival times of the requests per Idempotency-Key ("" when a request had none)."""
        out: dict[str, list[float]] = {}
        with self._lock:
            for request, t in zip(self.requests, self.arrivals, strict=True):
                out.setdefault(request.headers.get("idempotency-key", ""), []).append(t)
        return out


# --- CLI agents and the procfs scan -------------------------------------------------------------


def cli_agents_env(marker: str) -> str:
    """BATON_CLI_AGENTS for `rfake` (short, with a grandchild) and `rtrap` (long; it and its
    grandchildren trap SIGTERM; one escapes into its own session). Every process carries R_MARKER."""
    python = sys.executable
    agent = str(FAKE_AGENT)
    trap_script = (
        f'trap "" TERM; exec {python} {agent} --trap-term --grandchild --escapee --lines 2000 --delay 0.05'
    )
    return json.dumps(
        {
            "rfake": {
                "command": [python, agent, "--lines", "3", "--delay", "0.03", "--grandchild"],
                "env": {"R_MARKER": marker},
                "grace_s": 1.0,
            },
            "rtrap": {"command": ["sh", "-c", trap_script], "env": {"R_MARKER": marker}, "grace_s": 1.0},
        }
    )


def marked_pids(marker: str) -> list[int]:
    """Live processes whose environment holds R_MARKER=marker (zombies excluded)."""
    needle = f"R_MARKER={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state not in ("Z", "X"):
            found.append(int(entry))
    return found


def settle_orphans(marker: str, timeout: float = 5.0) -> None:
    """Give marked processes `timeout` s to go (a dying worker's agents get SIGKILL via PDEATHSIG)."""
    deadline = time.monotonic() + timeout
    while marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.1)


def kill_marked(marker: str) -> int:
    pids = marked_pids(marker)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


# --- worker processes -------------------------------------------------------------------------------


def spawn_worker(
    database_url: str, log: Path, *, concurrency: int = 4, lease: float = LEASE_S, poll: float = 0.2
) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        str(WORKERPROC),
        "--database",
        database_url,
        "--flows",
        str(Path(__file__).parent / "rflows.py"),
    ]
    args += [
        f"--concurrency={concurrency}",
        f"--lease={lease}",
        f"--poll={poll}",
        f"--reaper={REAPER_S}",
        "--drain=2",
    ]
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal the worker alone (its session's other members are its agents, which PDEATHSIG covers)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(proc)


def wait_for(check: Any, *, timeout: float, interval: float = 0.1, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Killer(threading.Thread):
    """SIGKILLs a random live worker every U(lo, hi) s and respawns it 0.5 s later, until stopped."""

    def __init__(
        self, rng: random.Random, workers: list[subprocess.Popen[bytes]], respawn: Any, lo: float, hi: float
    ) -> None:
        super().__init__(name="killer", daemon=True)
        self.rng, self.workers, self.respawn, self.lo, self.hi = rng, workers, respawn, lo, hi
        self.kills: list[tuple[float, int]] = []  # (wall time, pid)
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.halt.wait(self.rng.uniform(self.lo, self.hi)):
            with self.lock:
                index = self.rng.randrange(len(self.workers))
                victim = self.workers[index]
                self.kills.append((time.time(), victim.pid))
                kill_group(victim)
            if self.halt.wait(0.5):
                break
            with self.lock:
                self.workers[index] = self.respawn()


# --- database reads for the audits ------------------------------------------------------------------


@contextlib.contextmanager
def sync_engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(sync_url(database_url))
    try:
        yield engine
    finally:
        engine.dispose()


def query(database_url: str, sql: str, **params: Any) -> list[Any]:
    with sync_engine(database_url) as engine, engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def run_statuses(database_url: str, run_ids: Sequence[str]) -> dict[str, str]:
    rows = query(database_url, "SELECT id, status FROM runs")
    wanted = set(run_ids)
    return {r.id: r.status for r in rows if r.id in wanted}


@dataclass
class Audit:
    """The post-scenario checks every test ends with (RELIABILITY.md §4.1 "Checker")."""

    lost_runs: list[str]
    non_terminal: list[str]
    duplicate_effects: list[tuple[str, str, str, int]]
    event_gaps: list[str]
    live_leases_on_terminal: list[str]

    @property
    def clean(self) -> bool:
        return not (
            self.lost_runs
            or self.non_terminal
            or self.duplicate_effects
            or self.event_gaps
            or self.live_leases_on_terminal
        )


def audit(database_url: str, run_ids: Sequence[str]) -> Audit:
    """0 lost runs, all terminal, 0 duplicate committed effects (`effect` artifacts per step), dense
    per-run event sequences, and no terminal run with a step still holding a lease."""
    with sync_engine(database_url) as engine, engine.connect() as conn:
        status = {r.id: r.status for r in conn.execute(text("SELECT id, status FROM runs"))}
        dups = [
            (r.run_id, r.step_key, r.name, r.n)
            for r in conn.execute(
                text(
                    "SELECT run_id, step_key, name, count(*) AS n FROM artifacts WHERE name = 'effect' "
                    "GROUP BY run_id, step_key, name HAVING count(*) > 1"
                )
            )
        ]
        gaps = [
            r.run_id
            for r in conn.execute(
                text(
                    "SELECT run_id FROM events GROUP BY run_id "
                    "HAVING count(*) <> max(seq) OR min(seq) <> 1 OR count(DISTINCT seq) <> count(*)"
                )
            )
        ]
        leased = [
            r.run_id
            for r in conn.execute(
                text(
                    "SELECT DISTINCT s.run_id FROM steps s JOIN runs r ON r.id = s.run_id "
                    "WHERE r.status IN ('succeeded', 'failed', 'cancelled') "
                    "AND s.status IN ('claimed', 'running')"
                )
            )
        ]
    return Audit(
        lost_runs=[r for r in run_ids if r not in status],
        non_terminal=[r for r in run_ids if r in status and status[r] not in TERMINAL],
        duplicate_effects=dups,
        event_gaps=gaps,
        live_leases_on_terminal=leased,
    )


def completed_step_reexecutions(database_url: str, executions: Sequence[Execution]) -> list[Execution]:
    """Ledger starts of an attempt later than the one that completed the step (I7)."""
    rows = query(database_url, "SELECT run_id, key, attempt FROM steps WHERE status = 'succeeded'")
    done = {(r.run_id, r.key): r.attempt for r in rows}
    return [e for e in executions if e.phase == "start" and e.attempt > done.get((e.run_id, e.step), 10**9)]


def attempts_per_step(executions: Sequence[Execution]) -> Counter[tuple[str, str]]:
    return Counter((e.run_id, e.step) for e in executions if e.phase == "start")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- R6, R7, R9: clients that retry with their Idempotency-Key across API crashes ---------------------


def make_tokens(database_url: str, users: Sequence[str]) -> dict[str, str]:
    """One token per user (each made, with no project): every run gets a concurrency key of its own."""
    import asyncio

    from baton.api.bootstrap import create_token_for
    from baton.runtime import open_runtime

    async def body() -> dict[str, str]:
        async with open_runtime(database_url, [], upgrade=None) as rt:
            return {
                user: await rt.db.write(create_token_for, user, project_id=None, name="reliability")
                for user in users
            }

    return asyncio.run(body())


@dataclass
class Ack:
    """A request retried until the server answered it: the answer, how many tries, every 2xx body's id."""

    response: Any
    tries: int
    ids: list[str]


def until_answered(
    url: str,
    token: str,
    method: str,
    path: str,
    *,
    key: str | None = None,
    json_body: Any = None,
    deadline: float,
    pause: float = 0.05,
) -> Ack:
    """Send until the server answers with something other than a 5xx or a broken connection.

    A crashed server refuses connections or drops them mid-request: the client cannot tell whether
    its request committed, so it sends it again with the same Idempotency-Key (RELIABILITY.md R6).
    """
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    if key:
        headers["Idempotency-Key"] = key
    tries = 0
    ids: list[str] = []
    while True:
        tries += 1
        try:
            with httpx.Client(base_url=url, headers=headers, timeout=10.0) as client:
                response = client.request(method, path, json=json_body)
            if response.status_code < 500:
                if response.is_success and isinstance(response.json(), dict):
                    ids.append(str(response.json().get("id")))
                return Ack(response, tries, ids)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{method} {path} got no answer before its deadline ({tries} tries)")
        time.sleep(pause)


class ServerKiller(threading.Thread):
    """SIGKILLs a `baton serve` (tests/e2e/server.py Server) every U(lo, hi) s and restarts it on the
    same port and database, until stopped or `max_kills` is reached."""

    def __init__(self, rng: random.Random, server: Any, lo: float, hi: float, max_kills: int) -> None:
        super().__init__(name="api-killer", daemon=True)
        self.rng, self.server, self.lo, self.hi, self.max_kills = rng, server, lo, hi, max_kills
        self.kills: list[float] = []
        self.restart_s: list[float] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while len(self.kills) < self.max_kills and not self.halt.wait(self.rng.uniform(self.lo, self.hi)):
                self.kill_and_restart()
        except BaseException as error:  # reported by the test, which would otherwise hang
            self.error = error

    def kill_and_restart(self) -> None:
        self.kills.append(time.time())
        began = time.monotonic()
        self.server.stop(signal.SIGKILL)
        self.server.start()
        self.restart_s.append(time.monotonic() - began)
