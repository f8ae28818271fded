"""R11: SSE resume with Last-Event-ID across server kills and restarts: 0 missed, 0 duplicated events.

RELIABILITY.md §4.2 R11 (headline). A real `baton serve` (API + in-process worker) runs; every
run has two steps writing events at once, and the test adds writers of its own on the same runs
(cancels, answers to an input request) while the server is SIGKILLed (the reaper then writes the
lease expiries) and restarted gracefully. Each client drops its connection every U(0.2, 3) s,
sometimes mid-frame, and comes back with the last id it fully received. The oracle is the events
table. Extends tests/e2e/test_sse.py (single client, one restart) to the full scenario.

The PostgreSQL negative control shows that a plain bigserial id tailed by `id > cursor` skips
events under the same kind of concurrent writers, while the per-run seq that R11 relies on does not.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, create_engine, select

from baton.domain.events import EventDraft
from baton.store.database import sync_url
from baton.store.events import append_events, events_after, naive_global_events_after
from baton.store.schema import events
from tests.e2e.server import Server
from tests.reliability import _sse_support as sse
from tests.reliability.tier import size

pytestmark = pytest.mark.reliability


async def _with_retries(call: Any, what: str, deadline_s: float = 30.0) -> httpx.Response:
    """An API call that may land while the server is down: retried until it gets an answer."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            resp: httpx.Response = await call()
            if resp.status_code < 500:
                return resp
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{what} never got through"
        await asyncio.sleep(0.2)


