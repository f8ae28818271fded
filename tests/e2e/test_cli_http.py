"""The `baton` CLI over HTTP: `--server URL --token T` against a real `baton serve` on a loopback port.

Every command runs as a subprocess (`python -m baton`), with no Baton settings inherited, on
SQLite and then PostgreSQL. Nothing here opens the server's database through the CLI except the
one local `runs watch`, which shows that the same command follows the database directly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.server import Server, make_token, running_server

RUN_ID = re.compile(r"\brun_[0-9a-f]{22}\b")
REQUEST_ID = re.compile(r"\binp_[0-9a-f]{22}\b")

FLOWS = """
import asyncio

from baton.flows.spec import Flow

slow = Flow("cli_slow", title="Sleeps until cancelled")


@slow.step(timeout_s=600)
async def nap(ctx):
    await asyncio.sleep(float(ctx.inputs.get("sleep_s", 60)))
    return "rested"


ask = Flow("cli_ask", title="Asks a person")
ask.input(
    "approve",
    prompt="Ship it?",
    schema={"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
)


@ask.step(needs=["approve"])
def publish(ctx):
    return {"published": ctx.upstream["approve"]["ok"]}
"""


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env.update({"BATON_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def baton(*args: str, home: Path, timeout: float = 60.0, env: dict[str, str] | None = None) -> Result:
    done = subprocess.run(
        [sys.executable, "-m", "baton", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(home, **(env or {})),
    )
    return Result(done.returncode, done.stdout, done.stderr)


@dataclass
class Remote:
    """`baton … --server URL --token T` against one server."""

    server: Server
    token: str
    home: Path

    def __call__(self, *args: str, timeout: float = 60.0) -> Result:
        return baton(
            *args, "--server", self.server.url, "--token", self.token, home=self.home, timeout=timeout
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "baton", *args, "--server", self.server.url, "--token", self.token],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(self.home),
        )

    def status(self, run_id: str) -> str:
        with self.server.client(self.token) as http:
            return str(http.get(f"/v1/runs/{run_id}").json()["status"])

    def wait_status(self, run_id: str, *wanted: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status in wanted:
                return status
            time.sleep(0.1)
        pytest.fail(f"run {run_id} is still {status}, not {' or '.join(wanted)}, after {timeout:g} s")


def run_id_of(result: Result) -> str:
    found = RUN_ID.search(result.out)
    assert found, result.text
    return found.group(0)


def assert_clean_error(result: Result, code: int, *mentions: str) -> None:
    assert result.code == code, result.text
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for word in mentions:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in result.text


@pytest.fixture
def remote(server: Server, admin_token: str, tmp_path: Path) -> Remote:
    home = tmp_path / "cli-home"
    home.mkdir()
    return Remote(server, admin_token, home)


@pytest.fixture
def flows_remote(database_url: str, tmp_path: Path) -> Iterator[Remote]:
    """A server that also runs this module's flows (a sleeping step, an input step)."""
    flows = tmp_path / "cli_flows.py"
    flows.write_text(FLOWS)
    home = tmp_path / "cli-home"
    home.mkdir()
    with running_server(database_url, tmp_path, flows=[str(flows)]) as srv:
        yield Remote(srv, make_token(database_url, "bob", "p1", role="admin"), home)


# --- the main job over HTTP -----------------------------------------------------------------------


def test_run_follow_then_ls_show_watch_events(remote: Remote, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "app.py").write_text("print('hi')  # TODO: more\n")

    result = remote("run", "repo-review", "--project", "p1", "--input", f"path={project}", "--follow")
    assert result.code == 0, result.text
    assert "succeeded" in result.out and "Traceback" not in result.text
    run_id = run_id_of(result)
    for step in ("collect", "architecture", "risks", "tests", "synthesis"):
        assert f"succeeded {step}" in result.out  # the live view, one line per change (not a TTY)
    assert f"Review of {project}" in result.out  # the summary's report lines

    listed = remote("runs", "ls")
    assert listed.code == 0, listed.text
    row = next(line for line in listed.out.splitlines() if run_id in line)
    assert "repo-review" in row and "succeeded" in row

    shown = remote("runs", "show", run_id)
    assert shown.code == 0, shown.text
    for word in ("collect", "synthesis", "succeeded", "report", str(project)):
        assert word in shown.out

    # A finished run: the view replays it once and exits with the run's outcome.
    watched = remote("runs", "watch", run_id, timeout=30)
    assert watched.code == 0, watched.text
    assert "succeeded synthesis" in watched.out and f"succeeded  {run_id}" in watched.out

    events = remote("runs", "events", run_id)
    assert events.code == 0, events.text
    rows = [json.loads(line) for line in events.out.splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["type"] == "run.created" and rows[-1]["type"] == "run.succeeded"
    assert any(r["step_key"] == "collect" and r["attempt"] == 1 for r in rows)

    # The same command, locally: it follows the database the server writes.
    local = baton("runs", "watch", run_id, "--database", remote.server.database_url, home=remote.home)
    assert local.code == 0, local.text
    assert "succeeded synthesis" in local.out

    # The server and token from the environment; an unknown run is the server's 404, exit 2.
    env = {"BATON_SERVER": remote.server.url, "BATON_TOKEN": remote.token}
    flows = baton("flows", "ls", home=remote.home, env=env)
    assert flows.code == 0 and "repo-review" in flows.out, flows.text
    assert_clean_error(
        baton("runs", "show", "run_nope", home=remote.home, env=env), 2, "run_nope", "not found"
    )

    # A bad token: the server's 401, one line that says what to do, exit 2.
    refused = baton(
        "runs", "ls", "--server", remote.server.url, "--token", "bt_not-a-token", home=remote.home
    )
    assert_clean_error(refused, 2, "refused the token", "--token", "BATON_TOKEN")


def test_cancel_a_running_run_and_answer_an_input(flows_remote: Remote) -> None:
    remote = flows_remote
    created = remote("run", "cli_slow", "--project", "p1", "--input", "sleep_s=60", "--no-follow")
    assert created.code == 0, created.text
    slow = run_id_of(created)
    remote.wait_status(slow, "running")

    cancelled = remote("runs", "cancel", slow, "--reason", "enough")
    assert cancelled.code == 0, cancelled.text
    assert slow in cancelled.out and ("cancel requested" in cancelled.out or "cancelled" in cancelled.out)
    watched = remote("runs", "watch", slow, timeout=30)
    assert watched.code == 1, watched.text  # cancelled: exit 1
    assert "cancelled" in watched.out
    assert remote.status(slow) == "cancelled"
    assert_clean_error(remote("runs", "confirm", slow), 2, slow, "cancelled")

    # A followed run that asks a person: the live view says how to answer; another shell answers.
    following = remote.start("run", "cli_ask", "--project", "p1", "--follow")
    try:
        deadline = time.monotonic() + 30
        request_id = None
        while request_id is None and time.monotonic() < deadline:
            pending = remote("inputs", "ls")
            assert pending.code == 0, pending.text
            found = REQUEST_ID.search(pending.out)
            request_id = found.group(0) if found else None
        assert request_id, "no pending input request appeared"
        assert "Ship it?" in pending.out

        assert_clean_error(remote("inputs", "answer", request_id, "--set", "ok=maybe"), 2, "maybe")
        answered = remote("inputs", "answer", request_id, "--set", "ok=true")
        assert answered.code == 0, answered.text
        out, err = following.communicate(timeout=30)
    finally:
        if following.poll() is None:
            following.kill()
            following.communicate()
    assert following.returncode == 0, out + err
    assert f"baton inputs answer {request_id}" in out  # the hint, from the stream
    assert "succeeded publish" in out
    ask_run = RUN_ID.search(out)
    assert ask_run and '"published": true' in remote("runs", "show", ask_run.group(0)).out
    assert_clean_error(remote("inputs", "answer", request_id, "--set", "ok=false"), 2, request_id)


# --- errors without a server ---------------------------------------------------------------------


def test_unreachable_server_is_exit_1(tmp_path: Path) -> None:
    for args in (["runs", "ls"], ["run", "repo-review", "--follow"], ["runs", "watch", "run_x"]):
        result = baton(*args, "--server", "http://127.0.0.1:1", "--token", "t", home=tmp_path)
        assert_clean_error(result, 1, "cannot reach", "http://127.0.0.1:1")


def test_usage_errors_about_server_and_token(tmp_path: Path) -> None:
    url = "http://127.0.0.1:1"
    no_token = baton("runs", "ls", "--server", url, home=tmp_path)
    assert_clean_error(no_token, 2, "--token", "BATON_TOKEN")
    for command in (["worker"], ["serve"], ["db", "upgrade"], ["token", "create"]):
        refused = baton(*command, "--server", url, "--token", "t", home=tmp_path)
        assert_clean_error(refused, 2, f"baton {' '.join(command)}", "--server")
    assert_clean_error(baton("--server", url, "--token", "t", "worker", home=tmp_path), 2, "baton worker")
    assert_clean_error(baton("runs", "ls", "--server", "localhost:8000", "--token", "t", home=tmp_path), 2)
    both = baton("runs", "ls", "--server", url, "--token", "t", "--database", "sqlite:///x.db", home=tmp_path)
    assert_clean_error(both, 2, "--server", "--database")
