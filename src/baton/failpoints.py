"""Named crash points for the reliability suite: `BATON_FAILPOINT=name:once` exits the process there.

Production code calls `failpoint("after_claim_commit")` at its commit boundaries. When
BATON_FAILPOINT is unset (always, outside the test suite) `failpoint` is bound at import to a
function that does nothing, so the hot path pays one call and nothing else.

    BATON_FAILPOINT=NAME[:MODE][,NAME[:MODE]...]

MODE is one of:
  `once`      (default) exit once per scenario: the first process to reach NAME creates the marker
              file `NAME.fired` in BATON_FAILPOINT_DIR (atomically, O_EXCL) and exits; every later
              pass, in this process or in a restarted one, goes on. Without BATON_FAILPOINT_DIR the
              marker is kept in memory, so "once" means once per process.
  `always`    exit every time (a poison point: the process can never get past it).
  `sleep=S`   sleep S seconds there instead of exiting (to widen a race window on purpose).

Exiting is `os._exit(137)`: no clean-up, no flushing, no `finally` blocks, like a SIGKILL.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

ENV = "BATON_FAILPOINT"
DIR_ENV = "BATON_FAILPOINT_DIR"
EXIT_CODE = 137

#: Every failpoint production code declares, with where it sits. An unknown name is an error.
KNOWN: Mapping[str, str] = {
    "after_claim_commit": "worker: a claim (and its step.started events) committed, the step not started",
    "before_claim_update": "test claims only: between reading claimable steps and claiming them",
    "after_model_response": "agent step: the engine answered, the result not yet committed",
    "after_step_commit": "worker: a step's result committed, the next claim/flush not yet done",
    "during_subprocess": "code step: its subprocess is running",
    "in_heartbeat": "worker: inside the heartbeat transaction, before it commits",
    "in_cancel": "API/lifecycle: inside the cancel transaction, before it commits",
    "in_resume": "API/lifecycle: inside the resume transaction, before it commits",
    "in_retry": "API/lifecycle: inside the retry transaction, before it commits",
    "in_reaper_reclaim": "reaper: inside a reclaim transaction, before it commits",
    "after_run_insert": "run creation: the run committed, the response not yet sent",
    "after_completion_before_ack": "API: a transition committed, the HTTP response not yet sent",
}


@dataclass(frozen=True, slots=True)
class Action:
    """What an armed failpoint does: exit (once or always) or sleep."""

    mode: str  # "once" | "always" | "sleep"
    seconds: float = 0.0


def parse(spec: str) -> dict[str, Action]:
    """`name:once,other:sleep=0.01` → {name: Action("once"), other: Action("sleep", 0.01)}.

    Raises ValueError naming the problem: an unknown failpoint or mode must not silently test nothing.
    """
    actions: dict[str, Action] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, mode = item.partition(":")
        name, mode = name.strip(), (mode.strip() or "once")
        if name not in KNOWN:
            raise ValueError(f"{ENV} names unknown failpoint {name!r}; known: {', '.join(sorted(KNOWN))}")
        if mode in ("once", "always"):
            actions[name] = Action(mode)
        elif mode.startswith("sleep="):
            try:
                seconds = float(mode[len("sleep=") :])
            except ValueError:
                example = f"{name}:sleep=0.01"
                raise ValueError(f"{ENV}: {item!r} needs a number of seconds, e.g. {example}") from None
            actions[name] = Action("sleep", seconds)
        else:
            raise ValueError(f"{ENV}: mode {mode!r} of {name!r} is not one of once, always, sleep=SECONDS")
    return actions


def _noop(name: str) -> None:
    """No failpoint is armed: do nothing."""


def make_failpoint(
    spec: str | None, directory: str | Path | None = None, exit: Callable[[int], object] = os._exit
) -> Callable[[str], None]:
    """The `failpoint` function for a spec (None or empty: the no-op). `exit` is replaceable for tests."""
    if not spec:
        return _noop
    actions = parse(spec)
    fired: set[str] = set()
    exiting = threading.Lock()
    marker_dir = Path(directory) if directory else None

    def first_time(name: str) -> bool:
        if marker_dir is None:
            if name in fired:
                return False
            fired.add(name)
            return True
        try:
            fd = os.open(marker_dir / f"{name}.fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, str(os.getpid()).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def armed(name: str) -> None:
        action = actions.get(name)
        if action is None:
            return
        if action.mode == "sleep":
            time.sleep(action.seconds)
            return
        # Points are also reached from threads (PostgreSQL transactions run on a thread pool): the
        # first thread to fire holds the lock until the process is gone, so no other thread can
        # claim a second point's marker for a process that dies only once.
        with exiting:
            if action.mode == "always" or first_time(name):
                sys.stderr.write(f"failpoint {name} fired in pid {os.getpid()}\n")
                sys.stderr.flush()
                exit(EXIT_CODE)

    return armed


def fired(directory: str | Path) -> list[str]:
    """The failpoints that fired (as `once`) in a scenario's marker directory."""
    return sorted(path.name.removesuffix(".fired") for path in Path(directory).glob("*.fired"))


#: The one function production code calls. Bound once, at import, from the environment.
failpoint: Callable[[str], None] = make_failpoint(os.environ.get(ENV), os.environ.get(DIR_ENV))
