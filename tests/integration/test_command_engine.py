"""The `cli:NAME` engine against a real subprocess (tests/fakes/fake_agent.py).

Streaming, cancellation and timeout of the whole process tree (checked by pid and by the
BATON_AGENT_MARKER environment scan of /proc), read-only refusal before any spawn, read-only
arguments, a missing binary without fallback, non-zero exits with the stderr tail, JSON output.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from baton.agents.base import EngineUnavailable, OutputInvalid, PolicyRefused, StepRequest
from baton.agents.command import (
    MARKER_ENV,
    CliAgentConfig,
    CommandEngine,
    cli_agents_from_env,
    load_cli_agents,
)
from baton.domain.errors import StepFailed, UsageError

pytestmark = pytest.mark.slow

FAKE = str(Path(__file__).resolve().parents[1] / "fakes" / "fake_agent.py")


class FakeContext:
    """The StepContext surface an engine uses, recording what it is given."""

    def __init__(self) -> None:
        self.run_id = f"run-{uuid.uuid4().hex[:12]}"
        self.step_key = "work"
        self.attempt = 1
        self.inputs: dict[str, Any] = {}
        self.upstream: dict[str, Any] = {}
        self.emitted: list[tuple[float, str]] = []
        self.logs: list[str] = []

    @property
    def marker(self) -> str:
        return f"{self.run_id}:{self.step_key}"

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.emitted)

    def emit(self, text: str) -> None:
        self.emitted.append((time.monotonic(), text))

    def log(self, message: str) -> None:
        self.logs.append(message)

    def artifact(self, name: str, content: bytes | str, media_type: str = "text/plain") -> None:
        raise AssertionError("the cli engine attaches no artifacts")

    @property
    def cancelled(self) -> bool:
        return False


def fake_engine(*flags: str, **config: Any) -> CommandEngine:
    return CommandEngine(CliAgentConfig(name="fake", command=[sys.executable, FAKE, *flags], **config))


def step_request(tmp_path: Path, **fields: Any) -> StepRequest:
    values: dict[str, Any] = {
        "agent": "coder",
        "prompt": "fix the bug",
        "inputs": {},
        "upstream": {},
        "engine": "cli:fake",
        "workspace": str(tmp_path),
        "idempotency_key": "run-x:work",
    }
    values.update(fields)
    return StepRequest(**values)


def marked_processes(marker: str) -> list[int]:
    """Live processes whose environment carries BATON_AGENT_MARKER=marker (zombies have none)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/status") as handle:
            return any(line.startswith("State:") and "Z" in line for line in handle)
    except FileNotFoundError:
        return True


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def read_pids(path: Path) -> list[int]:
    await wait_until(path.exists, 5.0, "the fake agent's pid file")
    return pids_in(path)


