"""Helpers shared by the HTTP API, SSE and tenancy tests (this module holds no tests).

Waiting is done by polling with deadlines; a sleep is never an oracle.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from baton.store.migrate import upgrade
from tests.conftest import drop_postgres_database, make_postgres_database
from tests.e2e import apiflows
from tests.e2e.server import Server, make_token, running_server

T = TypeVar("T")

#: the `database_url` fixture's two databases, for module-scoped servers
DIALECTS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
FLOWS = [str(apiflows.PATH)]
TERMINAL = ("succeeded", "failed", "cancelled")


@contextlib.contextmanager
def fresh_database(dialect: str, home: Path) -> Iterator[str]:
    """A fresh migrated database like the `database_url` fixture's, for a wider scope."""
    if dialect == "sqlite":
        url = f"sqlite:///{home / 'baton.db'}"
        upgrade(url)
        yield url
        return
    url = make_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@contextlib.contextmanager
def module_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`baton serve` (one in-process worker, lease 3 s) with the API test flows loaded."""
    home = tmp_path_factory.mktemp(f"serve-{request.param}")
    with fresh_database(request.param, home) as url, running_server(url, home, flows=FLOWS) as srv:
        yield srv


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@dataclass
class Tenant:
    """A user with a token, a member (or other role) of one project of its own."""

    server: Server
    user: str
    project: str
    token: str
    role: str
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def client(self) -> httpx.Client:
        if not self._clients:
            self._clients.append(self.server.client(self.token))
        return self._clients[0]

    def close(self) -> None:
        for client in self._clients:
            client.close()


def tenant(
    server: Server, *, project: str | None = None, user: str | None = None, role: str = "member"
) -> Tenant:
    user = user or unique("user")
    project = project or unique("proj")
    token = make_token(server.database_url, user, project, role=role)
    return Tenant(server, user, project, token, role)


# --- polling -------------------------------------------------------------------------------------


def wait_until(check: Callable[[], T | None], *, timeout: float = 20.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last seen: {last!r})")


def get_run(client: httpx.Client, run_id: str) -> dict[str, Any]:
    resp = client.get(f"/v1/runs/{run_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def wait_status(client: httpx.Client, run_id: str, *statuses: str, timeout: float = 20.0) -> dict[str, Any]:
    wanted = statuses or TERMINAL

    def check() -> dict[str, Any] | None:
        run = get_run(client, run_id)
        return run if run["status"] in wanted else None

    return wait_until(check, timeout=timeout, what=f"run {run_id} to be {' or '.join(wanted)}")


def create_run(client: httpx.Client, flow: str, project: str, **body: Any) -> dict[str, Any]:
    resp = client.post("/v1/runs", json={"flow": flow, "project_id": project, **body})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def events_of(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """Every event of the run from the events table, oldest first."""
    resp = client.get(f"/v1/runs/{run_id}/events", params={"limit": 10_000})
    assert resp.status_code == 200, resp.text
    return list(resp.json()["events"])


def assert_problem(resp: httpx.Response, status: int, *mentions: str) -> dict[str, Any]:
    """An RFC 9457 problem with this status, a detail that names `mentions`, and no stack trace."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    body = resp.json()
    assert body["status"] == status
    assert body["title"] and body["detail"], body
    for word in mentions:
        assert word in body["detail"], f"{word!r} not in {body['detail']!r}"
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    return dict(body)


# --- Server-Sent Events ---------------------------------------------------------------------------


@dataclass
class Frame:
    """One SSE block: its comment lines, and its id and data when it is an event."""

    lines: list[str]
    received: float

    @property
    def is_comment(self) -> bool:
        return all(line.startswith(":") for line in self.lines)

    @property
    def id(self) -> str | None:
        for line in self.lines:
            if line.startswith("id:"):
                return line[3:].strip()
        return None

    @property
    def data(self) -> dict[str, Any]:
        text = "\n".join(line[5:].lstrip() for line in self.lines if line.startswith("data:"))
        return dict(json.loads(text))


def frames(resp: httpx.Response) -> Iterator[Frame]:
    """The response's SSE blocks as they arrive; a block is yielded only once it is complete."""
    block: list[str] = []
    for line in resp.iter_lines():
        if line == "":
            if block:
                yield Frame(block, time.time())
            block = []
        else:
            block.append(line)


def sse_events(resp: httpx.Response) -> Iterator[Frame]:
    """Only the event blocks (those with data)."""
    for frame in frames(resp):
        if not frame.is_comment:
            yield frame


def stream_timeout(read: float) -> httpx.Timeout:
    return httpx.Timeout(10.0, read=read)
