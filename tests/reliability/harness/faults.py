"""Process faults by pid (SIGKILL, SIGSTOP, SIGCONT) and a procfs scan for marked survivors."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from tests.reliability.harness.flows import MARKER_ENV
from tests.reliability.harness.ledgers import DIR_ENV


def kill(pid: int, sig: int = signal.SIGKILL) -> bool:
    """Send `sig` to one process; False when it is already gone."""
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def stop(pid: int) -> bool:
    """SIGSTOP: the process keeps its sockets and leases but runs no code until `cont`."""
    return kill(pid, signal.SIGSTOP)


def cont(pid: int) -> bool:
    return kill(pid, signal.SIGCONT)


def _environ(pid: int) -> dict[str, str]:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
    return {}


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    return "X"


def marked_processes(
    contains: str = "", variable: str = MARKER_ENV, *, scope: str | Path | None = None
) -> dict[int, str]:
    """Live (not zombie) processes whose environment has `variable` with `contains` in it: pid → value.

    `scope`: only processes of one scenario (its ledger directory, which every process it starts
    inherits), so scenarios running side by side (pytest-xdist) never count each other's agents.

    Every process a reliability step spawns carries MARKER_ENV=<run>:<step>:<attempt>, inherited
    by its descendants, even those that left the process group; Baton's CLI engine sets
    BATON_AGENT_MARKER the same way (pass variable="BATON_AGENT_MARKER").
    """
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        environ = _environ(pid)
        value = environ.get(variable)
        if scope is not None and environ.get(DIR_ENV) != str(scope):
            continue
        if value is not None and contains in value and _state(pid) not in ("Z", "X"):
            found[pid] = value
    return found
