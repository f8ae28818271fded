"""R6: SIGKILL the API server at random while clients create, cancel and resume runs over HTTP.

A `baton serve --workers 0` is SIGKILLed every U(lo, hi) s and restarted on the same port and
database; one worker process (never killed) runs the steps. Every client sends each request until
the server answers, always with its original Idempotency-Key, and then once more as if the answer
had been lost. Three kinds of runs: plain (three zero-work steps), cancelled (a step that holds),
resumed (a step that fails its first attempt for good; the run is resumed).

Pass bar (RELIABILITY.md R6): 0 lost runs, 0 duplicate runs per key, 100 % of retries answered
with the same resource, 0 steps with more than one attempt (the resumed step: exactly two, one of
them the planned failure), every run in its expected final status; then the harness checker.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import Server
from tests.reliability import _r_support as rs
from tests.reliability import rflows
from tests.reliability.harness import ledgers
from tests.reliability.harness.processes import Scenario
from tests.reliability.tier import size

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

#: RELIABILITY.md §4.3: PR 30 runs, nightly 100; the PR size is scaled to the 90 s budget of R6+R7+R9.
RUNS = size(9, 100)
#: Kills: U(3, 10) s apart nightly; closer together at PR size, so that a short scenario sees several.
KILL_GAP = (0.3, 1.0) if RUNS < 30 else (3.0, 10.0)
MIN_KILLS = size(2, 15)
#: Clients start U(0, SPREAD_S) s apart, so that their requests meet the kills.
SPREAD_S = size(4, 60)
CLIENTS = 6
EXPECTED = {"r_api_chain": "succeeded", "r_api_hold": "cancelled", "r_api_flaky": "succeeded"}


def _drive(url: str, token: str, flow: str, name: str, delay: float, deadline: float) -> dict[str, Any]:
    """One client's run: create it; cancel it, or wait for it to fail and resume it. Every request is
    sent until answered, with its key, then once more with the same key (a lost reply)."""
    time.sleep(delay)
    answers: dict[str, list[rs.Ack]] = {}

    def send(op: str, method: str, path: str, key: str, body: Any = None) -> rs.Ack:
        ack = rs.until_answered(url, token, method, path, key=key, json_body=body, deadline=deadline)
        replay = rs.until_answered(url, token, method, path, key=key, json_body=body, deadline=deadline)
        answers[op] = [ack, replay]
        return ack

    created = send("create", "POST", "/v1/runs", f"{name}-create", {"flow": flow, "inputs": {"sleep_s": 120}})
    assert created.response.status_code == 201, created.response.text
    run_id = str(created.response.json()["id"])
    if flow == "r_api_hold":
        send("cancel", "POST", f"/v1/runs/{run_id}/cancel", f"{name}-cancel", {"reason": "r6"})
    elif flow == "r_api_flaky":

        def failed() -> bool:
            got = rs.until_answered(url, token, "GET", f"/v1/runs/{run_id}", deadline=deadline)
            return bool(got.response.json()["status"] == "failed")

        rs.wait_for(
            failed, timeout=max(1.0, deadline - time.monotonic()), interval=0.2, what=f"{run_id} failed"
        )
        send("resume", "POST", f"/v1/runs/{run_id}/resume", f"{name}-resume")
    return {"run_id": run_id, "flow": flow, "user": name, "answers": answers}


def test_r06_api_kill(database_url: str, tmp_path: Path) -> None:
    with Scenario(database_url, tmp_path) as sc:
        users = [f"r6-{i}" for i in range(RUNS)]
        tokens = rs.make_tokens(database_url, users)
        flows = [list(EXPECTED)[i % 3] for i in range(RUNS)]
        sc.worker("worker", flows=[rflows.PATH], concurrency=8)
        extra = {k: v for k, v in sc.env().items() if k.startswith(("BATON_", "PYTHONPATH"))}
        home = tmp_path / "api-home"
        home.mkdir()
        server = Server(database_url, home, workers=0, flows=[str(rflows.PATH)], extra_env=extra)
        server.start()
        sc.servers.append(server)
        killer = rs.ServerKiller(sc.random, server, *KILL_GAP, max_kills=10 * MIN_KILLS)
        began = time.monotonic()
        deadline = began + SPREAD_S + 120
        killer.start()
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [
                pool.submit(_drive, server.url, tokens[u], f, u, sc.random.uniform(0, SPREAD_S), deadline)
                for u, f in zip(users, flows, strict=True)
            ]
            driven = [f.result() for f in futures]
        run_ids = [d["run_id"] for d in driven]
        rs.wait_for(
            lambda: (
                all(s in rs.TERMINAL for s in rs.run_statuses(database_url, run_ids).values())
                and len(rs.run_statuses(database_url, run_ids)) == RUNS
            ),
            timeout=60,
            interval=0.2,
            what="every run to finish",
        )
        rs.wait_for(lambda: len(killer.kills) >= MIN_KILLS, timeout=60, what=f"{MIN_KILLS} kills")
        killer.halt.set()
        killer.join(60)
        assert killer.error is None, killer.error
        elapsed = time.monotonic() - began

        statuses = rs.run_statuses(database_url, run_ids)
        by_user = Counter(r.created_by for r in rs.query(database_url, "SELECT created_by FROM runs"))
        per_key = Counter(
            r.idempotency_key
            for r in rs.query(
                database_url, "SELECT idempotency_key FROM runs WHERE idempotency_key IS NOT NULL"
            )
        )
        acks = [a for d in driven for pair in d["answers"].values() for a in pair]
        tries = sum(a.tries for a in acks)
        retries = tries - len(acks) // 2  # every try after the first of each operation
        mismatched = [
            (d["user"], op, [a.response.status_code for a in pair], [i for a in pair for i in a.ids])
            for d in driven
            for op, pair in d["answers"].items()
            if not all(a.response.is_success for a in pair)
            or {i for a in pair for i in a.ids} != {d["run_id"]}
        ]
        starts = Counter((e.run, e.step) for e in ledgers.read_executions(sc.dir) if e.phase == "start")
        allowed = {(d["run_id"], "f2"): 2 for d in driven if d["flow"] == "r_api_flaky"}
        repeated = {k: n for k, n in starts.items() if n != allowed.get(k, 1)}
        wrong = {
            d["run_id"]: statuses.get(d["run_id"])
            for d in driven
            if statuses.get(d["run_id"]) != EXPECTED[d["flow"]]
        }
        print(
            f"R6 {database_url.split(':')[0]}: runs={RUNS} kills={len(killer.kills)} "
            f"restart_max={max(killer.restart_s, default=0):.1f}s elapsed={elapsed:.1f}s "
            f"requests={len(acks)} retries={retries} "
            f"same_resource={len(acks) - len(mismatched) * 2}/{len(acks)} "
            f"lost={RUNS - len(statuses)} duplicate_runs_per_key={sum(n - 1 for n in per_key.values())} "
            f"runs_per_user_max={max(by_user.values(), default=0)} "
            f"steps_with_extra_attempts={len(repeated)} wrong_final_status={len(wrong)}"
        )
        assert not mismatched, mismatched
        assert len(statuses) == RUNS, "lost runs"
        assert all(n == 1 for n in per_key.values()), per_key
        assert max(by_user.values()) == 1, by_user
        assert not repeated, repeated
        assert not wrong, wrong
        sc.check(run_ids)
