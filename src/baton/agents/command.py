"""Command-line agents (`cli:NAME`): a configured argv template run as its own process group.

A CLI agent is declared once (`cli_agents:` in agents.yaml, or the BATON_CLI_AGENTS environment
variable as JSON) and run per step:

- the `command` template is filled per argument (`{prompt}`, `{persona}`, `{workspace}`, `{model}`,
  `{attempt}`, `{idempotency_key}`, `{feedback}`, `{inputs}`, `{upstream}`) and executed directly,
  never through a shell, so nothing in a prompt can become another argument or a shell command;
- under a read-only policy the engine's `read_only_args` are appended last (so they win over earlier
  flags in last-wins parsers); an engine without them is refused before anything is spawned
  (RELIABILITY.md I13/R17: fail closed, no fallback);
- stdout streams to `ctx.emit` as it arrives; the exit code and the stderr tail are recorded;
- cancellation and timeout stop the whole process group: SIGTERM, `grace_s`, SIGKILL (I8). Whatever
  the command leaves behind when it exits is killed too: the step owns its process tree. Every process
  carries `BATON_AGENT_MARKER=<run_id>:<step_key>` in its environment, so survivors can be found in
  /proc, and a per-spawn id that lets the engine find processes that left the group with setsid.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from baton.agents import sandbox
from baton.agents.base import (
    Engine,
    EngineUnavailable,
    OutputInvalid,
    PolicyRefused,
    StepContext,
    StepRequest,
    StepResult,
)
from baton.agents.processes import _die_with_parent, stop_group
from baton.domain.errors import StepFailed, UsageError
from baton.redaction import is_secret_name

#: Every process a CLI agent spawns carries `BATON_AGENT_MARKER=<run_id>:<step_key>`.
MARKER_ENV = "BATON_AGENT_MARKER"
#: ...and a random id per spawn: what the clean-up sweep looks for (a marker may be shared by attempts).
SPAWN_ENV = "BATON_AGENT_SPAWN"
#: ...and `<worker pid>:<its start time>`: an agent whose worker is gone is an orphan (`sweep_orphans`).
OWNER_ENV = "BATON_AGENT_OWNER"
#: The environment variable holding CLI agents as JSON: `{"NAME": {"command": [...], ...}}`.
CLI_AGENTS_ENV = "BATON_CLI_AGENTS"

PLACEHOLDERS = frozenset(
    {
        "prompt",
        "persona",
        "workspace",
        "model",
        "attempt",
        "idempotency_key",
        "feedback",
        "inputs",
        "upstream",
    }
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELDS = (
    "command",
    "read_only_args",
    "env",
    "cwd",
    "grace_s",
    "timeout_s",
    "output",
    "stderr_tail_bytes",
    "model",
    "stdin",
    "pass_env",
)

#: After the command exits, how long output still in flight may take to arrive before whatever it
#: left holding its stdout (a background grandchild) is killed.
_DRAIN_S = 0.5
_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class CliAgentConfig:
    """One command-line agent. Lists given for `command` and `read_only_args` are stored as tuples."""

    name: str
    #: argv template; placeholders are filled per argument; the first item names the binary
    command: Sequence[str]
    #: appended in read-only mode, e.g. ("--approval-mode", "plan"); None: read-only cannot be proven
    read_only_args: Sequence[str] | None = None
    #: extra environment variables for the command (inherited BATON_* variables are not passed on)
    env: Mapping[str, str] = field(default_factory=dict)
    #: working directory (placeholders allowed); default: the step's workspace
    cwd: str | None = None
    #: seconds between SIGTERM and SIGKILL of the process group on cancel or timeout
    grace_s: float = 5.0
    #: the engine's own time limit for one run; None: only the step's timeout applies
    timeout_s: float | None = None
    #: "text": stdout is the output; "json": stdout (or its last non-empty line) parsed as JSON
    output: Literal["text", "json"] = "text"
    #: how much of the end of stderr is kept for the failure message and the log
    stderr_tail_bytes: int = 4096
    #: `{model}` when the agent's settings name no model
    model: str | None = None
    #: template written to the command's stdin (e.g. "{prompt}" for long prompts); None: /dev/null
    stdin: str | None = None
    #: inherited variables passed on although their names say they hold secrets (e.g. OPENAI_API_KEY
    #: for an agent that calls the model itself); every other `*_API_KEY`, `*_TOKEN`… is withheld
    pass_env: Sequence[str] = ()

    def __post_init__(self) -> None:
        where = f"cli agent {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise UsageError(
                f"cli agent name {self.name!r} is not valid: use letters, digits, '_', '.' and '-' "
                "(the engine is then named cli:NAME)"
            )
        command = _strings(self.command, f"{where}: `command`")
        if not command:
            raise UsageError(f"{where}: `command` is empty; give the program and its arguments")
        if _PLACEHOLDER.search(command[0]):
            raise UsageError(
                f"{where}: `command[0]` ({command[0]!r}) must name the program, without placeholders"
            )
        for index, arg in enumerate(command):
            _check_placeholders(arg, f"{where}: `command[{index}]`")
        object.__setattr__(self, "command", command)
        if self.read_only_args is not None:
            ro = _strings(self.read_only_args, f"{where}: `read_only_args`")
            for index, arg in enumerate(ro):
                if _PLACEHOLDER.search(arg):
                    # R17: nothing a run supplies may change how read-only mode is requested
                    raise UsageError(
                        f"{where}: `read_only_args[{index}]` ({arg!r}) may not contain placeholders"
                    )
            object.__setattr__(self, "read_only_args", ro or None)
        if not isinstance(self.env, Mapping):
            raise UsageError(f"{where}: `env` must be a mapping of variable names to strings")
        env: dict[str, str] = {}
        given: Mapping[Any, Any] = self.env
        for key, value in given.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise UsageError(f"{where}: `env` key {key!r} is not a valid variable name")
            if key.startswith("BATON_AGENT_"):
                raise UsageError(f"{where}: `env` may not set {key}: Baton sets BATON_AGENT_* itself")
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise UsageError(f"{where}: `env.{key}` must be a string, got {type(value).__name__}")
            env[key] = str(value)
        object.__setattr__(self, "env", env)
        passed = _strings(self.pass_env, f"{where}: `pass_env`")
        for name in passed:
            if not _ENV_NAME.match(name):
                raise UsageError(f"{where}: `pass_env` entry {name!r} is not a valid variable name")
        object.__setattr__(self, "pass_env", passed)
        for name in ("cwd", "model", "stdin"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise UsageError(f"{where}: `{name}` must be a string, got {type(value).__name__}")
        if self.cwd is not None:
            _check_placeholders(self.cwd, f"{where}: `cwd`")
        if self.stdin is not None:
            _check_placeholders(self.stdin, f"{where}: `stdin`")
        object.__setattr__(self, "grace_s", _number(self.grace_s, f"{where}: `grace_s`", minimum=0.0))
        if self.timeout_s is not None:
            timeout = _number(self.timeout_s, f"{where}: `timeout_s`", minimum=0.0)
            if timeout == 0:
                raise UsageError(f"{where}: `timeout_s` must be more than 0 (leave it out for no limit)")
            object.__setattr__(self, "timeout_s", timeout)
        if self.output not in ("text", "json"):
            raise UsageError(f"{where}: `output` must be 'text' or 'json', got {self.output!r}")
        tail = self.stderr_tail_bytes
        if isinstance(tail, bool) or not isinstance(tail, int) or tail <= 0:
            raise UsageError(f"{where}: `stderr_tail_bytes` must be a positive integer, got {tail!r}")

    @property
    def spec(self) -> str:
        return f"cli:{self.name}"


def load_cli_agents(
    mapping: Mapping[str, Any] | None, *, source: str = "cli_agents"
) -> dict[str, CliAgentConfig]:
    """CLI agents from a config mapping `{NAME: {command: [...], read_only_args: [...], ...}}`.

    `command` may also be one string, split like a shell would (shlex) but never run by one.
    Errors are UsageErrors naming `source`, the entry and the field.
    """
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise UsageError(
            f"{source} must be a mapping of agent names to settings, got {type(mapping).__name__}"
        )
    agents: dict[str, CliAgentConfig] = {}
    for name, entry in mapping.items():
        where = f"{source}.{name}"
        if not isinstance(entry, Mapping):
            raise UsageError(f"{where} must be a mapping with at least `command`, got {type(entry).__name__}")
        unknown = sorted(str(key) for key in entry if key not in _FIELDS)
        if unknown:
            raise UsageError(
                f"{where}: unknown field(s) {', '.join(unknown)}; the fields are {', '.join(_FIELDS)}"
            )
        if "command" not in entry:
            raise UsageError(f"{where}: `command` is missing; give the program and its arguments as a list")
        values = dict(entry)
        if isinstance(values["command"], str):
            try:
                values["command"] = shlex.split(values["command"])
            except ValueError as error:
                raise UsageError(f"{where}: `command` cannot be split into arguments: {error}") from error
        try:
            agents[str(name)] = CliAgentConfig(name=str(name), **values)
        except UsageError as error:
            raise UsageError(f"{source}: {error.message}") from error
        except TypeError as error:  # a field given with the wrong shape, e.g. a list for grace_s
            raise UsageError(f"{where}: {error}") from error
    return agents


def cli_agents_from_env(environ: Mapping[str, str] | None = None) -> dict[str, CliAgentConfig]:
    """CLI agents from BATON_CLI_AGENTS (JSON); none when the variable is unset or empty."""
    raw = (os.environ if environ is None else environ).get(CLI_AGENTS_ENV, "").strip()
    if not raw:
        return {}
    try:
        mapping = json.loads(raw)
    except json.JSONDecodeError as error:
        raise UsageError(f"{CLI_AGENTS_ENV} is not valid JSON: {error}") from error
    return load_cli_agents(mapping, source=CLI_AGENTS_ENV)


class CommandEngine(Engine):
    """Runs a `CliAgentConfig` for a step. Never falls back to another engine."""

    def __init__(self, config: CliAgentConfig) -> None:
        self.config = config
        self.spec = config.spec

    def supports_read_only(self) -> bool:
        return bool(self.config.read_only_args)

    async def run(self, request: StepRequest, ctx: StepContext) -> StepResult:
        config = self.config
        launch = self._prepare(request, ctx)  # refusals and config problems: nothing spawned yet
        extra = f" with {shlex.join(config.read_only_args or ())}" if request.read_only else ""
        ctx.log(f"{self.spec}: starting {launch.argv[0]} ({launch.mode}{extra}) in {launch.cwd}")
        # I13/R17: read-only is a kernel boundary proven before the spawn, not only the agent's flags.
        jail = await sandbox.prove(launch.cwd) if request.read_only else None
        if jail is not None:
            launch.env["TMPDIR"] = jail.scratch
        started = time.monotonic()
        try:
            async with asyncio.timeout(config.timeout_s):
                finished = await _run_process(
                    launch.argv,
                    cwd=launch.cwd,
                    env=launch.env,
                    stdin=launch.stdin,
                    on_text=ctx.emit,
                    grace_s=config.grace_s,
                    tail_bytes=config.stderr_tail_bytes,
                    spawn_id=launch.env[SPAWN_ENV],
                    preexec=jail.preexec(_die_with_parent) if jail is not None else _die_with_parent,
                )
        except TimeoutError:
            # the process group has been stopped by now (SIGTERM, grace, SIGKILL)
            raise StepFailed(
                f"{self.spec} timed out after {config.timeout_s:g} s (its `timeout_s`); "
                "its process group was stopped",
                retryable=True,
            ) from None
        except OSError as error:
            raise _spawn_error(error, launch.argv[0], self.spec) from error
        except subprocess.SubprocessError as error:  # the sandbox setup failed in the child: no exec
            raise sandbox.Unenforceable(f"the sandbox could not be applied ({error})") from error
        finally:
            if jail is not None:
                shutil.rmtree(jail.scratch, ignore_errors=True)

        elapsed = time.monotonic() - started
        code, tail = finished.exit_code, finished.stderr_tail.strip()
        ctx.log(f"{self.spec} {_describe_exit(code)} after {elapsed:.1f} s")
        if code != 0:
            raise StepFailed(
                f"{config.name} {_describe_exit(code)}: {tail or '(no stderr output)'}", retryable=True
            )
        if tail:
            ctx.log(f"{self.spec} stderr (last {config.stderr_tail_bytes} bytes): {tail}")
        output: Any = finished.stdout
        if config.output == "json":
            output = _parse_json(finished.stdout, self.spec)
        return StepResult(output=output, engine=self.spec, model=launch.model, mode=launch.mode)

    def _prepare(self, request: StepRequest, ctx: StepContext) -> _Launch:
        """The argv, directory and environment of this run, or the error that stops it unspawned."""
        config = self.config
        if request.read_only and not config.read_only_args:
            # I13: refuse before spawning anything; declared arguments are the only proof we accept
            raise PolicyRefused(
                f"the run's policy is read-only and engine {self.spec!r} declares no read_only_args, "
                "so it cannot be started in a read-only mode; it was not started and no other engine "
                f"is used instead. Fix: declare `read_only_args` for {config.name!r} under cli_agents "
                "(the arguments that make the agent read-only, e.g. ['--approval-mode', 'plan'])",
                rule="read_only: cli engine has no read_only_args",
            )
        model = str(request.settings.get("model") or config.model or "") or None
        values = _values(request, model)
        argv = [_fill(arg, values, self.spec, "command") for arg in config.command]
        read_only = bool(request.read_only)
        if read_only:
            argv.extend(config.read_only_args or ())
        cwd = _fill(config.cwd, values, self.spec, "cwd") if config.cwd is not None else request.workspace
        cwd = os.path.abspath(cwd or os.getcwd())
        if not os.path.isdir(cwd):
            raise StepFailed(
                f"{self.spec}: the working directory {cwd!r} does not exist; "
                "set the step's workspace or `cwd` for this cli agent",
                retryable=False,
            )
        env = self._environment(ctx, request, read_only)
        argv[0] = _resolve_binary(argv[0], cwd, env.get("PATH"), self.spec)
        stdin = _fill(config.stdin, values, self.spec, "stdin").encode() if config.stdin is not None else None
        mode = "read-only" if read_only else "read-write"
        return _Launch(argv=argv, cwd=cwd, env=env, stdin=stdin, model=model, mode=mode)

    def _environment(self, ctx: StepContext, request: StepRequest, read_only: bool) -> dict[str, str]:
        # Inherited BATON_* variables (database URLs, secrets, tokens) stay with the worker; an agent
        # that needs one gets it through its `env`. So do model keys and other secrets, unless the
        # agent declares them in `pass_env`: an agent that prints its environment must not leak them.
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("BATON_") and (not is_secret_name(key) or key in self.config.pass_env)
        }
        env.update(self.config.env)
        env.update(
            {
                MARKER_ENV: f"{ctx.run_id}:{ctx.step_key}",
                SPAWN_ENV: secrets.token_hex(8),
                OWNER_ENV: _OWNER,
                "BATON_RUN_ID": ctx.run_id,
                "BATON_STEP_KEY": ctx.step_key,
                "BATON_ATTEMPT": str(request.attempt),
                "BATON_IDEMPOTENCY_KEY": request.idempotency_key,
                "BATON_READ_ONLY": "1" if read_only else "0",
            }
        )
        return env


# --- running the process ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Launch:
    argv: list[str]
    cwd: str
    env: dict[str, str]
    stdin: bytes | None
    model: str | None
    mode: str


@dataclass(frozen=True, slots=True)
class _Finished:
    exit_code: int
    stdout: str
    stderr_tail: str


async def _run_process(
    argv: Sequence[str],
    *,
    cwd: str | None,
    env: Mapping[str, str],
    stdin: bytes | None,
    on_text: Callable[[str], None],
    grace_s: float,
    tail_bytes: int,
    spawn_id: str,
    preexec: Callable[[], None] = _die_with_parent,
) -> _Finished:
    """Run argv in a new session, streaming stdout; stop its group on cancellation, sweep it at the end.

    Written here rather than with engine.processes.run_command (whose group stop it reuses) because
    a CLI agent also needs: stdin closed or fed, stdout read in chunks (no 64 KiB line limit, partial
    lines stream), a configurable stderr tail, and an end that does not wait for a grandchild holding
    stdout open, with whatever the command left behind killed.
    """
    proc: asyncio.subprocess.Process | None = None
    pumps: asyncio.Future[Any] | None = None
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,  # the child leads its own group: one signal reaches its tree
            preexec_fn=preexec,  # dies with the worker (I8); read-only: the Landlock sandbox (I13)
        )
        out: list[str] = []
        err = bytearray()
        pumps = asyncio.gather(
            _pump_stdout(proc, out, on_text), _pump_stderr(proc, err, tail_bytes), _feed(proc, stdin)
        )
        await _until_exit(proc, pumps)
        await asyncio.wait({pumps}, timeout=_DRAIN_S)
        if pumps.done():
            pumps.result()  # surface a reader's error (for example from `on_text`)
    finally:
        if proc is not None:
            # Stop the group (SIGTERM, grace, SIGKILL if still running; SIGKILL of leftovers once the
            # command has exited) and sweep escapees, in a task of its own: a second cancellation
            # must not cut the clean-up short.
            cleanup = asyncio.ensure_future(_stop(proc, pumps, grace_s, spawn_id))
            await asyncio.shield(cleanup)
        else:
            _sweep(spawn_id, signal.SIGKILL)
    assert proc.returncode is not None  # _until_exit returns only once the child has been reaped
    return _Finished(proc.returncode, "".join(out), err.decode(errors="replace"))


async def _until_exit(proc: asyncio.subprocess.Process, pumps: asyncio.Future[Any]) -> None:
    """Wait until the command has exited, even if something it started still holds its pipes.

    Process.wait() returns only once the pipes are closed too, so the exit is watched by polling
    `returncode`, which is set as soon as the child is reaped.
    """
    while proc.returncode is None:
        if pumps.done():
            pumps.result()  # surface a reader's error
            await proc.wait()
            return
        await asyncio.wait({pumps}, timeout=_POLL_S)


async def _stop(
    proc: asyncio.subprocess.Process, pumps: asyncio.Future[Any] | None, grace_s: float, spawn_id: str
) -> None:
    running = proc.returncode is None
    if running:
        _sweep(spawn_id, signal.SIGTERM)  # reaches processes that left the group, too
    await stop_group(proc, grace_s)
    _sweep(spawn_id, signal.SIGKILL)
    if pumps is not None and not pumps.done():
        await asyncio.wait({pumps}, timeout=1.0)
        pumps.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pumps
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 1.0)


async def _pump_stdout(
    proc: asyncio.subprocess.Process, out: list[str], on_text: Callable[[str], None]
) -> None:
    assert proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        chunk = await proc.stdout.read(65536)
        text = decoder.decode(chunk, final=not chunk)
        if text:
            out.append(text)
            on_text(text)
        if not chunk:
            return


async def _pump_stderr(proc: asyncio.subprocess.Process, err: bytearray, tail_bytes: int) -> None:
    assert proc.stderr is not None
    while chunk := await proc.stderr.read(65536):
        err.extend(chunk)
        del err[:-tail_bytes]


async def _feed(proc: asyncio.subprocess.Process, data: bytes | None) -> None:
    if data is None or proc.stdin is None:
        return
    try:
        proc.stdin.write(data)
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command did not read its input; its exit code says whether that matters
    finally:
        with contextlib.suppress(Exception):
            proc.stdin.close()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (with the pid, a unique identity), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


_OWNER = f"{os.getpid()}:{_start_time(os.getpid())}"


def sweep_orphans() -> int:
    """SIGKILL agent processes whose worker is gone; returns how many (I8).

    The parent-death signal reaches only an agent's direct child: when a worker is SIGKILLed, the
    grandchildren in its group (or that left it with setsid) would live on. Every worker on the host
    runs this sweep with its reaper, so they die within a reaper period of any live worker.
    """
    prefix = f"{OWNER_ENV}=".encode()
    hits = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                variables = handle.read().split(b"\0")
            owner = next((v[len(prefix) :] for v in variables if v.startswith(prefix)), None)
        except OSError:
            continue
        if owner is None:
            continue
        pid, _, started = owner.decode(errors="replace").partition(":")
        if pid.isdigit() and _start_time(int(pid)) == started:
            continue  # its worker is alive and owns it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(entry), signal.SIGKILL)
            hits += 1
    return hits


def _sweep(spawn_id: str, sig: int) -> int:
    """Signal every process of ours whose environment carries this spawn's id; returns how many."""
    needle = f"{SPAWN_ENV}={spawn_id}".encode()
    hits = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0  # not Linux: the process group is all we can reach
    me = os.getpid()
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                variables = handle.read().split(b"\0")
        except OSError:
            continue  # gone, or not ours
        if needle in variables:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), sig)
                hits += 1
    return hits


