"""R2 crash-point sweep: the process dies (os._exit(137)) at each named commit boundary; all recovers exactly.

Worker points (both backends): after_claim_commit, after_model_response, after_step_commit,
during_subprocess, in_heartbeat, in_reaper_reclaim. Every one is armed `once` in every worker of
the scenario: the first process to reach it dies there, a supervisor starts a replacement, and the
scenario ends once every point has fired and every run is finished.

API points (SQLite at PR size, both backends nightly, as RELIABILITY.md §4.3 sizes R2):
after_run_insert, in_cancel, after_completion_before_ack, in_resume, in_retry. The client retries
each request with the same Idempotency-Key after the server restarts.

There is no "between step commit and event flush" point: a step's events commit in its result's
transaction (I6), so that boundary does not exist. in_retry sits before the retry's one
transaction (the new run's creation), which a crash inside would roll back to the same state.

Pass (RELIABILITY.md R2): every case ends in the right terminal state; 0 duplicate effects; 0 lost
acknowledged writes; a retried create with the same key returns the original run (0 duplicates).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton import failpoints
from tests.reliability.harness import faults
from tests.reliability.harness.processes import (
    Scenario,
    create_runs,
    failure_story,
    most_attempts,
    run_statuses,
    wait_until,
)
from tests.reliability.tier import TIER, size

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

WORKER_POINTS = (
    "after_claim_commit",
    "after_model_response",
    "after_step_commit",
    "during_subprocess",
    "in_heartbeat",
    "in_reaper_reclaim",
)
API_POINTS = ("after_run_insert", "in_cancel", "after_completion_before_ack", "in_resume", "in_retry")


def armed(points: tuple[str, ...]) -> str:
    return ",".join(f"{point}:once" for point in points)


async def test_worker_crash_points_recover_exactly(database_url: str, tmp_path: Path) -> None:
    runs = size(6, 20)
    with Scenario(database_url, tmp_path) as sc:
        # The shell step runs 3 x 0.4 s, long enough for heartbeats to happen inside it.
        run_ids = await create_runs(database_url, "rel_chain", runs, {"delay": 0.4})
        env_points = armed(WORKER_POINTS)
        workers = [sc.worker(f"w{i}", failpoint=env_points, wait=False) for i in range(3)]
        crashes: list[int] = []
        started = time.monotonic()

        def supervise() -> bool:
            for index, proc in enumerate(workers):
                if not proc.alive():
                    crashes.append(proc.popen.returncode)
                    workers[index] = sc.worker(f"w{index}", failpoint=env_points, wait=False)
            statuses = run_statuses(database_url, run_ids)
            done = all(s in ("succeeded", "failed", "cancelled") for s in statuses.values())
            return done and len(statuses) == len(run_ids)

        await wait_until(supervise, timeout=120, interval=0.1, what="every run to finish through the crashes")
        # A point not reached yet (the reaper's needs an expired lease) gets a few more seconds.
        await wait_until(
            lambda: supervise() and set(failpoints.fired(sc.failpoint_dir)) >= set(WORKER_POINTS),
            timeout=20,
            interval=0.1,
            what=f"every failpoint to fire (fired: {failpoints.fired(sc.failpoint_dir)})",
        )
        # Each marker names the pid that fired it; that process exits right after writing it.
        firers = marker_pids(sc.failpoint_dir)
        settle = time.monotonic() + 15
        while time.monotonic() < settle and not all(exited(sc, pid) for pid in firers.values()):
            supervise()
            await asyncio.sleep(0.1)
        supervise()
        elapsed = time.monotonic() - started
        statuses = run_statuses(database_url, run_ids)
        verdict = sc.check(run_ids)
        survivors = faults.marked_processes(scope=sc.dir)
        firer_report = {point: describe(sc, pid) for point, pid in firers.items()}
        retried = most_attempts(database_url, run_ids)
        stories = [failure_story(database_url, r) for r, s in statuses.items() if s != "succeeded"]
    print(
        f"R2 workers {database_url.split(':')[0]}: {len(firers)} points fired, {len(crashes)} crashes "
        f"(exit codes {sorted(set(crashes))}), {runs} runs {verdict.figures['statuses']} in {elapsed:.1f} s; "
        f"most attempts of a step: {retried}"
    )
    assert set(statuses.values()) == {"succeeded"}, "\n".join(stories)
    assert set(crashes) <= {failpoints.EXIT_CODE}, crashes
    assert set(firers) == set(WORKER_POINTS), firers
    assert len(set(firers.values())) == len(firers), f"one process claimed two points: {firers}"
    crashed = f"exited {failpoints.EXIT_CODE}"
    assert all(report.endswith(crashed) for report in firer_report.values()), firer_report
    assert survivors == {}, f"agent processes outlived their crashed workers: {survivors}"


def marker_pids(directory: Path) -> dict[str, int]:
    """{failpoint: pid that fired it}, from the `once` markers (each holds its writer's pid)."""
    pids: dict[str, int] = {}
    for name in failpoints.fired(directory):
        text = (directory / f"{name}.fired").read_text().strip()
        pids[name] = int(text) if text.isdigit() else -1
    return pids


def exited(sc: Scenario, pid: int) -> bool:
    proc = next((p for p in sc.procs if p.pid == pid), None)
    return proc is not None and not proc.alive()


def describe(sc: Scenario, pid: int) -> str:
    """Who fired a point: '<name> pid N exited C', or why that is not so (for the assertion)."""
    proc = next((p for p in sc.procs if p.pid == pid), None)
    if proc is None:
        return f"pid {pid} is not a process of the scenario ({[(p.name, p.pid) for p in sc.procs]})"
    if proc.alive():
        return f"{proc.name} pid {pid} still alive after firing; log tail: {proc.log_text()[-2000:]!r}"
    return f"{proc.name} pid {pid} exited {proc.popen.returncode}"


class Client:
    """Calls the API; when the server dies mid-request (a failpoint), restarts it and retries as is."""

    def __init__(self, server: Any, token: str) -> None:
        self.server = server
        self.headers = {"Authorization": f"Bearer {token}"}
        self.crashes = 0

    def call(self, method: str, path: str, *, key: str | None = None, body: Any = None) -> httpx.Response:
        headers = dict(self.headers, **({"Idempotency-Key": key} if key else {}))
        for _ in range(5):
            try:
                return httpx.request(method, self.server.url + path, json=body, headers=headers, timeout=30.0)
            except httpx.TransportError:
                process = self.server.process
                assert process is not None and process.wait(10) == failpoints.EXIT_CODE, "unexpected death"
                self.crashes += 1
                self.server.restart()
        raise AssertionError(f"{method} {path} kept failing")

    def status(self, run_id: str) -> str:
        return str(self.call("GET", f"/v1/runs/{run_id}").json()["status"])

    async def wait_status(self, run_id: str, *statuses: str) -> None:
        await wait_until(
            lambda: self.status(run_id) in statuses,
            timeout=60,
            interval=0.2,
            what=f"{run_id} to be {statuses}",
        )


async def test_api_crash_points_lose_and_duplicate_nothing(database_url: str, tmp_path: Path) -> None:
    if TIER == "pr" and not database_url.startswith("sqlite"):
        pytest.skip("PR tier: R2's API points run on SQLite (RELIABILITY.md §4.3); nightly runs both")
    make_token = _server_module().make_token
    token = await asyncio.to_thread(make_token, database_url, "alice", "p1")
    with Scenario(database_url, tmp_path) as sc:
        sc.worker("worker")
        api = Client(sc.api(failpoint=armed(API_POINTS)), token)
        created: list[str] = []

        # after_run_insert: the run committed, the 201 never sent; the same key returns that run.
        body = {"flow": "rel_sleep", "project_id": "p1", "inputs": {"sleep_s": 0.2}}
        first = api.call("POST", "/v1/runs", key="create-1", body=body)
        assert first.status_code in (200, 201), first.text
        created.append(first.json()["id"])
        again = api.call("POST", "/v1/runs", key="create-1", body=body)
        assert again.json()["id"] == created[0]
        await api.wait_status(created[0], "succeeded")

        # in_resume: a failed run resumed; the crash rolls the resume back, the retry applies it once.
        flaky = api.call("POST", "/v1/runs", key="flaky-1", body={"flow": "rel_flaky", "project_id": "p1"})
        created.append(flaky.json()["id"])
        await api.wait_status(created[-1], "failed")
        resumed = api.call("POST", f"/v1/runs/{created[-1]}/resume", key="resume-1")
        assert resumed.status_code == 200, resumed.text
        await api.wait_status(created[-1], "succeeded")

        # in_cancel, then after_completion_before_ack: two crashes, then the cancel is acknowledged.
        long_body = {"flow": "rel_sleep", "project_id": "p1", "inputs": {"sleep_s": 30}}
        sleeper = api.call("POST", "/v1/runs", key="sleep-1", body=long_body).json()["id"]
        created.append(sleeper)
        await api.wait_status(sleeper, "running")
        cancelled = api.call("POST", f"/v1/runs/{sleeper}/cancel", key="cancel-1")
        assert cancelled.status_code == 200, cancelled.text
        await api.wait_status(sleeper, "cancelled")

        # in_retry: the crash comes before the new run exists; the retry with the key makes one.
        retried = api.call("POST", f"/v1/runs/{sleeper}/retry", key="retry-1")
        assert retried.status_code in (200, 201), retried.text
        created.append(retried.json()["id"])
        replay = api.call("POST", f"/v1/runs/{sleeper}/retry", key="retry-1")
        assert replay.json()["id"] == created[-1]
        api.call("POST", f"/v1/runs/{created[-1]}/cancel")
        await api.wait_status(created[-1], "cancelled")

        listed = api.call("GET", "/v1/runs?project_id=p1").json()
        items = listed["runs"]
        fired = failpoints.fired(sc.failpoint_dir)
        verdict = sc.check(created)
    print(
        f"R2 api {database_url.split(':')[0]}: {len(fired)} points fired, {api.crashes} crashes, "
        f"{len(items)} runs listed for {len(created)} created, {verdict.figures['statuses']}"
    )
    assert set(fired) == set(API_POINTS), fired
    assert api.crashes == len(API_POINTS)
    assert sorted(r["id"] for r in items) == sorted(created), "a retried request made a second run"
    statuses = {r["id"]: r["status"] for r in items}
    assert [statuses[r] for r in created] == ["succeeded", "succeeded", "cancelled", "cancelled"]


def _server_module() -> Any:
    from tests.reliability.harness.processes import TESTS, _load

    return _load(TESTS / "e2e" / "server.py", "baton_rel_server")
