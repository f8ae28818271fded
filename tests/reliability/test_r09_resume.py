"""R9: pause for human input, then resume: exactly one answer wins and nothing before the pause re-runs.

Runs of `r_ask` (pre → ask (input) → post, which returns the answer) reach waiting_for_input on a
`baton serve --workers 0`, with one worker process (never killed) running the steps. Each run gets
5 concurrent answers over HTTP, each with its own payload and Idempotency-Key. For some runs the
API is SIGKILLed right after the answers were acknowledged and restarted; then every client sends
its answer again with the same key. Finally answers and resumes for finished and cancelled runs.

Pass bar (RELIABILITY.md R9): exactly 1 accepted answer per run, the others 409, and a replay
with the winner's key is the winner's answer again (200, the same run); 0 acknowledged answers lost
across the kills; 0 re-executions of pre-pause steps (executions log); 100 % of runs succeed with
the winning payload; an answer or resume for a finished or cancelled run is a 409 that changes
nothing (its event log is untouched); then the harness checker.
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

#: RELIABILITY.md §4.3: PR 40 runs, nightly 200 (50 of them with an API kill); PR scaled to the budget.
RUNS = size(8, 200)
KILLED = size(2, 50)
ANSWERS = 5
CANCELLED = size(2, 10)


def _answer_burst(url: str, token: str, request_id: str, run: int, deadline: float) -> list[rs.Ack]:
    """5 concurrent answers, payload `pick` = 0..4, each with its own key."""

    def one(pick: int) -> rs.Ack:
        return rs.until_answered(
            url,
            token,
            "POST",
            f"/v1/inputs/{request_id}/answer",
            key=f"r9-{run}-{pick}",
            json_body={"answer": {"pick": pick}},
            deadline=deadline,
        )

    with ThreadPoolExecutor(ANSWERS) as pool:
        return list(pool.map(one, range(ANSWERS)))


def _pending_request(url: str, token: str, run_id: str, deadline: float) -> str:
    def request_id() -> str | None:
        body = rs.until_answered(url, token, "GET", f"/v1/runs/{run_id}", deadline=deadline).response.json()
        pending = body.get("pending_inputs") or []
        return str(pending[0]["id"]) if body["status"] == "waiting_for_input" and pending else None

    return str(
        rs.wait_for(request_id, timeout=max(1.0, deadline - time.monotonic()), what=f"{run_id} waiting")
    )


def _event_count(database_url: str, run_id: str) -> int:
    return int(rs.query(database_url, "SELECT count(*) AS n FROM events WHERE run_id = :r", r=run_id)[0].n)


def test_r09_resume(database_url: str, tmp_path: Path) -> None:
    with Scenario(database_url, tmp_path) as sc:
        users = [f"r9-{i}" for i in range(RUNS + CANCELLED)]
        tokens = rs.make_tokens(database_url, users)
        sc.worker("worker", flows=[rflows.PATH], concurrency=8)
        extra = {k: v for k, v in sc.env().items() if k.startswith(("BATON_", "PYTHONPATH"))}
        home = tmp_path / "api-home"
        home.mkdir()
        server = Server(database_url, home, workers=0, flows=[str(rflows.PATH)], extra_env=extra)
        server.start()
        sc.servers.append(server)
        killer = rs.ServerKiller(sc.random, server, 0, 0, max_kills=0)  # kills on demand only
        began = time.monotonic()
        deadline = began + size(120, 900)

        def create(user: str) -> str:
            ack = rs.until_answered(
                server.url,
                tokens[user],
                "POST",
                "/v1/runs",
                key=f"{user}-create",
                json_body={"flow": "r_ask", "inputs": {}},
                deadline=deadline,
            )
            assert ack.response.status_code == 201, ack.response.text
            return str(ack.response.json()["id"])

        runs = {user: create(user) for user in users}
        requests = {user: _pending_request(server.url, tokens[user], runs[user], deadline) for user in users}
        kill_after = set(sc.random.sample(range(RUNS), KILLED))
        winners: dict[str, int] = {}
        burst_codes: Counter[int] = Counter()
        replay_problems: list[Any] = []
        for index, user in enumerate(users[:RUNS]):
            acks = _answer_burst(server.url, tokens[user], requests[user], index, deadline)
            codes = [a.response.status_code for a in acks]
            burst_codes.update(codes)
            accepted = [pick for pick, code in enumerate(codes) if code == 200]
            assert len(accepted) == 1 and codes.count(409) == ANSWERS - 1, (runs[user], codes)
            winners[runs[user]] = accepted[0]
            if index in kill_after:
                killer.kill_and_restart()  # right after the acknowledgement, before the worker's pickup
            # Every client sends its answer again with its key: the winner's is replayed, the rest 409.
            again = _answer_burst(server.url, tokens[user], requests[user], index, deadline)
            expected = [200 if pick == accepted[0] else 409 for pick in range(ANSWERS)]
            if [a.response.status_code for a in again] != expected or again[accepted[0]].ids != [runs[user]]:
                replay_problems.append((runs[user], [a.response.status_code for a in again]))

        # Runs that are cancelled while waiting: answers and resumes are refused and change nothing.
        refused: list[Any] = []
        for user in users[RUNS:]:
            run_id, token = runs[user], tokens[user]
            cancel = rs.until_answered(
                server.url, token, "POST", f"/v1/runs/{run_id}/cancel", key=f"{user}-c", deadline=deadline
            )
            assert cancel.response.is_success, cancel.response.text
        ask_ids = [runs[u] for u in users[:RUNS]]
        rs.wait_for(
            lambda: all(
                s in rs.TERMINAL for s in rs.run_statuses(database_url, list(runs.values())).values()
            ),
            timeout=60,
            interval=0.2,
            what="every run to finish",
        )
        for user in [*users[RUNS:], *users[:2]]:  # the cancelled runs and two finished ones
            run_id, token = runs[user], tokens[user]
            before = _event_count(database_url, run_id)
            late = [
                rs.until_answered(
                    server.url,
                    token,
                    "POST",
                    f"/v1/inputs/{requests[user]}/answer",
                    key=f"{user}-late",
                    json_body={"answer": {"pick": 99}},
                    deadline=deadline,
                ),
                rs.until_answered(
                    server.url, token, "POST", f"/v1/runs/{run_id}/resume", key=f"{user}-r", deadline=deadline
                ),
            ]
            codes = [a.response.status_code for a in late]
            if codes != [409, 409] or _event_count(database_url, run_id) != before:
                refused.append((run_id, codes))
        elapsed = time.monotonic() - began

        statuses = rs.run_statuses(database_url, list(runs.values()))
        outputs = {
            r.run_id: r.output
            for r in rs.query(database_url, "SELECT run_id, output FROM steps WHERE key = 'post'")
        }
        wrong_payload = [
            (run_id, outputs.get(run_id), pick)
            for run_id, pick in winners.items()
            if statuses.get(run_id) != "succeeded" or not _is_pick(outputs.get(run_id), pick)
        ]
        answered_events = Counter(
            r.run_id
            for r in rs.query(database_url, "SELECT run_id FROM events WHERE type = 'input.answered'")
        )
        starts = Counter((e.run, e.step) for e in ledgers.read_executions(sc.dir) if e.phase == "start")
        pre_reruns = [run_id for run_id in runs.values() if starts[(run_id, "pre")] != 1]
        cancelled = [runs[u] for u in users[RUNS:] if statuses.get(runs[u]) != "cancelled"]
        print(
            f"R9 {database_url.split(':')[0]}: runs={RUNS} answers_per_run={ANSWERS} "
            f"kills={len(killer.kills)} "
            f"restart_max={max(killer.restart_s, default=0):.1f}s elapsed={elapsed:.1f}s "
            f"burst_codes={dict(burst_codes)} replay_problems={len(replay_problems)} "
            f"answered_events_max={max(answered_events[r] for r in ask_ids)} "
            f"lost_or_wrong_payload={len(wrong_payload)} pre_step_reruns={len(pre_reruns)} "
            f"refused_ok={2 * (CANCELLED + 2) - 2 * len(refused)}/{2 * (CANCELLED + 2)} "
            f"cancelled={CANCELLED - len(cancelled)}/{CANCELLED}"
        )
        assert not replay_problems, replay_problems
        assert all(answered_events[r] == 1 for r in ask_ids), answered_events
        assert not wrong_payload, wrong_payload
        assert not pre_reruns, pre_reruns
        assert not refused, refused
        assert not cancelled, cancelled
        sc.check(list(runs.values()))


def _is_pick(output: Any, pick: int) -> bool:
    import json

    value = json.loads(output) if isinstance(output, str) else output
    return isinstance(value, dict) and value.get("pick") == pick
