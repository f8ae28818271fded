"""R7: storage crash: whatever the API acknowledged survives a crash of the database or of its writers.

Clients create runs over HTTP (three kinds: plain, held then cancelled, failing then resumed),
always with an Idempotency-Key, retrying until answered, while the storage is crashed at random:

    SQLite      every process touching the file is SIGKILLed at once (`baton serve` with its
                in-process worker, and a separate worker process); `PRAGMA integrity_check` must
                say `ok`; then both are restarted.
    PostgreSQL  a private cluster (initdb as the `postgres` user, random port, 127.0.0.1, fsync=on)
                is stopped with `pg_ctl stop -m immediate` (crash semantics: WAL recovery at start)
                and started again; the API and both workers must be back within 10 s of it.

Pass bar (RELIABILITY.md R7): 0 acknowledged creations, cancels or resumes lost; integrity `ok`
every cycle; reconnect ≤ 10 s; every run terminal at the end; the harness checker (which covers
acknowledged step completions: 0 completed steps re-run, 0 duplicate effects). Power loss cannot
be simulated here, so the durability settings are asserted instead: SQLite `synchronous` = FULL (2),
PostgreSQL `synchronous_commit` = on (and `fsync` = on).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import pwd
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, create_engine, text

from baton.runtime import open_runtime
from baton.store.database import sqlite_path
from baton.store.migrate import upgrade
from tests.e2e.server import Server, free_port
from tests.reliability import _r_support as rs
from tests.reliability import rflows
from tests.reliability.harness.processes import Proc, Scenario
from tests.reliability.tier import size

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

#: RELIABILITY.md §4.3: PR 5 cycles, nightly 20; the PR size is scaled to the 90 s budget of R6+R7+R9.
CYCLES = size(3, 20)
#: Users, one per run (a concurrency key each), so no run waits behind another of the same user.
USERS = size(40, 400)
RECONNECT_S = 10.0
FLOWS = ("r_api_chain", "r_api_hold", "r_api_flaky")


# --- durability settings ------------------------------------------------------------------------------


def durability_settings(database_url: str) -> dict[str, str]:
    """The settings Baton's own write connections run with."""

    def read(conn: Connection) -> dict[str, str]:
        if sqlite_path(database_url) is not None:
            return {"synchronous": str(conn.exec_driver_sql("PRAGMA synchronous").scalar())}
        return {
            "synchronous_commit": str(conn.exec_driver_sql("SHOW synchronous_commit").scalar()),
            "fsync": str(conn.exec_driver_sql("SHOW fsync").scalar()),
        }

    async def body() -> dict[str, str]:
        async with open_runtime(database_url, [], upgrade=False) as rt:
            return await rt.db.write(read)

    return asyncio.run(body())


# --- a private PostgreSQL cluster ---------------------------------------------------------------------


@dataclass
class Cluster:
    """A throwaway PostgreSQL cluster owned by the `postgres` OS user (initdb refuses root)."""

    bin: Path
    root: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "baton") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *args: str, timeout: float = 60) -> None:
        command = ["runuser", "-u", "postgres", "--", *args]
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)

    def init(self) -> None:
        user = pwd.getpwnam("postgres")
        os.chown(self.root, user.pw_uid, user.pw_gid)
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N"
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c fsync=on -c synchronous_commit=on -c max_connections=200"
        )
        pg_ctl = str(self.bin / "pg_ctl")
        log = str(self.root / "postgres.log")
        self._as_postgres(pg_ctl, "-D", str(self.data), "-l", log, "-w", "-t", "60", "-o", options, "start")

    def crash(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self) -> str:
        engine = create_engine(
            "postgresql+psycopg://postgres@127.0.0.1:" + str(self.port) + "/postgres",
            isolation_level="AUTOCOMMIT",
        )
        try:
            with engine.connect() as conn:
                conn.execute(text("CREATE DATABASE baton"))
        finally:
            engine.dispose()
        url = self.url()
        upgrade(url)
        return url


@contextlib.contextmanager
def private_cluster() -> Iterator[Cluster]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found or shutil.which("runuser") is None or os.geteuid() != 0:
        pytest.skip("R7 on PostgreSQL needs initdb under /usr/lib/postgresql/*/bin, runuser and root")
    cluster = Cluster(Path(found[-1]).parent, Path(tempfile.mkdtemp(prefix="baton-r7-pg-")))
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


# --- the clients --------------------------------------------------------------------------------------


