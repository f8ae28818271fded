"""Events: dense per-run seq under concurrency, a global log readers never skip, prompt wake-ups.

The PostgreSQL stress test also runs a deliberately naive `id > cursor` reader and shows that it
skips an event, so that the real reader's pass means something.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, create_engine, select

from baton.domain.events import MAX_EVENT_PAYLOAD_BYTES, EventDraft
from baton.engine.follow import follow_run, wait_for_events
from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store.database import sync_url
from baton.store.events import append_events, events_after, global_events_after, naive_global_events_after
from baton.store.schema import events

T = TypeVar("T")

# --- flows --------------------------------------------------------------------------------------

idle = Flow("idle")


@idle.step()
async def only(ctx: Any) -> str:
    return "ok"


#: Per-test gates a step waits on, so a test decides when the worker writes.
GATES: dict[str, asyncio.Event] = {}

gated = Flow("gated")


@gated.step()
async def hold(ctx: Any) -> str:
    await GATES["hold"].wait()
    return "released"


CATALOG = Catalog([idle, gated])


@pytest.fixture(autouse=True)
def _fresh_gates() -> Iterator[None]:
    GATES.clear()
    yield
    GATES.clear()


@pytest.fixture
async def rt(database_url: str) -> Any:
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as runtime:
        yield runtime


async def new_run(rt: Runtime, user: str = "tester") -> str:
    """A run left queued-to-run with no worker, as a target to append events to."""
    created = await rt.lifecycle.create_run(RunRequest(flow="idle", created_by=user))
    return created["id"]


async def all_events(rt: Runtime) -> list[Any]:
    return await rt.db.read(lambda conn: list(conn.execute(select(events).order_by(events.c.id))))


async def read_global_until(rt: Runtime, count: int, limit: int = 1000, timeout: float = 20.0) -> list[Any]:
    """Tail the global log from the start until `count` events arrived (others' open transactions
    on a shared PostgreSQL server may hold the horizon back for a moment)."""
    seen: list[Any] = []
    cursor: str | None = None
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        rows, cursor = await rt.db.read(global_events_after, cursor, limit)
        seen += rows
        if not rows:
            assert time.monotonic() < deadline, f"only {len(seen)} of {count} events became readable"
            await asyncio.sleep(0.02)
    return seen


# --- per-run seq ----------------------------------------------------------------------------


async def test_concurrent_appends_to_one_run_get_dense_seqs(rt: Runtime) -> None:
    run_id = await new_run(rt)
    before = [e.seq for e in await rt.db.read(events_after, run_id)]
    assert before == list(range(1, len(before) + 1))

    def batch(i: int) -> list[EventDraft]:
        return [EventDraft("log", {"writer": i, "part": p}) for p in range(1 + i % 3)]

    writers = 40
    results = await asyncio.gather(*(rt.db.write(append_events, run_id, batch(i)) for i in range(writers)))
    expected_new = sum(1 + i % 3 for i in range(writers))
    for i, seqs in enumerate(results):
        assert len(seqs) == 1 + i % 3
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "one batch gets consecutive seqs"
    rows = await rt.db.read(events_after, run_id, 0, 10_000)
    assert [r.seq for r in rows] == list(range(1, len(before) + expected_new + 1))
    # Each writer's events carry the seqs it was given.
    for i, seqs in enumerate(results):
        assert [r.payload for r in rows if r.seq in seqs] == [
            {"writer": i, "part": p} for p in range(len(seqs))
        ]
    run = await rt.lifecycle.get_run(run_id)
    assert run["last_seq"] == len(rows)


async def test_appends_of_any_size_keep_their_fields_and_order(rt: Runtime) -> None:
    """Appends of 1 to 40 events (PostgreSQL inserts up to 16 in one statement, more with
    executemany): consecutive seqs, ids in seq order, every field as drafted, one transaction
    marker; a missing run is refused with what is wrong, and nothing is written."""
    run_id = await new_run(rt)
    start = len(await rt.db.read(events_after, run_id))
    for size in (1, 3, 16, 17, 40):
        drafts = [
            EventDraft(
                "step.delta", {"text": f'"{size}.{i}" «✓»\n'}, step_key=f"k{i % 2}", attempt=i % 3 or None
            )
            if i % 2
            else EventDraft("log", {"message": "plain", "n": i})
            for i in range(size)
        ]
        seqs = await rt.db.write(append_events, run_id, drafts)
        assert seqs == list(range(start + 1, start + size + 1))
        rows = await rt.db.read(events_after, run_id, start, 1000)
        assert [r.seq for r in rows] == seqs
        assert [(r.type, r.step_key, r.attempt, r.payload) for r in rows] == [
            (d.type, d.step_key, d.attempt, d.payload) for d in drafts
        ]
        assert [r.id for r in rows] == sorted(r.id for r in rows), "ids follow seqs in a transaction"
        assert len({r.tx for r in rows}) == 1, "one transaction, one marker"
        start += size
    run = await rt.lifecycle.get_run(run_id)
    assert run["last_seq"] == start

    before = len(await all_events(rt))
    with pytest.raises(ValueError, match="run run_missing: it does not exist"):
        await rt.db.write(append_events, "run_missing", [EventDraft("log", {"message": "lost"})])
    assert len(await all_events(rt)) == before


async def test_a_payload_too_large_for_an_event_is_refused_and_many_small_ones_are_not(rt: Runtime) -> None:
    """The limit is per event: a batch larger than it in all is fine, one event over it is not,
    and then nothing of the batch is written."""
    run_id = await new_run(rt)
    before = len(await rt.db.read(events_after, run_id))
    many = [EventDraft("log", {"chunk": "x" * 1000, "n": i}) for i in range(100)]  # ~100 KB in all
    seqs = await rt.db.write(append_events, run_id, many)
    assert len(seqs) == 100
    huge = [EventDraft("log", {"n": 0}), EventDraft("step.delta", {"text": "y" * MAX_EVENT_PAYLOAD_BYTES})]
    with pytest.raises(ValueError, match=r"event step.delta payload is \d+ bytes; store large content"):
        await rt.db.write(append_events, run_id, huge)
    assert len(await rt.db.read(events_after, run_id)) == before + 100


# --- the global log -------------------------------------------------------------------------


async def test_the_global_log_returns_every_run_in_order_and_resumes_exactly(rt: Runtime) -> None:
    run_ids = [await new_run(rt, user=f"user{i}") for i in range(3)]
    for round_ in range(4):
        for run_id in run_ids:
            await rt.db.write(append_events, run_id, [EventDraft("log", {"round": round_})])
    table = await all_events(rt)

    everything = await read_global_until(rt, len(table))
    assert [e.id for e in everything] == [e.id for e in table]
    assert {e.run_id for e in everything} == set(run_ids)

    # Small pages resume exactly where the previous one ended: no gap, no repeat.
    paged: list[Any] = []
    cursor: str | None = None
    while True:
        rows, cursor = await rt.db.read(global_events_after, cursor, 4)
        if not rows:
            break
        assert len(rows) <= 4
        paged += rows
    assert [e.id for e in paged] == [e.id for e in table]

    # At the end the cursor stays put, and picks up exactly what is written next.
    rows, same = await rt.db.read(global_events_after, cursor, 100)
    assert rows == [] and same == cursor
    await rt.db.write(
        append_events, run_ids[1], [EventDraft("log", {"late": 1}), EventDraft("log", {"late": 2})]
    )
    await rt.db.write(append_events, run_ids[0], [EventDraft("log", {"late": 3})])
    deadline = time.monotonic() + 20
    fresh: list[Any] = []
    while len(fresh) < 3:
        rows, cursor = await rt.db.read(global_events_after, cursor, 100)
        fresh += rows
        if not rows:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    assert [e.payload for e in fresh] == [{"late": 1}, {"late": 2}, {"late": 3}]
    rows, _ = await rt.db.read(global_events_after, cursor, 100)
    assert rows == []


# --- PostgreSQL: concurrent writers, a proper and a naive reader ----------------------------


class SyncStore:
    """Plain threads over a synchronous engine, running the store's own transaction bodies."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(sync_url(url), pool_size=16, max_overflow=4)

    def run(self, fn: Callable[[Connection], T], hold_s: float = 0.0, before_commit: Any = None) -> T:
        with self.engine.connect() as conn, conn.begin():
            # As Database._transaction does: no clock or xid cached from an earlier transaction.
            for key in ("baton_topics", "baton_tx", "baton_now"):
                conn.info.pop(key, None)
            result = fn(conn)
            if before_commit is not None:
                before_commit(result)
            if hold_s:
                time.sleep(hold_s)
            for key in ("baton_topics", "baton_tx", "baton_now"):
                conn.info.pop(key, None)
        return result

    def close(self) -> None:
        self.engine.dispose()


