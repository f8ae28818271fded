"""Read-only sandbox for agent subprocesses: Linux Landlock, proven active before spawn, fail closed.

A read-only policy used to be enforced only by the arguments a CLI agent declares (`read_only_args`):
configuration intent, not a boundary (openai/codex #26307). An agent that ignores them, or a prompt
that talks it into a shell, could still write anywhere. Here the kernel enforces it: before exec the
child restricts itself with Landlock so that no file can be created, written, truncated, renamed,
linked or removed anywhere except a private scratch directory and /dev/null. Landlock is inherited
by every descendant and cannot be lifted. Before any agent is spawned, a probe child restricted the
same way must fail to write into the workspace; anything else (no Landlock, a policy that cannot be
read, a probe that hangs or errs) refuses the step with `policy_unenforceable`, never a fallback.

The sandbox policy comes from the worker's environment only (`BATON_SANDBOX`, default `landlock`);
nothing a run supplies reaches it. Network egress is not part of Baton's read-only policy (CLI agents
call their model APIs), so it is not restricted.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from baton.agents.base import PolicyRefused

SANDBOX_ENV = "BATON_SANDBOX"
RULE = "policy_unenforceable"
#: how long the probe that proves the sandbox may take
SETUP_TIMEOUT_S = 10.0

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # the same on every Linux arch
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_WRITE_FILE, _REMOVE_DIR, _REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
_MAKE_ALL = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
_REFER, _TRUNCATE = 1 << 13, 1 << 14


class Unenforceable(PolicyRefused):
    """The read-only policy cannot be proven for this step; the agent was not started."""

    def __init__(self, message: str) -> None:
        super().__init__(
            f"policy_unenforceable: {message}; the agent was not started and nothing runs without the "
            "sandbox. Fix: run the worker on Linux >= 5.13 with Landlock enabled, and leave "
            f"{SANDBOX_ENV} unset or set it to 'landlock'",
            rule=RULE,
        )


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@functools.cache
def _libc() -> ctypes.CDLL:
    # Loaded in the parent (landlock_abi runs first): a dlopen between fork and exec can deadlock.
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when the kernel has none or it is disabled."""
    if not sys.platform.startswith("linux"):
        return 0
    version = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(0, int(version))


def _write_access(abi: int) -> int:
    access = _WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE_ALL
    if abi >= 2:
        access |= _REFER  # no rename or link across directories
    if abi >= 3:
        access |= _TRUNCATE
    return access


def restrict_self(abi: int, writable: tuple[str, ...]) -> None:
    """Runs in the child before exec: from now on it (and its descendants) can write only `writable`."""
    libc = _libc()
    handled = _write_access(abi)
    attr = _RulesetAttr(handled)
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for path in writable:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                allowed = handled if os.path.isdir(path) else handled & (_WRITE_FILE | _TRUNCATE)
                rule = _PathBeneathAttr(allowed, fd)
                if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A proven read-only sandbox for one agent process: pass `preexec` to the spawn."""

    abi: int
    scratch: str
    writable: tuple[str, ...]

    def preexec(self, before: Callable[[], None] | None = None) -> Callable[[], None]:
        def setup() -> None:
            if before is not None:
                before()
            restrict_self(self.abi, self.writable)

        return setup


def sandbox_mode(environ: Mapping[str, str] | None = None) -> str:
    """The worker's sandbox: `BATON_SANDBOX` as a mode or `{"mode": …}`; landlock when unset."""
    raw = (os.environ if environ is None else environ).get(SANDBOX_ENV)
    if raw is None:
        return "landlock"
    text = raw.strip()
    if not text:
        raise Unenforceable(f"{SANDBOX_ENV} is set but empty")
    if text.startswith("{"):
        try:
            policy = json.loads(text)
        except json.JSONDecodeError as error:
            raise Unenforceable(f"{SANDBOX_ENV} is not valid JSON ({error})") from None
        if not isinstance(policy, dict) or not policy:
            raise Unenforceable(f"{SANDBOX_ENV} is an empty policy")
        text = str(policy.get("mode") or "")
        if not text:
            raise Unenforceable(f"{SANDBOX_ENV} names no mode")
    if text != "landlock":
        raise Unenforceable(
            f"{SANDBOX_ENV} mode {text!r} is unknown; the one read-only sandbox is 'landlock'"
        )
    return text


_PROBE = """
import os, sys
target = os.path.join(sys.argv[1], ".baton-sandbox-probe")
try:
    with open(target, "w") as handle:
        handle.write("escaped")
except PermissionError:
    print("denied")
else:
    os.unlink(target)
    print("WROTE")
"""


async def prove(workspace: str, *, timeout_s: float | None = None) -> Sandbox:
    """Check the configuration, then prove with a probe child that a write into `workspace` is refused."""
    sandbox_mode()
    abi = landlock_abi()
    if abi < 1:
        raise Unenforceable(
            "the kernel offers no Landlock (missing or disabled), so read-only cannot be enforced"
        )
    scratch = tempfile.mkdtemp(prefix="baton-agent-")
    sandbox = Sandbox(abi=abi, scratch=scratch, writable=(scratch, os.devnull))
    try:
        probe = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _PROBE,
            workspace,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=sandbox.preexec(),
        )
    except Exception as error:  # subprocess reports a failed preexec as SubprocessError
        raise Unenforceable(f"the sandbox could not be set up ({type(error).__name__}: {error})") from error
    try:
        out, err = await asyncio.wait_for(
            probe.communicate(), SETUP_TIMEOUT_S if timeout_s is None else timeout_s
        )
    except TimeoutError:
        probe.kill()
        await probe.wait()
        raise Unenforceable("the sandbox probe did not finish in time") from None
    if out.decode().strip() != "denied":
        detail = (out + err).decode(errors="replace").strip()[-300:]
        raise Unenforceable(f"the sandbox probe was not refused a write into the workspace ({detail!r})")
    return sandbox
