"""The real `baton` console script, run as a subprocess against a temporary database.

Each test gets its own BATON_HOME (so its own SQLite file); flows used only here live in a small
file written to tmp_path and loaded with --flows, as a user would.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

RUN_ID = re.compile(r"\brun_[0-9a-f]{22}\b")
REQUEST_ID = re.compile(r"\binp_[0-9a-f]{22}\b")
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"

FLOWS = """
from baton.flows.spec import Flow

gated = Flow("gated", title="Needs a yes first", require_confirmation=True)


@gated.step()
def hello(ctx):
    ctx.emit("hello from gated\\n")
    return {"hi": True}


approval = Flow("approval", title="Asks a person")


@approval.step()
def draft(ctx):
    ctx.emit("drafted\\n")
    return "a draft"


approval.input(
    "approve",
    prompt="Ship the draft?",
    needs=["draft"],
    schema={"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
)


@approval.step(needs=["approve"])
def publish(ctx):
    return {"published": ctx.upstream["approve"]["ok"]}


typed = Flow(
    "typed",
    input_schema={
        "type": "object",
        "properties": {"count": {"type": "integer", "minimum": 1}, "name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    },
)


@typed.step()
def only(ctx):
    return dict(ctx.inputs)
"""


def baton_command() -> list[str]:
    beside = Path(sys.executable).with_name("baton")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("baton")
    return [found] if found else [sys.executable, "-m", "baton"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


class Cli:
    """Runs `baton` with a private BATON_HOME and no inherited Baton settings."""

    def __init__(self, home: Path, database: str | None = None, flows: Path | None = None) -> None:
        self.home = home
        self.database = database
        self.flows = flows
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        env.update({"BATON_HOME": str(home), "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "200"})
        self.env = env

    def args(self, args: Sequence[str], *, flows: bool = True, database: bool = True) -> list[str]:
        extra: list[str] = []
        if database and self.database and "--database" not in args:
            extra += ["--database", self.database]
        if flows and self.flows:
            extra += ["--flows", str(self.flows)]
        return [*baton_command(), *args, *extra]

    def __call__(self, *args: str, timeout: float = 30, **kw: bool) -> Result:
        done = subprocess.run(
            self.args(args, **kw),
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def many(self, *commands: Sequence[str]) -> list[Result]:
        """Several independent commands at once (they only read, or fail before writing)."""
        procs = [
            subprocess.Popen(
                self.args(args),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in commands
        ]
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            results.append(Result(proc.returncode, out, err))
        return results

    def start(self, *args: str, **kw: bool) -> Background:
        return Background(self.args(args, **kw), self.env)


class Background:
    """A `baton` process whose output is read line by line while it runs."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            found = pattern.search(line)
            if found:
                return found
        raise AssertionError(f"{pattern.pattern!r} not printed; so far:\n{''.join(self.out + self.err)}")

    def finish(self, timeout: float = 30) -> Result:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        for reader in self.readers:
            reader.join(timeout=5)
        return Result(code, "".join(self.out), "".join(self.err))


@pytest.fixture
def flows_file(tmp_path: Path) -> Path:
    path = tmp_path / "cli_flows.py"
    path.write_text(FLOWS)
    return path


@pytest.fixture
def cli(tmp_path: Path, flows_file: Path) -> Cli:
    return Cli(tmp_path / "home", flows=flows_file)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "main.py").write_text("print('hi')  # TODO: more\n")
    return folder


def assert_clean_error(result: Result, code: int, *words: str) -> None:
    """A non-zero exit with one `error: …` line on stderr that says what is wrong; no traceback."""
    assert result.code == code, result.text
    assert "Traceback" not in result.text
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for word in words:
        assert word in lines[0], lines[0]


def run_id_of(result: Result) -> str:
    found = RUN_ID.search(result.out)
    assert found, result.text
    return found.group(0)


# --- start-up ------------------------------------------------------------------------------------


def test_help_does_not_import_the_database_layer(cli: Cli) -> None:
    probe = "import sys, baton.cli; sys.exit(1 if 'sqlalchemy' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", probe], env=cli.env).returncode == 0
    result = cli("--help", flows=False)
    assert result.code == 0
    for command in ("run", "runs", "inputs", "flows", "worker", "db"):
        assert command in result.out


