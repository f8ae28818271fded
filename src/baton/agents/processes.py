"""Child processes of a step: own process group, killed with the worker, stopped as a group."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from baton.failpoints import failpoint

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGKILL when the worker thread dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr_tail: str


async def run_command(
    args: Sequence[str],
    *,
    on_line: Callable[[str], None] | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    grace_s: float = 5.0,
) -> CommandResult:
    """Run a command, streaming stdout lines; on cancellation stop its whole process group.

    The child leads its own session (so the group can be signalled at once) and carries a
    parent-death signal (so it cannot outlive a worker that is SIGKILLed).
    """
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    failpoint("during_subprocess")
    out: list[str] = []
    err = bytearray()

    async def read_stdout() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace")
            out.append(line)
            if on_line is not None:
                on_line(line)

    async def read_stderr() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(65536):
            err.extend(chunk)
            del err[:-8192]

    try:
        await asyncio.gather(read_stdout(), read_stderr())
        code = await proc.wait()
    except BaseException:
        await asyncio.shield(stop_group(proc, grace_s))
        raise
    return CommandResult(exit_code=code, stdout="".join(out), stderr_tail=err.decode(errors="replace"))


async def stop_group(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the group, wait up to `grace_s`, then SIGKILL whatever is left of it."""
    if proc.returncode is not None:
        _kill_group(proc.pid, signal.SIGKILL)  # grandchildren may still be there
        return
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        pass
    _kill_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 2.0)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
