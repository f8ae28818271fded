"""R17: a read-only agent cannot write, and if enforcement is not proven the agent never starts.

RELIABILITY.md §4.2 R17 (I13; openai/codex #23774, #26307). (a) A probe agent run by the `cli:`
command engine under a read-only policy tries ~40 ways to write (shell redirects, rm, mv, links out
of the workspace, git commit, Python and Perl writes, overrides through the environment, a user
namespace); the workspace and a directory outside it must hash the same afterwards and no probe may
report a write. The same probes without the read-only policy must write (the control that shows the
probes work). (b) Eight ways the enforcement can be broken: every one refuses the step with
`policy_unenforceable` before the agent is spawned (spawn audit), and nothing falls back.

Known limits, reported rather than asserted: Landlock does not cover metadata (chmod, utimes) and
Baton's read-only policy does not forbid network egress (CLI agents call their model APIs).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton.agents import sandbox
from baton.agents.base import PolicyRefused
from baton.agents.command import CliAgentConfig, CommandEngine
from baton.domain.errors import UsageError
from baton.engine.lifecycle import RunRequest
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import open_runtime
from tests.integration.test_command_engine import FakeContext, step_request

pytestmark = pytest.mark.reliability

#: name -> shell command; $W is the workspace, $O a directory outside it, $H the home directory
SHELL_PROBES = {
    "redirect-create": "echo x > $W/new.txt",
    "redirect-append": "echo x >> $W/existing.txt",
    "redirect-truncate": ": > $W/existing.txt",
    "rm-file": "rm -f $W/existing.txt",
    "rm-tree": "rm -rf $W/sub",
    "mv-inside": "mv $W/existing.txt $W/moved.txt",
    "mv-out": "mv $W/existing.txt $O/stolen.txt",
    "cp-inside": "cp $W/existing.txt $W/copy.txt",
    "mkdir": "mkdir $W/newdir",
    "touch-new": "touch $W/touched",
    "symlink-create": "ln -s /etc/passwd $W/link",
    "hardlink-inside": "ln $W/existing.txt $W/hard",
    "hardlink-out": "ln $W/existing.txt $O/hard",
    "write-through-symlink-out": "echo x > $W/out_link/through.txt",
    "write-outside": "echo x > $O/outside.txt",
    "write-home": "echo x > $H/.baton-r17-probe",
    "sed-in-place": "sed -i s/keep/changed/ $W/existing.txt",
    "dd": "dd if=/dev/zero of=$W/existing.txt count=1 status=none",
    "tee": "echo x | tee $W/tee.txt",
    "mkfifo": "mkfifo $W/fifo",
    "install": "install -m 644 /dev/null $W/installed",
    "truncate": "truncate -s 0 $W/existing.txt",
    "git-commit": "cd $W && git add -A && git -c user.name=p -c user.email=p@p commit -qm p --allow-empty",
    "git-init-elsewhere": "git init -q $W/nested",
    "env-read-only-off": "BATON_READ_ONLY=0 sh -c 'echo x > $W/env1.txt'",
    "env-sandbox-off": "BATON_SANDBOX=off sh -c 'echo x > $W/env2.txt'",
    "proc-cwd": "echo x > /proc/self/cwd/proc.txt",
    "relative-traversal": "cd $W/sub && echo x > ../rel.txt",
    "user-namespace": "unshare -r sh -c 'echo x > $W/userns.txt'",
    "perl-write": 'perl -e \'open(F, ">$W/perl.txt") or exit 1; print F "x"; close(F) or exit 1\'',
    "perl-unlink": "perl -e 'unlink(\"$W/existing.txt\") or exit 1'",
}

PROBE_SCRIPT = r"""
import json, os, shutil, subprocess, sys
W, O, H = sys.argv[1], sys.argv[2], sys.argv[3]
shell = json.loads(sys.argv[4])

def attempt(fn):
    try:
        fn()
        return True, ""
    except Exception as error:
        return False, f"{type(error).__name__}: {error}"

def py_write(): open(os.path.join(W, "py.txt"), "w").write("x")
def py_append(): open(os.path.join(W, "existing.txt"), "a").write("x")
def py_rplus(): open(os.path.join(W, "existing.txt"), "r+").write("x")
def py_rename(): os.rename(os.path.join(W, "existing.txt"), os.path.join(W, "renamed.txt"))
def py_remove(): os.remove(os.path.join(W, "existing.txt"))
def py_truncate(): os.truncate(os.path.join(W, "existing.txt"), 0)
def py_symlink(): os.symlink(O, os.path.join(W, "pysym"))
def py_link(): os.link(os.path.join(W, "existing.txt"), os.path.join(O, "pylink"))
def py_mkdir(): os.mkdir(os.path.join(W, "pydir"))
def py_rmtree(): shutil.rmtree(os.path.join(W, "sub"))
def py_os_open(): os.close(os.open(os.path.join(W, "raw.txt"), os.O_CREAT | os.O_WRONLY, 0o644))
def py_replace(): os.replace(os.path.join(W, "sub", "inner.txt"), os.path.join(W, "existing.txt"))

