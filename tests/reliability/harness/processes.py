"""Real processes for a scenario: workers, the API server, the fake LLM, each in its own session.

    with Scenario(database_url, tmp_path, seed=scenario_seed()) as sc:
        w = sc.worker("a", failpoint="after_claim_commit:once")
        api = sc.api()                      # tests/e2e/server.py `Server`, same env
        llm = sc.fake_llm(faults="429:0.1") # a separate process; its request ledger in sc.dir
        ...
        sc.check(run_ids)                   # checker.check_scenario with this scenario's seed

Every process started here gets the scenario's ledger directory (BATON_RELIABILITY_DIR) and
failpoint marker directory (BATON_FAILPOINT_DIR) in its environment, and is stopped (SIGKILL of
its whole group, if it is still there) when the scenario ends.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.reliability.harness import checker, ledgers
from tests.reliability.harness.flows import FLOWS_PATH

TESTS = Path(__file__).resolve().parents[2]

#: §4.1 test parameters: lease 3 s, heartbeat 0.5 s, reaper 0.5 s (lease ≥ 4 x heartbeat).
LEASE_S = 3.0
HEARTBEAT_S = 0.5
REAPER_S = 0.5
POLL_S = 0.2
#: How long anything may look stuck before the checker calls it stuck: one reaper pass after expiry.
GRACE_S = LEASE_S + REAPER_S + 1.0


def _load(path: Path, name: str) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


#: tests/integration/workerproc.py: `wait_until`, `pid_gone`, and the worker script itself.
workerproc = _load(TESTS / "integration" / "workerproc.py", "baton_rel_workerproc")
wait_until = workerproc.wait_until
pid_gone = workerproc.pid_gone


def scenario_seed() -> int:
    """BATON_RELIABILITY_SEED, else a random seed; printed so a failure can be replayed."""
    value = os.environ.get("BATON_RELIABILITY_SEED")
    seed = int(value) if value else random.randrange(2**31)
    print(f"reliability seed: BATON_RELIABILITY_SEED={seed}", flush=True)
    return seed


@dataclass
class Proc:
    """A process of the scenario: its name, Popen and log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for the worker's `ready` line; fail with its log if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready " in self.log_text():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout:g} s:\n{self.log_text()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process's whole group (it leads its own session)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL of the group if it does not stop in time; returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.kill()  # stragglers of the group, if any
        self.popen.wait(10)
        return int(self.popen.returncode)


@dataclass
class Scenario:
    """One scenario's processes, directories and seed. Use as a context manager."""

    database_url: str
    root: Path
    seed: int = field(default_factory=scenario_seed)
    procs: list[Proc] = field(default_factory=list)
    servers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dir = self.root / "ledgers"
        self.failpoint_dir = self.root / "failpoints"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.failpoint_dir.mkdir(parents=True, exist_ok=True)
        self.random = random.Random(self.seed)
        ledgers.install_effects(self.database_url)

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def env(self, failpoint: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            **os.environ,
            ledgers.DIR_ENV: str(self.dir),
            "BATON_FAILPOINT_DIR": str(self.failpoint_dir),
            "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
        }
        env.pop("BATON_FAILPOINT", None)
        if failpoint:
            env["BATON_FAILPOINT"] = failpoint
        env.update(extra or {})
        return env

    # --- processes -------------------------------------------------------------------------------

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str]) -> Proc:
        """Start `args` in a new session with its output in `root/NAME-N.log`."""
        log = self.root / f"{name}-{len(self.procs)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                list(args), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def worker(
        self,
        name: str = "worker",
        *,
        failpoint: str | None = None,
        concurrency: int = 8,
        lease: float = LEASE_S,
        heartbeat: float = HEARTBEAT_S,
        reaper: float = REAPER_S,
        poll: float = POLL_S,
        flows: Iterable[str | Path] = (FLOWS_PATH,),
        database_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
        prefix: Sequence[str] = (),
    ) -> Proc:
        """A tests/integration/workerproc.py worker; `prefix` wraps it (["faketime", "-f", "+300s"])."""
        args = [
            *prefix,
            sys.executable,
            str(workerproc.HERE),
            "--database",
            database_url or self.database_url,
        ]
        for source in flows:
            args += ["--flows", str(source)]
        args += [f"--concurrency={concurrency}", f"--lease={lease}", f"--heartbeat={heartbeat}"]
        args += [f"--reaper={reaper}", f"--poll={poll}", "--drain=2"]
        proc = self.spawn(name, args, self.env(failpoint, extra_env))
        if wait:
            proc.wait_ready()
        return proc

    def workers(self, *names: str, **options: Any) -> list[Proc]:
        """Several workers started side by side (start-up is the slow part), then waited for."""
        procs = [self.worker(name, wait=False, **options) for name in names]
        for proc in procs:
            proc.wait_ready()
        return procs

    def api(self, *, workers: int = 0, failpoint: str | None = None, lease: float = LEASE_S) -> Any:
        """A `baton serve` (tests/e2e/server.py) on loopback with this scenario's env; started."""
        server_mod = _load(TESTS / "e2e" / "server.py", "baton_rel_server")
        extra = {k: v for k, v in self.env(failpoint).items() if k.startswith(("BATON_", "PYTHONPATH"))}
        extra.pop("BATON_HOME", None)
        home = self.root / "api-home"
        home.mkdir(exist_ok=True)
        server = server_mod.Server(
            database_url=self.database_url,
            home=home,
            workers=workers,
            flows=[str(FLOWS_PATH)],
            extra_env=extra,
            lease_s=lease,
        )
        server.start()
        self.servers.append(server)
        return server

    def fake_llm(self, *, faults: str = "", default_text: str = "ok", delay: float = 0.0) -> FakeLLM:
        """The fake OpenAI server as its own process (harness/llm_proc.py), request ledger in `dir`."""
        ledger = self.dir / f"llm-{len(self.procs)}.jsonl"
        args = [sys.executable, str(Path(__file__).with_name("llm_proc.py")), "--ledger", str(ledger)]
        args += ["--seed", str(self.seed), "--text", default_text, "--delay", f"{delay:g}"]
        if faults:
            args += ["--faults", faults]
        proc = self.spawn("fake-llm", args, self.env())
        port = wait_until_sync(lambda: _port_of(proc), timeout=20, what="the fake LLM's port")
        return FakeLLM(proc, int(port), ledger)

    def stop_all(self) -> None:
        for server in self.servers:
            try:
                server.stop()
            except Exception as error:  # keep stopping the others
                print(f"stopping API server: {error!r}")
        for proc in self.procs:
            if proc.alive():
                proc.kill(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                proc.stop(timeout=5)

    # --- oracle ----------------------------------------------------------------------------------

    def check(self, runs: Iterable[str] = (), **kwargs: Any) -> checker.Verdict:
        """The checker (doctor + ledgers) on this scenario; raises AssertionError with a dump."""
        return checker.check_scenario(
            self.database_url, self.dir, seed=self.seed, runs=runs, logs=[p.log for p in self.procs], **kwargs
        )


@dataclass
class FakeLLM:
    proc: Proc
    port: int
    ledger: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self) -> list[dict[str, Any]]:
        """Every request so far: {"t", "idempotency_key", "path", "reply"}."""
        if not self.ledger.exists():
            return []
        return [json.loads(line) for line in self.ledger.read_text().splitlines() if line.strip()]


