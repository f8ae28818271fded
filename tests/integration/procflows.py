"""Flows for the multi-process tests (crash, race, cancel), loaded by workers from this file's path.

Every step that matters appends one line `run_id step_key attempt pid` to the ledger file named by
the run's `ledger` input. Lines are written with O_APPEND in a single write, so lines from several
processes never interleave, and the tests can count executions across processes.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from baton.flows.spec import Flow

PATH = Path(__file__).resolve()
RACE_WIDTH = 10


def record(ctx: Any) -> None:
    """Append this attempt's ledger line (if the run names a ledger)."""
    ledger = ctx.inputs.get("ledger")
    if not ledger:
        return
    line = f"{ctx.run_id} {ctx.step_key} {ctx.attempt} {os.getpid()}\n".encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_ledger(path: str | Path) -> list[tuple[str, str, int, int]]:
    """The ledger's lines as (run_id, step_key, attempt, pid)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        run_id, key, attempt, pid = line.split()
        rows.append((run_id, key, int(attempt), int(pid)))
    return rows


# --- crash: a chain whose middle step runs long in a subprocess -------------------------------

chain = Flow("proc_chain", title="Three steps, the middle one slow")


@chain.step()
def first(ctx: Any) -> str:
    record(ctx)
    return "one"


@chain.step(needs=["first"], max_attempts=3)
async def second(ctx: Any) -> str:
    """Sleeps in a child process that writes its pid to `pid_file` first.

    Attempt 1 sleeps `first_sleep_s` (default: `sleep_s`), later attempts `sleep_s` (default 3), so
    a test can tell a child killed with its worker from one that merely finished. The shell
    `exec`s sleep, so the recorded pid is the worker's direct child, which has the parent-death signal.
    """
    record(ctx)
    seconds = float(ctx.inputs.get("sleep_s", 3))
    if ctx.attempt == 1:
        seconds = float(ctx.inputs.get("first_sleep_s", seconds))
    pid_file = ctx.inputs.get("pid_file") or os.devnull
    script = 'echo $$ >> "$1"; exec sleep "$2"'
    result = await ctx.run_command(["sh", "-c", script, "sh", f"{pid_file}", f"{seconds:g}"])
    if result.exit_code != 0:
        raise RuntimeError(f"sleep exited with {result.exit_code}")
    return "two"


@chain.step(needs=["second"])
def third(ctx: Any) -> str:
    record(ctx)
    return "three"


# --- race: many independent no-op steps ---------------------------------------------------------

wide = Flow("proc_wide", title=f"{RACE_WIDTH} independent no-op steps")


def _noop(ctx: Any) -> int:
    record(ctx)
    # A few milliseconds of work (on a worker thread): one worker cannot drain every step before
    # the others, whose claims wait on SQLite's write lock, get a turn, so the workers really race.
    time.sleep(0.005)
    return ctx.attempt


for _i in range(RACE_WIDTH):
    wide.step(f"w{_i:02d}")(_noop)


# --- cancel: a step that would take a minute ---------------------------------------------------

sleeper = Flow("proc_sleep", title="One step that sleeps for a long time")


@sleeper.step(timeout_s=600)
async def nap(ctx: Any) -> str:
    record(ctx)
    await asyncio.sleep(float(ctx.inputs.get("sleep_s", 60)))
    return "rested"


subproc = Flow("proc_subprocess", title="A step whose subprocess spawns a grandchild")


@subproc.step(timeout_s=600)
async def spawn(ctx: Any) -> str:
    """`sh` starts `sleep 60` in the background, writes `CHILD GRANDCHILD` pids, then waits."""
    record(ctx)
    seconds = float(ctx.inputs.get("sleep_s", 60))
    pid_file = ctx.inputs["pid_file"]
    script = 'sleep "$2" & echo "$$ $!" > "$1.tmp" && mv "$1.tmp" "$1"; wait'
    result = await ctx.run_command(["sh", "-c", script, "sh", pid_file, f"{seconds:g}"])
    return f"exit {result.exit_code}"


FLOWS = [chain, wide, sleeper, subproc]
