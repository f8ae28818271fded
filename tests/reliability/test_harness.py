"""The harness itself: the ledger rules see what they claim to, the fakes and the fault proxy work."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.reliability.harness import faults
from tests.reliability.harness.flows import MARKER_ENV
from tests.reliability.harness.ledgers import Execution, execution_violations
from tests.reliability.harness.processes import Scenario, wait_until_sync
from tests.reliability.harness.proxy import FaultProxy

pytestmark = pytest.mark.reliability


def _start(run: str, step: str, attempt: int, token: str, pid: int = 1) -> Execution:
    return Execution("start", run, step, attempt, token, pid, 0.0)


def test_execution_rules() -> None:
    final = {("r", "a"): ("succeeded", 2), ("r", "b"): ("succeeded", 1), ("r", "c"): ("succeeded", 1)}
    executions = [
        _start("r", "a", 1, "t1"),  # reaped (released), then attempt 2 succeeded: fine
        _start("r", "a", 2, "t2"),
        _start("r", "b", 1, "t3"),
        _start("r", "b", 1, "t4", pid=2),  # one attempt started twice
        _start("r", "c", 1, "t5"),
        _start("r", "c", 2, "t6"),  # ran again after attempt 1 succeeded, and 1 was never released
    ]
    problems = execution_violations(executions, final, released={("r", "a", 1)})
    assert [p.split()[0] for p in problems["double_claim"]] == ["r/b"]
    assert [p.split()[0] for p in problems["completed_rerun"]] == ["r/c"]
    assert [p.split()[0] for p in problems["overlapping_live"]] == ["r/c"]
    assert execution_violations(executions[:3], final, {("r", "a", 1)}) == {
        "double_claim": [],
        "completed_rerun": [],
        "overlapping_live": [],
    }


def test_fake_llm_process_records_idempotency_keys(sqlite_url: str, tmp_path: Path) -> None:
    with Scenario(sqlite_url, tmp_path, seed=7) as sc:
        llm = sc.fake_llm(faults="500:0.5", default_text="hello there")
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        answers = [
            httpx.post(
                f"{llm.base_url}/chat/completions",
                json=body,
                headers={"Idempotency-Key": f"k{i}"},
                timeout=10,
            ).status_code
            for i in range(6)
        ]
        requests = llm.requests()
    assert [r["idempotency_key"] for r in requests] == [f"k{i}" for i in range(6)]
    assert sorted(set(answers)) == sorted({200 if r["reply"] == "text" else 500 for r in requests})


def _echo_server() -> socket.socket:
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        try:
            while data := conn.recv(1024):
                conn.sendall(data)
        except OSError:
            pass  # the proxy reset us: that is the point
        finally:
            conn.close()

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server


def test_fault_proxy_forwards_blackholes_heals_and_resets() -> None:
    server = _echo_server()
    with FaultProxy("127.0.0.1", server.getsockname()[1]) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        client.sendall(b"ping")
        assert client.recv(16) == b"ping"
        proxy.blackhole()
        client.sendall(b"held")
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(16)
        proxy.heal()
        client.settimeout(2)
        assert client.recv(16) == b"held"  # held, not dropped: TCP delivers once a partition heals
        proxy.reset()
        try:
            assert client.recv(16) == b""
        except ConnectionResetError:
            pass  # an RST: what reset() sends
        again = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        again.sendall(b"new")
        assert again.recv(16) == b"new"
        again.close()
        client.close()
    server.close()


def test_marked_processes_are_found_by_their_environment() -> None:
    env = {**os.environ, MARKER_ENV: "run_x:step:1"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        found = wait_until_sync(
            lambda: faults.marked_processes("run_x:"), timeout=5, what="the marked process"
        )
        assert found == {proc.pid: "run_x:step:1"}
    finally:
        proc.kill()
        proc.wait()
    assert faults.marked_processes("run_x:") == {}