# --- helpers ---------------------------------------------------------------------------------


def _values(request: StepRequest, model: str | None) -> dict[str, str | None]:
    prompt = request.prompt
    if request.feedback:
        prompt = f"{prompt}\n\nThe previous attempt failed: {request.feedback}"
    return {
        "prompt": prompt,
        "persona": request.persona,
        "workspace": request.workspace,
        "model": model,
        "attempt": str(request.attempt),
        "idempotency_key": request.idempotency_key,
        "feedback": request.feedback or "",
        "inputs": json.dumps(dict(request.inputs), default=str),
        "upstream": json.dumps(dict(request.upstream), default=str),
    }


def _fill(template: str, values: Mapping[str, str | None], spec: str, field_name: str) -> str:
    """Substitute known placeholders in one argument, in one pass: values are never re-read."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:  # _check_placeholders rejected unknown names when the config was made
            return match.group(0)
        value = values[key]
        if value is None:
            fix = (
                "give the step a workspace (input `workspace` or BATON_WORKSPACE)"
                if key == "workspace"
                else "set `model` in the agent's settings or in the cli agent's config"
            )
            raise StepFailed(
                f"{spec}: `{field_name}` uses {{{key}}} but there is none; {fix}", retryable=False
            )
        return value

    return _PLACEHOLDER.sub(replace, template)


def _resolve_binary(program: str, cwd: str, path: str | None, spec: str) -> str:
    """An absolute path to an executable, or EngineUnavailable saying how to fix it."""
    name = spec.partition(":")[2]
    fix = f"install it, or fix `command` of {name!r} under cli_agents (agents.yaml or {CLI_AGENTS_ENV})"
    if os.sep in program:
        candidate = program if os.path.isabs(program) else os.path.join(cwd, program)
        if not os.path.isfile(candidate):
            raise EngineUnavailable(
                f"{spec}: the program {candidate!r} does not exist; {fix}", retryable=False
            )
        if not os.access(candidate, os.X_OK):
            raise EngineUnavailable(
                f"{spec}: the program {candidate!r} is not executable; {fix} (or chmod +x it)",
                retryable=False,
            )
        return os.path.abspath(candidate)
    found = shutil.which(program, path=path)
    if found is None:
        raise EngineUnavailable(
            f"{spec}: the program {program!r} was not found on PATH; {fix}. No other engine is used instead.",
            retryable=False,
        )
    return os.path.abspath(found)


def _spawn_error(error: OSError, program: str, spec: str) -> StepFailed:
    if error.errno == errno.E2BIG:
        return StepFailed(
            f"{spec}: the command line is too long for the system ({error.strerror}); pass the prompt "
            "on standard input instead: set `stdin: '{prompt}'` and drop {prompt} from `command`",
            retryable=False,
        )
    return EngineUnavailable(f"{spec}: {program!r} could not be started: {error}", retryable=False)


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name} (exit code {code})"
    return f"exited with code {code}"


def _parse_json(text: str, spec: str) -> Any:
    """The whole of stdout as JSON, else its last non-empty line (progress lines may come first)."""
    if not text.strip():
        raise OutputInvalid(f"{spec} printed nothing; its config says `output: json`")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1:
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(lines[-1])
        raise OutputInvalid(
            f"{spec} printed output that is not JSON ({error.msg}: line {error.lineno} column "
            f"{error.colno}); its config says `output: json`. Output begins: {text[:200]!r}"
        ) from error


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise UsageError(f"{where} must be a list of strings, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise UsageError(f"{where}[{index}] must be a string, got {type(item).__name__}: {item!r}")
    return tuple(value)


def _number(value: Any, where: str, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise UsageError(f"{where} must be a number of seconds, at least {minimum:g}; got {value!r}")
    return float(value)


def _check_placeholders(template: str, where: str) -> None:
    for match in _PLACEHOLDER.finditer(template):
        if match.group(1) not in PLACEHOLDERS:
            raise UsageError(
                f"{where} uses the unknown placeholder {match.group(0)}; "
                f"the placeholders are {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}"
            )