def _append(run_id: str, drafts: list[EventDraft]) -> Callable[[Connection], list[int]]:
    def body(conn: Connection) -> list[int]:
        seqs = append_events(conn, run_id, drafts)
        # The ids this transaction inserted, still uncommitted.
        query = select(events.c.id).where(events.c.run_id == run_id, events.c.seq.in_(seqs))
        return sorted(conn.execute(query).scalars())

    return body


async def _new_runs(url: str, count: int) -> list[str]:
    async with open_runtime(url, catalog=CATALOG, upgrade=False) as rt:
        return [await new_run(rt, user=f"writer{i}") for i in range(count)]


@pytest.mark.postgres
def test_concurrent_writers_never_make_the_real_reader_skip_but_do_the_naive_one(postgres_url: str) -> None:
    writers = 8
    run_ids = asyncio.run(_new_runs(postgres_url, writers + 2))
    store = SyncStore(postgres_url)
    stop = threading.Event()
    errors: list[BaseException] = []
    proper_seen: list[Any] = []
    naive_seen: list[int] = []
    naive_cursor = [0]
    b_done = threading.Event()
    a_inserted = threading.Event()
    ids: dict[str, list[int]] = {}

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as error:  # surfaced by the assertions below
                errors.append(error)
                stop.set()

        return run

    def writer(i: int) -> None:
        rng = random.Random(i)
        for n in range(25):
            drafts = [EventDraft("log", {"writer": i, "n": n, "k": k}) for k in range(rng.randint(1, 3))]
            store.run(_append(run_ids[i], drafts), hold_s=rng.uniform(0.0, 0.02))
            time.sleep(rng.uniform(0.0, 0.005))

    # The scripted pair: A inserts first (smaller id) and commits late; B inserts after and
    # commits at once. A commits only once the naive reader has moved past B's id.
    def writer_a() -> None:
        def wait_for_naive_past_b(inserted: list[int]) -> None:
            ids["a"] = inserted
            a_inserted.set()
            assert b_done.wait(10), "writer B never committed"
            deadline = time.monotonic() + 10
            while naive_cursor[0] < ids["b"][-1]:
                assert time.monotonic() < deadline, "the naive reader never saw B"
                time.sleep(0.005)

        store.run(
            _append(run_ids[writers], [EventDraft("log", {"who": "A"})]), before_commit=wait_for_naive_past_b
        )

    def writer_b() -> None:
        assert a_inserted.wait(10), "writer A never inserted"
        ids["b"] = store.run(_append(run_ids[writers + 1], [EventDraft("log", {"who": "B"})]))
        b_done.set()

    def proper_reader() -> None:
        cursor: str | None = None
        while not stop.is_set():
            rows, cursor = store.run(lambda conn, after=cursor: global_events_after(conn, after, 500))
            proper_seen.extend(rows)
            if not rows:
                time.sleep(0.002)

    def naive_reader() -> None:
        while not stop.is_set():
            rows = store.run(lambda conn: naive_global_events_after(conn, naive_cursor[0], 500))
            naive_seen.extend(r.id for r in rows)
            if rows:
                naive_cursor[0] = rows[-1].id
            else:
                time.sleep(0.002)

    readers = [
        threading.Thread(target=guarded(proper_reader)),
        threading.Thread(target=guarded(naive_reader)),
    ]
    writing = [threading.Thread(target=guarded(lambda i=i: writer(i))) for i in range(writers)]
    writing += [threading.Thread(target=guarded(writer_a)), threading.Thread(target=guarded(writer_b))]
    try:
        for thread in readers + writing:
            thread.start()
        for thread in writing:
            thread.join(60)
        final = store.run(lambda conn: list(conn.execute(select(events).order_by(events.c.id))))
        # Let both readers catch up with everything committed, then stop them.
        deadline = time.monotonic() + 20
        while len(proper_seen) < len(final) and not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        stop.set()
        for thread in readers:
            thread.join(10)
    finally:
        stop.set()
        store.close()
    assert not errors, errors

    final_ids = [e.id for e in final]
    written = sum(1 for e in final if e.type == "log")
    assert written >= writers * 25 + 2

    # The real reader: every event exactly once, each run's events in seq order.
    proper_ids = [e.id for e in proper_seen]
    assert len(proper_ids) == len(set(proper_ids)), "the real reader saw an event twice"
    assert sorted(proper_ids) == final_ids, "the real reader missed events"
    by_run: dict[str, list[int]] = defaultdict(list)
    for e in proper_seen:
        by_run[e.run_id].append(e.seq)
    for run_id, seqs in by_run.items():
        assert seqs == list(range(1, len(seqs) + 1)), f"run {run_id} was read out of seq order"

    # The naive reader skipped A's event: its id is below B's, but it committed after the
    # reader had already moved past B.
    skipped = set(final_ids) - set(naive_seen)
    assert ids["a"][0] < ids["b"][0]
    assert set(ids["a"]) <= skipped, "the naive reader was expected to skip writer A's event"
    assert skipped, "the naive reader skipped nothing"


