"""Run one Baton worker in this process until SIGTERM/SIGINT (or until idle), for multi-process tests.

    python tests/integration/workerproc.py --database URL --flows PATH [--flows PATH2]
        [--concurrency N] [--lease S] [--poll S] [--reaper S] [--until-idle]

It prints `ready WORKER_ID pid=PID` on stdout as the worker starts. The tests also import this
file for `spawn_worker`, `stop_worker`, `wait_until` and `pid_gone`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from baton.engine.worker import WorkerSettings
from baton.runtime import open_runtime

HERE = Path(__file__).resolve()


def spawn_worker(
    database: str,
    flows: str | Path,
    *,
    concurrency: int = 8,
    lease: float = 30.0,
    poll: float = 1.0,
    reaper: float = 5.0,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start this script as a worker process in its own session (so a test can kill it alone)."""
    args = [sys.executable, str(HERE), "--database", database, "--flows", str(flows)]
    args += [f"--concurrency={concurrency}", f"--lease={lease}", f"--poll={poll}", f"--reaper={reaper}"]
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM, wait; SIGKILL if it does not stop in time. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


async def wait_until(
    check: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def pid_gone(pid: int) -> bool:
    """True when no such process exists any more, or it is a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("State:"):
                    return line.split()[1] in ("Z", "X")
    except FileNotFoundError:
        return True
    return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True)
    parser.add_argument(
        "--flows", action="append", required=True, help="a module name or .py path; repeatable"
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--reaper", type=float, default=5.0)
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--heartbeat", type=float, default=None, help="default: a quarter of the lease")
    parser.add_argument("--until-idle", action="store_true")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> int:
    settings = WorkerSettings(
        concurrency=args.concurrency,
        lease_s=args.lease,
        poll_s=args.poll,
        reaper_s=args.reaper,
        drain_s=args.drain,
        heartbeat=args.heartbeat,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_runtime(args.database, flow_sources=args.flows, upgrade=False) as rt:
        worker = rt.worker(settings)
        task = asyncio.create_task(worker.run(until_idle=args.until_idle), name="worker")
        print(f"ready {worker.id} pid={os.getpid()}", flush=True)
        stopper = asyncio.create_task(stop.wait(), name="stop")
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            worker.stop()
        try:
            await task
        finally:
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
        print(f"stopped {worker.id} steps_run={worker.steps_run}", flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("BATON_LOG_LEVEL", "WARNING"),
        stream=sys.stderr,
        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(asyncio.run(main(parse_args())))
