"""R12: events under step retries: no duplicates, every event tagged with its attempt, stale attempts fenced.

RELIABILITY.md §4.2 R12 (DBOS-py #770). (a) Through a real `baton serve`: runs whose step emits
10 progress events and then fails, up to 3 attempts, each run followed live over SSE. (b) Through
the store's fenced bodies: an attempt whose lease expired and was reclaimed keeps trying to write;
none of it may appear. The audit record `step.stale_result` that the fence itself writes is the
one event of a stale attempt allowed after the fence, since it is the store's, not the attempt's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton.domain.events import EventDraft
from baton.domain.ids import new_worker_id
from baton.engine import step_results
from baton.engine.lifecycle import RunRequest
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import open_runtime
from baton.store import steps as step_store
from baton.store.events import events_after
from tests.e2e.server import Server
from tests.reliability import _sse_support as sse
from tests.reliability.tier import size

pytestmark = pytest.mark.reliability

ATTEMPTS = 3
PROGRESS = 10


def check_attempt_tagging(table: list[dict[str, Any]], attempts: int) -> None:
    """Every `work` event carries its attempt; each attempt has exactly progress 0..9 once, in order;
    attempts never interleave and each one opens with its own step.started."""
    # `step.queued` says the step waits for its next claim: it precedes any attempt, so it has none.
    mine = [e for e in table if e["payload"].get("step_key") == "work" and e["type"] != "step.queued"]
    untagged = [e for e in mine if not isinstance(e["payload"].get("attempt"), int)]
    assert untagged == [], f"events without their attempt: {untagged}"
    logs = [(e["payload"]["attempt"], e["payload"]["message"]) for e in mine if e["type"] == "log"]
    duplicates = [key for key, n in Counter(logs).items() if n > 1]
    assert duplicates == [], f"duplicate (step, attempt, local seq): {duplicates}"
    for attempt in range(1, attempts + 1):
        assert [m for a, m in logs if a == attempt] == [f"progress {i}" for i in range(PROGRESS)]
    order = [e["payload"]["attempt"] for e in mine]
    assert order == sorted(order), f"attempts interleave: {order}"
    starts = [e["payload"]["attempt"] for e in mine if e["type"] == "step.started"]
    assert starts == list(range(1, attempts + 1))
    for attempt in range(1, attempts + 1):
        first = next(e for e in mine if e["payload"]["attempt"] == attempt)
        assert first["type"] == "step.started", f"attempt {attempt} opens with {first['type']}"


def test_r12_retried_steps_never_duplicate_events(database_url: str, tmp_path: Path) -> None:
    seed = sse.reliability_seed("R12")
    rng = random.Random(seed)
    runs_n = size(20, 100)
    srv = Server(database_url=database_url, home=tmp_path, flows=[str(sse.PATH)], workers=1, lease_s=3.0)
    srv.start()
    try:
        pairs = [(f"r12-user-{i}", f"r12-proj-{i}") for i in range(runs_n)]
        tokens = sse.make_tokens(database_url, pairs)
        succeed_on = [rng.choice([3, 99]) for _ in range(runs_n)]  # some pass on the last attempt

        async def scenario() -> list[tuple[dict[str, Any], sse.ClientLog]]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
                created = []
                for i in range(runs_n):
                    resp = await http.post(
                        "/v1/runs",
                        json={
                            "flow": "r12_flaky",
                            "project_id": pairs[i][1],
                            "inputs": {"succeed_on": succeed_on[i]},
                        },
                        headers={"Authorization": f"Bearer {tokens[i]}"},
                    )
                    assert resp.status_code == 201, resp.text
                    created.append(resp.json())
            # Subscribed while the runs go: the consumers see the retries live.
            logs = await asyncio.gather(
                *(
                    sse.read_whole_stream(srv.url, tokens[i], run["id"], read_s=60)
                    for i, run in enumerate(created)
                )
            )
            return [(run, log) for run, (log, _) in zip(created, logs, strict=True)]

        followed = asyncio.run(scenario())
        for i, (run, log) in enumerate(followed):
            table = sse.table_of(srv.url, tokens[i], run["id"])
            check_attempt_tagging(table, ATTEMPTS)
            assert log.problems == []
            assert [e.seq for e in log.events] == [e["id"] for e in table], "SSE = the table, once each"
            # The consumer sees each boundary: attempt n ends with step.retrying, n + 1 starts.
            seen = [(e.type, e.attempt) for e in log.events if e.step_key == "work"]
            for attempt in range(1, ATTEMPTS):
                assert seen.index(("step.retrying", attempt)) < seen.index(("step.started", attempt + 1))
            final = "run.succeeded" if succeed_on[i] == ATTEMPTS else "run.failed"
            assert log.events[-1].type == final
        print(
            f"R12 {runs_n} runs x {ATTEMPTS} attempts: "
            f"{sum(len(log.events) for _, log in followed)} events over SSE"
        )
    finally:
        srv.stop()


# --- (b) a fenced stale attempt writes nothing ------------------------------------------------------

fence_flow = Flow("r12_fence", title="A step whose first attempt loses its lease")


@fence_flow.step(max_attempts=3)
def work(ctx: Any) -> str:  # never called: the test plays both workers
    return "done"


async def _reclaim_after_expiry(rt: Any, run_id: str, lease_s: float) -> Any:
    """Reap until the expired attempt is re-queued, then claim it as another worker."""
    flows = rt.lifecycle.flows
    deadline = time.monotonic() + 10
    while True:
        await rt.db.write(step_results.reap, flows)
        rows = await rt.db.write(
            step_results.claim_with_events, new_worker_id(), 30.0, 1, ["r12_fence"], run_id
        )
        if rows:
            return rows[0]
        assert time.monotonic() < deadline, "the expired lease was never reclaimed"
        await asyncio.sleep(lease_s / 3)


async def test_r12_events_of_a_fenced_stale_attempt_never_appear(database_url: str) -> None:
    seed = sse.reliability_seed("R12-fence")
    rng = random.Random(seed)
    lease_s = 0.3
    async with open_runtime(database_url, catalog=Catalog([fence_flow]), upgrade=False) as rt:
        flows = rt.lifecycle.flows
        for n in range(size(5, 20)):
            run_id = (await rt.lifecycle.create_run(RunRequest(flow="r12_fence", created_by=f"r12f-{n}")))[
                "id"
            ]
            rows = await rt.db.write(
                step_results.claim_with_events, new_worker_id(), lease_s, 1, ["r12_fence"], run_id
            )
            stale = step_results.claim_of(rows[0])  # type: ignore[arg-type]
            early = [
                EventDraft("log", {"message": f"progress {i}"}, step_key="work", attempt=1) for i in range(5)
            ]
            assert await rt.db.write(step_results.append_step_events, stale, early)
            fresh_row = await _reclaim_after_expiry(rt, run_id, lease_s)
            fresh = step_results.claim_of(fresh_row)
            assert fresh.attempt == 2
            # The stale worker wakes up and goes on: progress, a heartbeat, then its result or failure.
            late = [
                EventDraft("log", {"message": f"progress {i}"}, step_key="work", attempt=1)
                for i in range(5, 10)
            ]
            assert not await rt.db.write(step_results.append_step_events, stale, late)
            assert await rt.db.write(step_store.extend_leases, "anyone", [stale.token], 30.0) == []
            if rng.random() < 0.5:
                produced = step_results.Produced(output="stale")
                assert await rt.db.write(step_results.record_success, stale, produced, flows) == []
            else:
                assert not await rt.db.write(step_results.record_failure, stale, "stale", True, flows)
            for i in range(PROGRESS):
                draft = EventDraft("log", {"message": f"progress {i}"}, step_key="work", attempt=2)
                assert await rt.db.write(step_results.append_step_events, fresh, [draft])
            await rt.db.write(
                step_results.record_success, fresh, step_results.Produced(output="fresh"), flows
            )

            table = await rt.db.read(events_after, run_id, 0, 10_000)
            assert [e.seq for e in table] == list(range(1, len(table) + 1))
            fenced_at = next(e.seq for e in table if e.type == "step.lease_expired")
            after_fence = [e for e in table if e.seq > fenced_at and e.attempt == 1]
            assert [e.type for e in after_fence] == ["step.stale_result"], [
                (e.type, e.payload) for e in after_fence
            ]
            attempt_one = [e.payload["message"] for e in table if e.attempt == 1 and e.type == "log"]
            assert attempt_one == [f"progress {i}" for i in range(5)], "only what the lease covered"
            step = (await rt.db.read(step_store.load_steps, run_id))[0]
            assert step.status == "succeeded" and step.output == "fresh" and step.attempt == 2