# --- wake-ups -------------------------------------------------------------------------------


async def test_waiting_readers_wake_promptly_when_another_process_writes(database_url: str) -> None:
    """The reader's runtime is not the worker's, so only the cross-process path can wake it:
    LISTEN/NOTIFY on PostgreSQL, a short poll on SQLite."""
    GATES["hold"] = asyncio.Event()
    async with (
        open_runtime(database_url, catalog=CATALOG, upgrade=False) as working,
        open_runtime(database_url, catalog=CATALOG, upgrade=False) as watching,
    ):
        run_id = (await working.lifecycle.create_run(RunRequest(flow="gated")))["id"]
        worker = working.worker(WorkerSettings(lease_s=3.0, poll_s=0.05, reaper_s=0.5))
        work = asyncio.create_task(worker.run(until_idle=True))
        try:
            deadline = time.monotonic() + 5
            while True:
                rows = await watching.db.read(events_after, run_id)
                if rows and rows[-1].type == "step.started":
                    break
                assert time.monotonic() < deadline, [r.type for r in rows]
                await asyncio.sleep(0.02)
            last_seq = rows[-1].seq

            woken: dict[str, float] = {}
            released = [0.0]

            async def waiter() -> list[Any]:
                found = await wait_for_events(watching.db, run_id, last_seq, timeout=15)
                woken["wait_for_events"] = time.monotonic()
                return found

            async def follower() -> list[str]:
                types = []
                async for row in follow_run(watching.db, run_id, last_seq):
                    types.append(row.type)
                woken["follow_run"] = time.monotonic()
                return types

            waiting = asyncio.create_task(waiter())
            following = asyncio.create_task(follower())
            await asyncio.sleep(0.5)  # both are asleep in their wait (and LISTEN is up)
            assert not waiting.done() and not following.done()
            released[0] = time.monotonic()
            GATES["hold"].set()
            found = await asyncio.wait_for(waiting, 10)
            types = await asyncio.wait_for(following, 10)
            await asyncio.wait_for(work, 10)
        finally:
            GATES["hold"].set()
            if not work.done():
                work.cancel()
    assert found and found[0].type == "step.succeeded"
    assert types[0] == "step.succeeded" and types[-1] == "run.succeeded"
    assert woken["wait_for_events"] - released[0] < 1.0
    assert woken["follow_run"] - released[0] < 1.0