def test_r11_sse_clients_resume_exactly_across_kills_and_restarts(database_url: str, tmp_path: Path) -> None:
    seed = sse.reliability_seed("R11")
    rng = random.Random(seed)
    clients = size(10, 50)
    restarts = size(2, 10)
    count = size(100, 900)
    srv = Server(
        database_url=database_url,
        home=tmp_path,
        flows=[str(sse.PATH)],
        workers=1,
        lease_s=3.0,
        extra_env={"BATON_SSE_KEEPALIVE_S": "1"},
    )
    srv.start()
    started = time.monotonic()
    try:
        pairs = [(f"r11-user-{i}", f"r11-proj-{i}") for i in range(clients + 2)]
        tokens = sse.make_tokens(database_url, pairs)
        stranger = tokens[-1]
        runs: list[dict[str, Any]] = []
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            flows = ["r11_ask" if i % 5 == 4 or i == clients else "r11_burst" for i in range(clients + 1)]
            # The runs to cancel talk 5 times longer, so a cancel held up by a restart still lands
            # while they run (a 409 on a finished run would test nothing).
            cancelled = [i for i, flow in enumerate(flows) if flow == "r11_burst"][: max(1, clients // 4)]
            for i, flow in enumerate(flows):
                body = {
                    "flow": flow,
                    "project_id": pairs[i][1],
                    "inputs": {"count": count * (5 if i in cancelled else 1), "interval_s": 0.02},
                }
                resp = http.post("/v1/runs", json=body, headers={"Authorization": f"Bearer {tokens[i]}"})
                assert resp.status_code == 201, resp.text
                runs.append(resp.json())
        held_run = runs.pop()  # waits for its answer all along: the beyond-the-head watcher's run
        to_cancel = cancelled
        to_answer = [i for i, r in enumerate(runs) if r["flow"] == "r11_ask"]

        async def scenario() -> tuple[list[sse.ClientLog], sse.ClientLog, int]:
            followers = [
                asyncio.create_task(
                    sse.follow_with_drops(
                        srv.url, tokens[i], run["id"], random.Random(seed + i), deadline_s=size(120, 600)
                    )
                )
                for i, run in enumerate(runs)
            ]

            async def cancel_later(i: int) -> None:
                await asyncio.sleep(rng.uniform(0.3, 2.0))
                async with httpx.AsyncClient(
                    base_url=srv.url, headers={"Authorization": f"Bearer {tokens[i]}"}
                ) as c:
                    resp = await _with_retries(
                        lambda: c.post(f"/v1/runs/{runs[i]['id']}/cancel", json={}), "cancel"
                    )
                    assert resp.status_code in (200, 409), resp.text

            async def answer_later(i: int) -> None:
                await asyncio.sleep(rng.uniform(1.0, 6.0))
                async with httpx.AsyncClient(
                    base_url=srv.url, headers={"Authorization": f"Bearer {tokens[i]}"}
                ) as c:
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        resp = await _with_retries(
                            lambda: c.get("/v1/inputs", params={"status": "pending"}), "list"
                        )
                        pending = [r for r in resp.json() if r["run_id"] == runs[i]["id"]]
                        if pending:
                            url = f"/v1/inputs/{pending[0]['id']}/answer"
                            answered = await _with_retries(
                                lambda url=url: c.post(url, json={"answer": {}}),
                                "answer",
                            )
                            if answered.status_code == 200:
                                return
                        await asyncio.sleep(0.2)
                    raise AssertionError(f"could not answer the input of run {runs[i]['id']}")

            async def restart_server() -> None:
                for n in range(restarts):
                    await asyncio.sleep(rng.uniform(1.0, 3.0))
                    if n % 2 == 0:
                        await asyncio.to_thread(srv.kill)
                    else:
                        await asyncio.to_thread(srv.stop)
                    await asyncio.to_thread(srv.start)

            writers = [asyncio.create_task(cancel_later(i)) for i in to_cancel]
            writers += [asyncio.create_task(answer_later(i)) for i in to_answer]
            await restart_server()
            print(f"R11 restarts done at {time.monotonic() - started:.1f}s")
            # After the last restart: a client past the head waits quietly, seeing only keep-alives.
            watcher = asyncio.create_task(
                sse.hold_stream(srv.url, tokens[clients], held_run["id"], "1000000", sse.KEEPALIVE_WAIT_S)
            )
            logs = await asyncio.gather(*followers)
            print(f"R11 clients done at {time.monotonic() - started:.1f}s")
            await asyncio.gather(*writers)
            watched, status = await watcher
            return list(logs), watched, status

        logs, watched, watched_status = asyncio.run(scenario())
        load_s = time.monotonic() - started

        # Per client: exactly the table, ending with the terminal event, then a closed stream.
        totals = {"events": 0, "drops": 0, "mid_frame": 0, "connections": 0, "transport_errors": 0}
        for i, (run, log) in enumerate(zip(runs, logs, strict=True)):
            table = sse.table_of(srv.url, tokens[i], run["id"])
            assert log.problems == [], (run["id"], log.problems[:5])
            got = [e.seq for e in log.events]
            assert got == [e["id"] for e in table], (
                f"run {run['id']}: received seqs differ from 1..{len(table)}"
            )
            assert got == list(range(1, len(table) + 1))
            assert [e.type for e in log.events] == [e["type"] for e in table]
            assert log.events[-1].type in sse.TERMINAL_TYPES and log.closed_by_server_after_terminal
            totals["events"] += len(got)
            totals["drops"] += log.drops
            totals["mid_frame"] += log.mid_frame_drops
            totals["connections"] += log.connections
            totals["transport_errors"] += log.transport_errors
        kinds = {e.type for log in logs for e in log.events}
        assert {"run.cancel_requested", "input.answered", "step.delta", "log"} <= kinds, kinds
        assert "step.lease_expired" in kinds, "the SIGKILL was meant to leave leases for the reaper"

        # Past the head: 200, no event, only comment keep-alives.
        assert watched_status == 200 and watched.events == [] and watched.problems == []
        assert watched.keepalives >= 1, "no keep-alive in the watch window"

        async def late_and_foreign() -> None:
            for i, run in enumerate(runs):
                late, ended = await sse.read_whole_stream(srv.url, tokens[i], run["id"])
                table = sse.table_of(srv.url, tokens[i], run["id"])
                assert ended and late.problems == []
                assert [e.seq for e in late.events] == [e["id"] for e in table], "late subscriber's replay"
            foreign, _ = await sse.read_whole_stream(srv.url, stranger, runs[0]["id"])
            assert foreign.problems == ["status 404"], foreign.problems

        asyncio.run(late_and_foreign())
        print(
            f"R11 {clients} clients, {restarts} restarts ({(restarts + 1) // 2} SIGKILL): {totals}, "
            f"load {load_s:.1f}s, watcher keep-alives={watched.keepalives}"
        )
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {tokens[clients]}"}) as c:
            c.post(f"/v1/runs/{held_run['id']}/cancel", json={})
    finally:
        srv.stop()


# --- negative control (PostgreSQL): a plain bigserial tailed by `id > cursor` skips ---------------------


@pytest.mark.postgres
def test_r11_negative_control_bigserial_tail_skips_but_run_seq_does_not(postgres_url: str) -> None:
    seed = sse.reliability_seed("R11-control")
    rng = random.Random(seed)
    from tests.integration.test_events import _new_runs  # the store's own run creation, no worker

    writers = 8
    run_ids = asyncio.run(_new_runs(postgres_url, writers))
    engine = create_engine(sync_url(postgres_url), pool_size=writers + 2)
    stop = threading.Event()
    naive_seen: set[int] = set()
    seq_seen: dict[str, list[int]] = {run_id: [] for run_id in run_ids}
    errors: list[BaseException] = []

    def write(i: int) -> None:
        local = random.Random(seed * 31 + i)
        try:
            while not stop.is_set():
                with engine.connect() as conn, conn.begin():
                    run_id = run_ids[local.randrange(len(run_ids))]  # several writers per run
                    append_events(conn, run_id, [EventDraft("log", {"w": i})])
                    # The rest of a transaction (a step's result, its artifacts) after the append.
                    time.sleep(local.uniform(0, 0.02))
                    for key in ("baton_topics", "baton_tx", "baton_now"):
                        conn.info.pop(key, None)
        except BaseException as error:
            errors.append(error)

    def tail_naive() -> None:
        cursor = 0
        while not stop.is_set():
            with engine.connect() as conn:
                rows = naive_global_events_after(conn, cursor, 1000)
            naive_seen.update(r.id for r in rows)
            if rows:
                cursor = rows[-1].id
            time.sleep(0.001)

    def tail_seq() -> None:
        cursors = dict.fromkeys(run_ids, 0)
        while not stop.is_set():
            with engine.connect() as conn:
                for run_id in run_ids:
                    rows = events_after(conn, run_id, cursors[run_id], 1000)
                    seq_seen[run_id] += [r.seq for r in rows]
                    if rows:
                        cursors[run_id] = rows[-1].seq

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    threads += [threading.Thread(target=tail_naive), threading.Thread(target=tail_seq)]
    for thread in threads:
        thread.start()
    time.sleep(rng.uniform(3.0, 4.0))
    stop.set()
    for thread in threads:
        thread.join(30)

    def everything(conn: Connection) -> list[Any]:
        return list(
            conn.execute(
                select(events.c.id, events.c.run_id, events.c.seq).where(events.c.run_id.in_(run_ids))
            )
        )

    with engine.connect() as conn:
        final = everything(conn)
    engine.dispose()
    assert not errors, errors
    skipped = {r.id for r in final} - naive_seen
    # The tailers stopped with the writers; the last events may simply not have been read yet.
    last_read = max(naive_seen)
    skipped = {event_id for event_id in skipped if event_id < last_read}
    for run_id, seqs in seq_seen.items():
        assert seqs == list(range(1, len(seqs) + 1)), f"the per-run seq tail of {run_id} skipped or repeated"
    print(
        f"R11 control: {len(final)} events by {writers} writers; naive id>cursor tail skipped {len(skipped)}"
    )
    assert skipped, "the naive bigserial tail was expected to skip at least one event"