# --- the main job --------------------------------------------------------------------------------


def test_run_repo_review_then_list_show_and_events(cli: Cli, project: Path) -> None:
    result = cli("run", "repo-review", "--input", f"path={project}", "--no-confirm", flows=False)
    assert result.code == 0, result.text
    assert "succeeded" in result.out
    assert "Traceback" not in result.text
    run_id = run_id_of(result)
    assert f"Review of {project}" in result.out  # the report's first lines

    listed, shown, events_out, later_out, flows, described = cli.many(
        ["runs", "ls"],
        ["runs", "show", run_id, "--events"],
        ["runs", "events", run_id],
        ["runs", "events", run_id, "--after", "3"],
        ["flows", "ls"],
        ["flows", "show", "repo-review"],
    )
    assert listed.code == 0, listed.text
    row = next(line for line in listed.out.splitlines() if run_id in line)
    assert "repo-review" in row and "succeeded" in row

    assert shown.code == 0, shown.text
    for word in ("collect", "architecture", "risks", "tests", "synthesis", "report", "run.succeeded"):
        assert word in shown.out

    events = [json.loads(line) for line in events_out.out.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "run.succeeded"
    assert [json.loads(line) for line in later_out.out.splitlines()] == events[3:]

    assert flows.code == 0 and "repo-review" in flows.out and "gated" in flows.out
    assert "required" in next(line for line in flows.out.splitlines() if "gated" in line)
    assert described.code == 0 and "synthesis" in described.out and "focus" in described.out


def test_run_waits_until_another_shell_confirms_it(cli: Cli) -> None:
    waiting = cli.start("run", "gated")
    run_id = waiting.wait_for(re.compile(r"baton runs confirm (run_[0-9a-f]{22})")).group(1)
    assert "needs_confirmation" in cli("runs", "show", run_id).out

    confirmed = cli("runs", "confirm", run_id)
    assert confirmed.code == 0, confirmed.text

    result = waiting.finish()
    assert result.code == 0, result.text
    assert "succeeded" in result.out
    assert "hello from gated" in result.out

    assert_clean_error(cli("runs", "confirm", run_id), 2, run_id, "succeeded")


def test_input_is_answered_from_another_shell_and_bad_answers_are_refused(cli: Cli) -> None:
    waiting = cli.start("run", "approval")
    request_id = waiting.wait_for(re.compile(r"baton inputs answer (inp_[0-9a-f]{22})")).group(1)

    pending, wrong_type, not_boolean, not_json, neither = cli.many(
        ["inputs", "ls"],
        ["inputs", "answer", request_id, "--value", '{"ok": "yes"}'],
        ["inputs", "answer", request_id, "--set", "ok=maybe"],
        ["inputs", "answer", request_id, "--value", "not json"],
        ["inputs", "answer", request_id],
    )
    assert pending.code == 0 and request_id in pending.out and "Ship the draft?" in pending.out
    assert_clean_error(wrong_type, 2, "ok: 'yes' is not of type 'boolean'")
    assert_clean_error(not_boolean, 2, "'ok'", "maybe")
    assert_clean_error(not_json, 2, "--value is not valid JSON")
    assert_clean_error(neither, 2, "--value", "--set")

    answered = cli("inputs", "answer", request_id, "--set", "ok=true")
    assert answered.code == 0, answered.text

    result = waiting.finish()
    assert result.code == 0, result.text
    assert "succeeded" in result.out
    run_id = run_id_of(result)

    shown, again = cli.many(["runs", "show", run_id], ["inputs", "answer", request_id, "--set", "ok=false"])
    assert '"published": true' in shown.out
    assert_clean_error(again, 2, request_id, "answered")


# --- bad input -----------------------------------------------------------------------------------


def test_bad_input_gets_one_clear_line_and_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    unknown, untyped, invalid, no_file, unreachable = cli.many(
        ["run", "no-such-flow"],
        ["run", "typed", "--input", "name=x", "--input", "count=abc"],
        ["run", "typed", "--input", "count=0", "--input", "extra=1"],
        ["run", "repo-review", "--flows", str(tmp_path / "missing.py")],
        ["run", "typed", "--input", "name=x", "--database", UNREACHABLE],
    )
    assert_clean_error(unknown, 2, "no-such-flow", "repo-review")
    assert_clean_error(untyped, 2, "'count': expected an integer, got 'abc'")
    assert_clean_error(
        invalid, 2, "'count': 0 is less than the minimum", "'name': required", "'extra': unexpected"
    )
    assert_clean_error(no_file, 2, "missing.py")
    assert_clean_error(unreachable, 1, "cannot reach the database", "127.0.0.1:1")
    assert not (cli.home / "baton.db").exists()  # not even an empty database was created

    listed, missing, sideways = cli.many(
        ["runs", "ls"], ["runs", "show", "run_nope"], ["runs", "ls", "--status", "x"]
    )
    assert listed.code == 0 and listed.out.strip() == "no runs"
    assert_clean_error(missing, 2, "run_nope", "not found")
    assert_clean_error(sideways, 2, "'x' is not a run status")


def test_confirming_a_running_run_is_refused_and_a_worker_finishes_it(cli: Cli) -> None:
    created, gated_created = cli.many(
        ["run", "typed", "--input", "name=x", "--no-follow"], ["run", "gated", "--no-follow"]
    )
    assert created.code == 0, created.text
    run_id, gated = run_id_of(created), run_id_of(gated_created)
    assert "running" in created.out  # promoted at once; no worker here yet
    assert "needs_confirmation" in gated_created.out

    refused, cancelled = cli.many(
        ["runs", "confirm", run_id], ["runs", "cancel", gated, "--reason", "changed my mind"]
    )
    assert_clean_error(refused, 2, run_id, "running")
    assert cancelled.code == 0 and "cancelled" in cancelled.out

    worked = cli("worker", "--until-idle", "--poll", "0.1")
    assert worked.code == 0, worked.text
    assert f"claimed {run_id}/only" in worked.err
    assert f"finished {run_id}/only attempt 1: succeeded" in worked.err

    retried, shown, again = cli.many(
        ["runs", "retry", run_id], ["runs", "show", gated], ["runs", "confirm", gated]
    )
    assert retried.code == 0, retried.text
    assert "retry of" in retried.out and any(i != run_id for i in RUN_ID.findall(retried.out))
    assert "changed my mind" in shown.out
    assert_clean_error(again, 2, gated, "cancelled")


def test_worker_stops_cleanly_on_sigterm(cli: Cli) -> None:
    worker = cli.start("worker", "--poll", "0.1")
    worker.wait_for(re.compile(r"worker \S+ started"))
    worker.proc.send_signal(signal.SIGTERM)
    result = worker.finish(timeout=15)
    assert result.code == 0, result.text
    assert "stopped after 0 step(s)" in result.err
    assert "Traceback" not in result.err


def test_db_upgrade_and_current(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home", database=f"sqlite:///{tmp_path / 'fresh.db'}")
    before = cli("db", "current")
    assert before.code == 1 and "none" in before.out and "baton db upgrade" in before.out
    upgraded = cli("db", "upgrade")
    assert upgraded.code == 0, upgraded.text
    assert "upgraded from empty" in upgraded.out and "(head)" in upgraded.out
    current, unreachable = cli.many(["db", "current"], ["db", "upgrade", "--database", UNREACHABLE])
    assert current.code == 0 and "(head)" in current.out
    assert_clean_error(unreachable, 1, "cannot reach the database")


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_run_end_to_end_on_postgres(tmp_path: Path, postgres_url: str, project: Path) -> None:
    cli = Cli(tmp_path / "home", database=postgres_url)
    result = cli("run", "repo-review", "--input", f"path={project}", "--no-confirm")
    assert result.code == 0, result.text
    assert "succeeded" in result.out
    run_id = run_id_of(result)
    listed = cli("runs", "ls")
    assert run_id in listed.out and "succeeded" in listed.out
    assert not (tmp_path / "home" / "baton.db").exists()
