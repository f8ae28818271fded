"""A real `baton serve` in a subprocess on a loopback port, for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from baton.api.bootstrap import create_token_for
from baton.runtime import open_runtime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_token(database_url: str, user: str, project: str | None, role: str = "member") -> str:
    """A token for `user` (made if new), a `role` member of `project` (made if new)."""

    async def body() -> str:
        async with open_runtime(database_url, [], upgrade=None) as rt:
            return await rt.db.write(create_token_for, user, project_id=project, name="test", role=role)

    return asyncio.run(body())


@dataclass
class Server:
    """One `baton serve` process; `restart()` keeps the port and the database."""

    database_url: str
    home: Path
    port: int = field(default_factory=free_port)
    workers: int = 1
    flows: Sequence[str] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    lease_s: float = 3.0
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "BATON_HOME": str(self.home), "BATON_SECRET": "test-secret", **self.extra_env}
        args = [
            sys.executable,
            "-m",
            "baton",
            "serve",
            "--database",
            self.database_url,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--lease",
            str(self.lease_s),
        ]
        for source in self.flows:
            args += ["--flows", source]
        self.log = self.home / f"server-{self.port}-{time.monotonic_ns()}.log"
        handle = open(self.log, "wb")
        self.process = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"baton serve exited early:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"baton serve did not become healthy:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)


@contextlib.contextmanager
def running_server(database_url: str, home: Path, **kwargs: object) -> Iterator[Server]:
    server = Server(database_url=database_url, home=home, **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()