class Load(threading.Thread):
    """Creates runs (one user each), cancels the held ones, resumes the failed ones; records every
    operation the API acknowledged. After `halt`, it creates no more and settles what it started."""

    def __init__(self, url: str, tokens: list[str], rng: random.Random) -> None:
        super().__init__(name="r7-load", daemon=True)
        self.url, self.tokens, self.rng = url, tokens, rng
        self.acked: list[tuple[str, str, str]] = []  # (operation, run id, key)
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # reported by the test
            self.error = error

    def _send(self, token: str, method: str, path: str, key: str | None = None, body: Any = None) -> Any:
        return rs.until_answered(
            self.url, token, method, path, key=key, json_body=body, deadline=time.monotonic() + 120
        ).response

    def _loop(self) -> None:
        held: list[tuple[str, str]] = []  # (run id, token) to cancel
        failing: list[tuple[str, str]] = []  # (run id, token) to resume once failed
        users = iter(enumerate(self.tokens))
        while True:
            made = None if self.halt.is_set() else next(users, None)
            if made is not None:
                index, token = made
                flow = FLOWS[index % len(FLOWS)]
                key = f"r7-{index}-create"
                response = self._send(
                    token, "POST", "/v1/runs", key, {"flow": flow, "inputs": {"sleep_s": 120}}
                )
                assert response.status_code == 201, response.text
                run_id = str(response.json()["id"])
                self.acked.append(("create", run_id, key))
                (held if flow == "r_api_hold" else failing if flow == "r_api_flaky" else []).append(
                    (run_id, token)
                )
            for run_id, token in list(held):
                key = f"{run_id}-cancel"
                response = self._send(token, "POST", f"/v1/runs/{run_id}/cancel", key, {"reason": "r7"})
                assert response.is_success, response.text
                self.acked.append(("cancel", run_id, key))
                held.remove((run_id, token))
            for run_id, token in list(failing):
                status = self._send(token, "GET", f"/v1/runs/{run_id}").json()["status"]
                if status == "failed":
                    key = f"{run_id}-resume"
                    response = self._send(token, "POST", f"/v1/runs/{run_id}/resume", key)
                    assert response.is_success, response.text
                    self.acked.append(("resume", run_id, key))
                    failing.remove((run_id, token))
                elif status in rs.TERMINAL:
                    raise AssertionError(f"{run_id} ended {status} before it was resumed")
            if made is None and not held and not failing:
                return
            time.sleep(self.rng.uniform(0.02, 0.15))