def pids_in(path: Path) -> list[int]:
    pids = json.loads(path.read_text())
    return [pid for pid in (pids["pid"], pids["grandchild"], pids["escapee"]) if pid]


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.fixture
def spawns(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every subprocess the engine starts (the spawn audit of RELIABILITY.md R17)."""
    calls: list[tuple[Any, ...]] = []
    real = asyncio.create_subprocess_exec

    async def audited(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", audited)
    return calls


# --- streaming and output --------------------------------------------------------------------


async def test_stdout_streams_in_order_while_the_agent_runs(tmp_path: Path) -> None:
    ctx = FakeContext()
    engine = fake_engine("--lines", "5", "--delay", "0.1", "--no-newline", "done")
    result = await engine.run(step_request(tmp_path), ctx)
    finished = time.monotonic()

    expected = "".join(f"line {n}\n" for n in range(1, 6)) + "done"
    assert ctx.text == expected
    assert result.output == expected
    assert ctx.emitted[0][0] < finished - 0.3, "the first line arrived only at the end: not streamed"
    assert (result.engine, result.mode, result.model) == ("cli:fake", "read-write", None)
    assert any("exited with code 0" in line for line in ctx.logs)


async def test_json_output_is_parsed(tmp_path: Path) -> None:
    whole = await fake_engine("--json", '{"answer": 42}', output="json").run(
        step_request(tmp_path), FakeContext()
    )
    assert whole.output == {"answer": 42}

    ctx = FakeContext()
    after_progress = await fake_engine("--lines", "2", "--json", '{"ok": true}', output="json").run(
        step_request(tmp_path), ctx
    )
    assert after_progress.output == {"ok": True}
    assert ctx.text.startswith("line 1\nline 2\n")

    with pytest.raises(OutputInvalid, match=r"not JSON.*output: json") as caught:
        await fake_engine("--json", "certainly not json", output="json").run(
            step_request(tmp_path), FakeContext()
        )
    assert caught.value.retryable


async def test_nonzero_exit_fails_with_the_stderr_tail(tmp_path: Path) -> None:
    ctx = FakeContext()
    with pytest.raises(StepFailed) as caught:
        await fake_engine("--lines", "1", "--stderr", "boom: bad flag", "--exit", "3").run(
            step_request(tmp_path), ctx
        )
    assert caught.value.message == "fake exited with code 3: boom: bad flag"
    assert caught.value.retryable
    assert ctx.text == "line 1\n"
    assert any("exited with code 3" in line for line in ctx.logs)

    with pytest.raises(StepFailed) as long_stderr:
        await fake_engine("--stderr-bytes", "20000", "--exit", "1", stderr_tail_bytes=100).run(
            step_request(tmp_path), FakeContext()
        )
    tail = long_stderr.value.message.removeprefix("fake exited with code 1: ")
    assert len(tail) == 100
    assert tail.endswith("TAIL")


async def test_placeholders_fill_single_arguments_without_a_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_SECRET", "worker-secret")  # must stay with the worker
    prompt = "$(touch pwned) `touch pwned2`; echo {workspace} > x"
    engine = CommandEngine(
        CliAgentConfig(
            name="fake",
            command=[
                sys.executable,
                FAKE,
                "--echo-args",
                "--prompt",
                "{prompt}",
                "--model={model}",
                "{idempotency_key}",
                "attempt-{attempt}",
                "{workspace}",
            ],
            env={"FAKE_COLOUR": "blue"},
            model="default-model",
            output="json",
        )
    )
    ctx = FakeContext()
    result = await engine.run(
        step_request(tmp_path, prompt=prompt, attempt=2, settings={"model": "m-large"}), ctx
    )
    assert result.output["args"] == [
        "--echo-args",
        "--prompt",
        prompt,
        "--model=m-large",
        "run-x:work",
        "attempt-2",
        str(tmp_path),
    ]
    assert result.model == "m-large"
    assert result.output["cwd"] == str(tmp_path)
    env = result.output["env"]
    assert env[MARKER_ENV] == ctx.marker
    assert env["FAKE_COLOUR"] == "blue"
    assert env["BATON_IDEMPOTENCY_KEY"] == "run-x:work"
    assert "BATON_SECRET" not in env
    assert files_in(tmp_path) == []  # no shell ran: no `pwned*` nor `x`


async def test_the_prompt_can_go_through_stdin(tmp_path: Path) -> None:
    prompt = "a long prompt\nwith lines\n" * 50
    result = await fake_engine("--echo-stdin", stdin="{prompt}").run(
        step_request(tmp_path, prompt=prompt), FakeContext()
    )
    assert result.output == prompt


async def test_the_agent_reads_no_stdin_unless_configured(tmp_path: Path) -> None:
    # An agent that waits for input must not hang on, or read, the worker's own stdin.
    result = await fake_engine("--echo-stdin", timeout_s=5).run(step_request(tmp_path), FakeContext())
    assert result.output == ""


# --- read-only, fail closed ------------------------------------------------------------------


@pytest.mark.parametrize("read_only_args", [None, []])
async def test_read_only_is_refused_before_spawning_without_read_only_args(
    tmp_path: Path, spawns: list[tuple[Any, ...]], read_only_args: list[str] | None
) -> None:
    proof = tmp_path / "spawned"
    engine = fake_engine("--touch", str(proof), "--lines", "1", read_only_args=read_only_args)
    assert not engine.supports_read_only()
    ctx = FakeContext()
    with pytest.raises(PolicyRefused) as caught:
        await engine.run(step_request(tmp_path, read_only=True), ctx)
    assert caught.value.rule == "read_only: cli engine has no read_only_args"
    assert not caught.value.retryable
    assert "cli:fake" in caught.value.message and "read_only_args" in caught.value.message
    assert spawns == []
    assert not proof.exists()
    assert ctx.emitted == []


async def test_read_only_args_are_appended_in_read_only_mode(tmp_path: Path) -> None:
    engine = fake_engine("--echo-args", read_only_args=["--approval-mode", "plan"], output="json")
    assert engine.supports_read_only()

    read_only = await engine.run(step_request(tmp_path, read_only=True), FakeContext())
    assert read_only.output["args"] == ["--echo-args", "--approval-mode", "plan"]
    assert read_only.output["env"]["BATON_READ_ONLY"] == "1"
    assert read_only.mode == "read-only"

    writable = await engine.run(step_request(tmp_path), FakeContext())
    assert writable.output["args"] == ["--echo-args"]
    assert writable.mode == "read-write"


# --- missing binary: a clear failure, no fallback ----------------------------------------------


async def test_a_missing_binary_fails_clearly_without_fallback(
    tmp_path: Path, spawns: list[tuple[Any, ...]]
) -> None:
    not_executable = tmp_path / "agent.sh"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    cases = {
        "baton-no-such-agent-7f3a": "'baton-no-such-agent-7f3a' was not found on PATH",
        str(tmp_path / "missing" / "agent"): "does not exist",
        str(not_executable): "is not executable",
    }
    for program, problem in cases.items():
        ctx = FakeContext()
        engine = CommandEngine(CliAgentConfig(name="ghost", command=[program, "{prompt}"]))
        with pytest.raises(EngineUnavailable) as caught:
            await engine.run(step_request(tmp_path), ctx)
        message = caught.value.message
        assert message.startswith("cli:ghost: ") and problem in message
        assert "install it, or fix `command` of 'ghost' under cli_agents" in message
        assert not caught.value.retryable
        assert ctx.emitted == [] and ctx.logs == []
    assert spawns == []


async def test_a_placeholder_without_a_value_fails_before_spawning(
    tmp_path: Path, spawns: list[tuple[Any, ...]]
) -> None:
    engine = fake_engine("--model", "{model}")
    with pytest.raises(StepFailed, match=r"uses \{model\} but there is none; set `model`"):
        await engine.run(step_request(tmp_path), FakeContext())
    assert spawns == []


# --- cancellation and timeout stop the whole tree ------------------------------------------------


@pytest.mark.parametrize("trap_term", [False, True], ids=["plain", "traps-sigterm"])
async def test_cancel_kills_the_whole_process_tree_within_2s(tmp_path: Path, trap_term: bool) -> None:
    pidfile = tmp_path / "pids.json"
    flags = ["--lines", "1000", "--delay", "0.05", "--grandchild", "--escapee", "--pidfile", str(pidfile)]
    engine = fake_engine(*flags, *(["--trap-term"] if trap_term else []), grace_s=0.5)
    ctx = FakeContext()
    task = asyncio.create_task(engine.run(step_request(tmp_path), ctx))
    pids = await read_pids(pidfile)
    assert len(pids) == 3
    await wait_until(lambda: bool(ctx.emitted), 5.0, "the first line")
    assert sorted(marked_processes(ctx.marker)) == sorted(pids)

    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: all(map(is_gone, pids)), 2.0 - (time.monotonic() - cancelled_at), "no pid")
    elapsed = time.monotonic() - cancelled_at
    assert elapsed < 2.0
    if trap_term:
        assert elapsed >= 0.45, "the agent ignores SIGTERM: only the SIGKILL after the grace stops it"
    assert marked_processes(ctx.marker) == []


async def test_timeout_stops_the_tree_and_fails_the_step(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids.json"
    engine = fake_engine(
        *["--lines", "1000", "--delay", "0.05", "--grandchild", "--trap-term", "--pidfile", str(pidfile)],
        grace_s=0.5,
        timeout_s=1.0,
    )
    ctx = FakeContext()
    started = time.monotonic()
    with pytest.raises(StepFailed, match=r"cli:fake timed out after 1 s") as caught:
        await engine.run(step_request(tmp_path), ctx)
    elapsed = time.monotonic() - started
    assert caught.value.retryable
    assert 1.4 <= elapsed < 3.0  # the timeout, the grace for the SIGTERM it ignores, then SIGKILL
    pids = await read_pids(pidfile)
    assert all(map(is_gone, pids))
    assert marked_processes(ctx.marker) == []
    assert ctx.text.startswith("line 1\n")


async def test_what_the_agent_leaves_behind_is_killed_when_it_exits(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids.json"
    # The grandchild keeps the agent's stdout open for 60 s: the step must not wait for it.
    engine = fake_engine("--lines", "2", "--grandchild", "--escapee", "--pidfile", str(pidfile))
    ctx = FakeContext()
    started = time.monotonic()
    result = await engine.run(step_request(tmp_path), ctx)
    assert time.monotonic() - started < 3.0
    assert result.output == "line 1\nline 2\n"
    pids = await read_pids(pidfile)
    await wait_until(lambda: all(map(is_gone, pids)), 1.0, "the leftovers to be killed")
    assert marked_processes(ctx.marker) == []


# --- configuration ---------------------------------------------------------------------------


def test_load_cli_agents_reads_a_config_section() -> None:
    agents = load_cli_agents(
        {
            "gemini": {
                "command": "gemini --prompt {prompt} --model {model}",
                "read_only_args": ["--approval-mode", "plan"],
                "env": {"GEMINI_COLOUR": 0},
                "timeout_s": 600,
                "output": "json",
            },
            "local": {"command": ["/usr/bin/env", "my-agent", "{prompt}"], "cwd": "{workspace}/src"},
        }
    )
    gemini = agents["gemini"]
    assert gemini.command == ("gemini", "--prompt", "{prompt}", "--model", "{model}")
    assert gemini.read_only_args == ("--approval-mode", "plan")
    assert gemini.env == {"GEMINI_COLOUR": "0"}
    assert (gemini.timeout_s, gemini.grace_s, gemini.output) == (600.0, 5.0, "json")
    assert CommandEngine(gemini).spec == "cli:gemini"
    assert CommandEngine(gemini).supports_read_only()
    assert not CommandEngine(agents["local"]).supports_read_only()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({}, r"cli_agents\.bad: `command` is missing"),
        ({"command": []}, r"'bad': `command` is empty"),
        ({"command": ["a"], "read_only_arg": ["x"]}, r"cli_agents\.bad: unknown field\(s\) read_only_arg"),
        ({"command": ["a", "{promt}"]}, r"'bad': `command\[1\]` uses the unknown placeholder \{promt\}"),
        ({"command": ["{prompt}"]}, r"'bad': `command\[0\]`"),
        ({"command": ["a"], "read_only_args": ["--mode", "{model}"]}, r"`read_only_args\[1\]`.*placeholders"),
        ({"command": ["a"], "read_only_args": "--plan"}, r"`read_only_args` must be a list of strings"),
        ({"command": ["a"], "output": "xml"}, r"'bad': `output` must be 'text' or 'json'"),
        ({"command": ["a"], "grace_s": "5s"}, r"'bad': `grace_s` must be a number"),
        ({"command": ["a"], "timeout_s": 0}, r"'bad': `timeout_s` must be more than 0"),
        ({"command": ["a"], "env": {"X": {"nested": 1}}}, r"'bad': `env\.X` must be a string"),
        ({"command": ["a"], "env": {MARKER_ENV: "x"}}, r"'bad': `env` may not set BATON_AGENT_MARKER"),
        ({"command": ["a"], "stderr_tail_bytes": 0}, r"'bad': `stderr_tail_bytes` must be a positive"),
        ({"command": ["a", 3]}, r"'bad': `command`\[1\] must be a string"),
        ("a b", r"cli_agents\.bad must be a mapping"),
    ],
)
def test_config_errors_name_the_entry_and_field(entry: Any, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        load_cli_agents({"bad": entry})


def test_cli_agents_from_the_environment() -> None:
    assert cli_agents_from_env({}) == {}
    agents = cli_agents_from_env(
        {"BATON_CLI_AGENTS": json.dumps({"echo": {"command": ["echo", "{prompt}"]}})}
    )
    assert agents["echo"].command == ("echo", "{prompt}")
    with pytest.raises(UsageError, match="BATON_CLI_AGENTS is not valid JSON"):
        cli_agents_from_env({"BATON_CLI_AGENTS": "{nope"})
    with pytest.raises(UsageError, match=r"BATON_CLI_AGENTS\.echo: `command` is missing"):
        cli_agents_from_env({"BATON_CLI_AGENTS": json.dumps({"echo": {}})})