def _port_of(proc: Proc) -> int | None:
    for line in proc.log_text().splitlines():
        if line.startswith("port "):
            return int(line.split()[1])
    if not proc.alive():
        raise RuntimeError(f"fake LLM exited:\n{proc.log_text()}")
    return None


def wait_until_sync(check: Any, *, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """`wait_until` for synchronous code: poll until truthy, fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- runs ------------------------------------------------------------------------------------------


async def create_runs(
    database_url: str, flow: str, count: int, inputs: dict[str, Any] | None = None, *, limit: int = 100_000
) -> list[str]:
    """Create `count` runs of a harness flow (each its own transaction); all may run at once."""
    from baton.engine.lifecycle import RunRequest
    from baton.flows.catalog import Catalog
    from baton.runtime import open_runtime
    from tests.reliability.harness.flows import FLOWS

    ids = []
    async with open_runtime(database_url, catalog=Catalog(FLOWS), upgrade=False) as rt:
        for _ in range(count):
            run = await rt.lifecycle.create_run(
                RunRequest(flow, inputs=dict(inputs or {}), concurrency_limit=limit)
            )
            ids.append(run["id"])
    return ids


def run_statuses(database_url: str, run_ids: Sequence[str]) -> dict[str, str]:
    """Run id → status, read-only (through baton.doctor's connection)."""
    from sqlalchemy import text

    from baton.doctor import read_only_connection

    with read_only_connection(database_url) as conn:
        rows = conn.execute(text("SELECT id, status FROM runs")).all()
    wanted = set(run_ids)
    return {run_id: status for run_id, status in rows if run_id in wanted}


def most_attempts(database_url: str, run_ids: Sequence[str]) -> int:
    """The highest attempt number any step of these runs reached (1 when nothing was retried)."""
    from sqlalchemy import bindparam, text

    from baton.doctor import read_only_connection

    query = text("SELECT max(attempt) FROM steps WHERE run_id IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    with read_only_connection(database_url) as conn:
        return int(conn.execute(query, {"ids": list(run_ids)}).scalar() or 0)


def failure_story(database_url: str, run_id: str) -> str:
    """A failed run's reason, its steps (status, attempt, error) and its last events: for assertions."""
    from sqlalchemy import text

    from baton.doctor import read_only_connection

    with read_only_connection(database_url) as conn:
        reason = conn.execute(text("SELECT status_reason FROM runs WHERE id = :r"), {"r": run_id}).scalar()
        steps = conn.execute(
            text("SELECT key, status, attempt, error FROM steps WHERE run_id = :r ORDER BY position"),
            {"r": run_id},
        ).all()
        events = conn.execute(
            text("SELECT seq, type, step_key, attempt, payload FROM events WHERE run_id = :r ORDER BY seq"),
            {"r": run_id},
        ).all()
    lines = [f"{run_id}: {reason}"]
    lines += [f"  step {key} {status} attempt {attempt}: {error}" for key, status, attempt, error in steps]
    lines += [
        f"  #{seq} {kind} {step} a{attempt} {str(payload)[:300]}"
        for seq, kind, step, attempt, payload in events
    ]
    return "\n".join(lines)


async def wait_terminal(database_url: str, run_ids: Sequence[str], *, timeout: float) -> dict[str, str]:
    """Poll until every run is succeeded, failed or cancelled; their statuses."""

    def finished() -> dict[str, str] | None:
        statuses = run_statuses(database_url, run_ids)
        done = all(statuses.get(r) in ("succeeded", "failed", "cancelled") for r in run_ids)
        return statuses if done else None

    result: dict[str, str] = await wait_until(
        finished, timeout=timeout, interval=0.2, what=f"{len(run_ids)} runs to finish"
    )
    return result