def lost_acknowledgements(database_url: str, acked: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """Acknowledged operations the database does not show."""
    runs = {r.id: r for r in rs.query(database_url, "SELECT id, status, cancel_requested_at FROM runs")}
    keys: set[tuple[str, str]] = set()
    for row in rs.query(
        database_url,
        "SELECT run_id, payload FROM events WHERE type IN ('run.resumed', 'run.cancel_requested')",
    ):
        payload = row.payload if isinstance(row.payload, dict) else json.loads(row.payload)
        keys.add((row.run_id, str(payload.get("idempotency_key"))))
    lost = []
    for operation, run_id, key in acked:
        run = runs.get(run_id)
        if run is None:
            lost.append((operation, run_id))
        elif operation == "cancel" and run.cancel_requested_at is None and run.status != "cancelled":
            lost.append((operation, run_id))
        elif operation == "resume" and (run_id, key) not in keys:
            lost.append((operation, run_id))
    return lost


# --- the scenario -------------------------------------------------------------------------------------


def _storage_crash(
    database_url: str,
    tmp_path: Path,
    *,
    crash: Callable[[Scenario, Server, list[Proc]], None],
    recover: Callable[[Scenario, Server, list[Proc]], dict[str, float]],
) -> None:
    with Scenario(database_url, tmp_path) as sc:
        tokens = rs.make_tokens(database_url, [f"r7-{i}" for i in range(USERS)])
        extra = {k: v for k, v in sc.env().items() if k.startswith(("BATON_", "PYTHONPATH"))}
        home = tmp_path / "api-home"
        home.mkdir()
        server = Server(database_url, home, workers=1, flows=[str(rflows.PATH)], extra_env=extra)
        server.start()
        sc.servers.append(server)
        workers = [sc.worker("worker", flows=[rflows.PATH], concurrency=8)]
        load = Load(server.url, list(tokens.values()), sc.random)
        began = time.monotonic()
        load.start()
        figures: list[dict[str, float]] = []
        for _ in range(CYCLES):
            time.sleep(sc.random.uniform(0.5, 2.0))
            crash(sc, server, workers)
            figures.append(recover(sc, server, workers))
        load.halt.set()
        load.join(180)
        assert load.error is None, load.error
        run_ids = sorted({run_id for _, run_id, _ in load.acked})
        rs.wait_for(
            lambda: all(s in rs.TERMINAL for s in rs.run_statuses(database_url, run_ids).values()),
            timeout=90,
            interval=0.2,
            what="every run to finish",
        )
        elapsed = time.monotonic() - began
        lost = lost_acknowledgements(database_url, load.acked)
        statuses = rs.run_statuses(database_url, run_ids)
        operations = {op: sum(a[0] == op for a in load.acked) for op in ("create", "cancel", "resume")}
        summary = {k: max(f.get(k, 0.0) for f in figures) for k in sorted({k for f in figures for k in f})}
        print(
            f"R7 {database_url.split(':')[0]}: cycles={CYCLES} elapsed={elapsed:.1f}s acked={operations} "
            f"lost={len(lost)} runs={len(run_ids)} "
            f"statuses={ {s: list(statuses.values()).count(s) for s in sorted(set(statuses.values()))} } "
            + " ".join(f"{k}_max={v:.2f}" for k, v in summary.items())
        )
        assert not lost, lost
        assert all(f.get("integrity_ok", 1.0) == 1.0 for f in figures), figures
        assert all(f.get(k, 0.0) <= RECONNECT_S for f in figures for k in f if k.endswith("reconnect_s")), (
            figures
        )
        sc.check(run_ids)


def test_r07_storage_crash(database_url: str, tmp_path: Path) -> None:
    if sqlite_path(database_url) is not None:
        _sqlite(database_url, tmp_path)
    else:
        _postgres(tmp_path)


def _sqlite(database_url: str, tmp_path: Path) -> None:
    assert durability_settings(database_url) == {"synchronous": "2"}, "SQLite must run with synchronous=FULL"
    path = sqlite_path(database_url)
    assert path is not None

    def crash(sc: Scenario, server: Server, workers: list[Proc]) -> None:
        # Every process that has the file open dies at the same instant (the worker first by a hair).
        for proc in workers:
            proc.kill()
        server.stop(signal.SIGKILL)
        for proc in workers:
            proc.popen.wait(10)

    def recover(sc: Scenario, server: Server, workers: list[Proc]) -> dict[str, float]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
        assert verdict == "ok", f"integrity_check after a crash: {verdict}"
        began = time.monotonic()
        server.start()
        workers[:] = [sc.worker("worker", flows=[rflows.PATH], concurrency=8)]
        return {"integrity_ok": 1.0, "restart_s": time.monotonic() - began}

    _storage_crash(database_url, tmp_path, crash=crash, recover=recover)


def _postgres(tmp_path: Path) -> None:
    with private_cluster() as cluster:
        url = cluster.create_database()
        probe = rs.make_tokens(url, ["r7-probe"])["r7-probe"]
        settings = durability_settings(url)
        assert settings == {"synchronous_commit": "on", "fsync": "on"}, settings

        def crash(sc: Scenario, server: Server, workers: list[Proc]) -> None:
            cluster.crash()
            time.sleep(sc.random.uniform(0.2, 1.0))  # down for a while: requests and heartbeats fail

        def recover(sc: Scenario, server: Server, workers: list[Proc]) -> dict[str, float]:
            cluster.start()
            back = time.time()
            assert server.process is not None and server.process.poll() is None, (
                "the API died with the database"
            )
            assert all(p.alive() for p in workers), "a worker died with the database"
            pids = [server.process.pid, *(p.pid for p in workers)]

            def api_answers() -> bool:
                # An authenticated read: the token is looked up in the database.
                with contextlib.suppress(httpx.HTTPError):
                    got = httpx.get(
                        f"{server.url}/v1/runs",
                        params={"limit": 1},
                        headers={"Authorization": f"Bearer {probe}"},
                        timeout=2,
                    )
                    return got.status_code == 200
                return False

            rs.wait_for(api_answers, timeout=RECONNECT_S * 2, interval=0.05, what="the API back")
            api_s = time.time() - back

            def beating() -> bool:
                rows = rs.query(url, "SELECT pid, heartbeat_at FROM workers")
                latest: dict[int, float] = {}
                for row in rows:
                    latest[row.pid] = max(latest.get(row.pid, 0.0), row.heartbeat_at)
                return all(latest.get(pid, 0.0) > back for pid in pids)

            rs.wait_for(beating, timeout=RECONNECT_S * 2, interval=0.1, what="both workers heartbeating")
            return {"api_reconnect_s": api_s, "worker_reconnect_s": time.time() - back}

        _storage_crash(url, tmp_path, crash=crash, recover=recover)