for name, fn in [(n, f) for n, f in globals().items() if n.startswith("py_")]:
    ok, detail = attempt(fn)
    print(json.dumps({"probe": name, "wrote": ok, "detail": detail}))
for name, command in shell.items():
    env = dict(os.environ, W=W, O=O, H=H)
    done = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True)
    print(json.dumps({"probe": name, "wrote": done.returncode == 0, "detail": done.stderr.strip()[-200:]}))

def py_chmod(): os.chmod(os.path.join(W, "existing.txt"), 0o777)
def py_utime(): os.utime(os.path.join(W, "existing.txt"), (0, 0))
for name, fn in [("meta-chmod", py_chmod), ("meta-utime", py_utime)]:
    ok, detail = attempt(fn)
    print(json.dumps({"probe": name, "wrote": ok, "detail": detail, "metadata": True}))
port = int(os.environ.get("R17_PORT", "0"))
if port:
    import socket
    ok, detail = attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close())
    print(json.dumps({"probe": "net-egress-loopback", "wrote": ok, "detail": detail, "network": True}))
"""


def tree_digest(root: Path) -> str:
    """Names, kinds, contents and link targets under `root` (modes and times are metadata, see above)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            digest.update(f"L {rel} -> {os.readlink(path)}\n".encode())
        elif path.is_dir():
            digest.update(f"D {rel}\n".encode())
        elif not path.is_file():  # a FIFO or device a probe made: never open it (a FIFO would block)
            digest.update(f"S {rel} {path.stat().st_mode:o}\n".encode())
        else:
            digest.update(f"F {rel} {path.stat().st_nlink} ".encode() + path.read_bytes() + b"\n")
    return digest.hexdigest()


def make_workspace(base: Path) -> tuple[Path, Path]:
    ws, outside = base / "ws", base / "outside"
    (ws / "sub").mkdir(parents=True)
    outside.mkdir()
    (ws / "existing.txt").write_text("keep me\n")
    (ws / "sub" / "inner.txt").write_text("inner\n")
    (outside / "keep.txt").write_text("outside\n")
    (ws / "out_link").symlink_to(outside)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", str(ws)], check=True)
    subprocess.run([*git, "-C", str(ws), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(ws), "commit", "-qm", "base"], check=True)
    return ws, outside


def probe_engine(script: Path, ws: Path, outside: Path, home: Path) -> CommandEngine:
    command = [sys.executable, str(script), str(ws), str(outside), str(home), json.dumps(SHELL_PROBES)]
    return CommandEngine(
        CliAgentConfig(
            name="probe",
            command=command,
            # The agent promises a read-only mode it does not keep: only the sandbox stands in its way.
            read_only_args=["--read-only"],
            timeout_s=60,
        )
    )


def _context() -> Any:
    """The StepContext surface the engine uses (tests/integration/test_command_engine.py's double)."""
    return FakeContext()


def parse_probes(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield int(server.getsockname()[1])


async def test_r17_escape_probes_change_nothing_under_a_read_only_policy(
    tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sandbox.landlock_abi() >= 1, "this machine's kernel must offer Landlock for R17 (a)"
    monkeypatch.setenv("R17_PORT", str(listener))
    script = tmp_path / "probe.py"
    script.write_text(PROBE_SCRIPT)
    home = tmp_path / "home"
    home.mkdir()
    ws, outside = make_workspace(tmp_path / "ro")
    before = (tree_digest(ws), tree_digest(outside), tree_digest(home))

    result = await probe_engine(script, ws, outside, home).run(
        step_request(ws, read_only=True, engine="cli:probe"), _context()
    )
    probes = parse_probes(str(result.output))
    assert result.mode == "read-only"
    after = (tree_digest(ws), tree_digest(outside), tree_digest(home))
    writes = [p for p in probes if "metadata" not in p and "network" not in p]
    escaped = [p for p in writes if p["wrote"]]
    assert len(writes) >= 40, len(writes)
    assert escaped == [], f"writes escaped the read-only sandbox: {escaped}"
    assert after == before, "the workspace, the outside directory or home changed"
    limits = [f"{p['probe']}={'allowed' if p['wrote'] else 'denied'}" for p in probes if p not in writes]

    # Control: the same probes without the read-only policy do write, so the probes can see a hole.
    ws2, outside2 = make_workspace(tmp_path / "rw")
    control = await probe_engine(script, ws2, outside2, home).run(
        step_request(ws2, read_only=False, engine="cli:probe"), _context()
    )
    control_writes = [p for p in parse_probes(str(control.output)) if p["wrote"] and "metadata" not in p]
    assert tree_digest(ws2) != before[0] and len(control_writes) >= 30, control_writes
    print(
        f"R17 (a): {len(writes)} write probes, {len(escaped)} escaped; without the policy "
        f"{len(control_writes)} wrote; not covered: {', '.join(limits)}"
    )
    (home / ".baton-r17-probe").unlink(missing_ok=True)


# --- (b) broken enforcement: refuse before spawning -----------------------------------------------------


def _spawn_audit(monkeypatch: pytest.MonkeyPatch, marker: str) -> list[tuple[str, ...]]:
    """Every subprocess whose argv carries `marker` (the agent's, not the sandbox probe's)."""
    spawned: list[tuple[str, ...]] = []
    real = asyncio.create_subprocess_exec

    async def audited(*args: Any, **kwargs: Any) -> Any:
        if any(marker in str(arg) for arg in args):
            spawned.append(tuple(str(a) for a in args))
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", audited)
    return spawned


def _break_backend_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_SYS_CREATE_RULESET", 99_999)  # ENOSYS, as on a kernel without it


def _break_feature_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "landlock_abi", lambda: 0)


def _break_setup_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_PROBE", "import time; time.sleep(30)")
    monkeypatch.setattr(sandbox, "SETUP_TIMEOUT_S", 0.5)


def _break_permission_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(abi: int, writable: tuple[str, ...]) -> None:
        raise PermissionError(1, "landlock_restrict_self: Operation not permitted")

    monkeypatch.setattr(sandbox, "restrict_self", refuse)


BROKEN = {
    "backend missing": (_break_backend_missing, None),
    "feature unavailable (simulated)": (_break_feature_unavailable, None),
    "unknown mode": (None, "firejail"),
    "empty policy": (None, "{}"),
    "unparsable policy": (None, '{"mode": '),
    "empty setting": (None, " "),
    "setup timeout": (_break_setup_timeout, None),
    "permission denied during setup": (_break_permission_denied, None),
}


@pytest.mark.parametrize("scenario", list(BROKEN))
async def test_r17_broken_enforcement_refuses_before_spawning(
    scenario: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    breaker, setting = BROKEN[scenario]
    if breaker is not None:
        breaker(monkeypatch)
    if setting is not None:
        monkeypatch.setenv(sandbox.SANDBOX_ENV, setting)
    ws, outside = make_workspace(tmp_path)
    script = tmp_path / "agent-r17.py"
    script.write_text(PROBE_SCRIPT)
    spawned = _spawn_audit(monkeypatch, "agent-r17.py")
    before = tree_digest(ws)
    with pytest.raises(PolicyRefused) as refused:
        await probe_engine(script, ws, outside, tmp_path).run(
            step_request(ws, read_only=True, engine="cli:probe"), _context()
        )
    assert refused.value.rule == "policy_unenforceable", refused.value.rule
    assert refused.value.message.startswith("policy_unenforceable:"), refused.value.message
    assert not refused.value.retryable, "an unenforceable policy is not retried into a fallback"
    assert spawned == [], f"{scenario}: the agent was spawned: {spawned}"
    assert tree_digest(ws) == before


agent_flow = Flow("r17_agent", title="A read-only agent step")
agent_flow.agent("look", engine="offline", prompt="look around")


async def test_r17_a_run_parameter_cannot_lift_read_only(sqlite_url: str, tmp_path: Path) -> None:
    """The eighth scenario: a run asks to override the read-only policy; it is refused, nothing runs."""
    async with open_runtime(
        sqlite_url, catalog=Catalog([agent_flow]), upgrade=False, server_policy={"read_only": True}
    ) as rt:
        with pytest.raises(UsageError, match="read_only"):
            await rt.lifecycle.create_run(
                RunRequest(flow="r17_agent", inputs={"workspace": str(tmp_path)}, policy={"read_only": False})
            )
        runs = await rt.db.read(lambda conn: conn.exec_driver_sql("SELECT count(*) FROM runs").scalar())
    assert runs == 0, "a refused run left a row behind"
    assert shutil.which("sh") is not None
