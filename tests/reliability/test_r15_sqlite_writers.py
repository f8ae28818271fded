"""R15: 16 writer processes and 4 tailing readers on one WAL SQLite file; no lock error escapes the store.

RELIABILITY.md §4.2 R15. Every write goes through Baton's storage layer (`Database.write` with the
engine's real transaction bodies: claim, heartbeat, fenced event append, completion), each in its
own OS process so the GIL hides nothing. Each process keeps a ledger of what the store
acknowledged; the file must hold all of it afterwards. The negative control runs the same claim
body on a deferred `BEGIN` without the store's retries and must see SQLITE_BUSY, which proves the
oracle can see the failure. The static check proves every writing transaction body goes through
`Database.write` (BEGIN IMMEDIATE), never through `Database.read`.
"""

from __future__ import annotations

import ast
import asyncio
import json
import multiprocessing
import os
import random
import re
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, event, select

from baton.domain.events import EventDraft
from baton.domain.ids import new_id, new_worker_id
from baton.engine import step_results
from baton.store import runs as run_store
from baton.store import steps as step_store
from baton.store.database import Database, sync_url
from baton.store.events import append_events, events_after
from baton.store.schema import events, steps
from tests.reliability.tier import size

pytestmark = pytest.mark.reliability

WRITERS = 16
READERS = 4
#: claim 40 %, heartbeat 30 %, event append 20 %, complete 10 % (RELIABILITY.md R15)
MIX = (("claim", 40), ("heartbeat", 30), ("append", 20), ("complete", 10))
RUNS = 16
STEPS_PER_RUN = 250
#: frozen pass bar for a write transaction's p99; asserted only when BATON_R15_ASSERT_P99=1 (see report)
P99_BAR_S = 0.250


def _seed() -> int:
    value = int(os.environ.get("BATON_RELIABILITY_SEED") or random.randrange(1, 2**31))
    print(f"R15 seed={value} (BATON_RELIABILITY_SEED={value} reproduces the choices)")
    return value


def _seed_runs(url: str) -> list[str]:
    """Running runs full of queued single-attempt steps, written through the store's own bodies."""

    def body(conn: Connection) -> list[str]:
        ids = []
        for i in range(RUNS):
            run_id = new_id("run")
            run_store.insert_run(
                conn,
                {
                    "id": run_id,
                    "flow": "r15",
                    "inputs": {},
                    "status": "running",
                    "policy": {},
                    "concurrency_key": f"r15:{i}",
                },
            )
            step_store.insert_steps(
                conn,
                run_id,
                [
                    {
                        "key": f"s{n}",
                        "kind": "code",
                        "status": "queued",
                        "needs": [],
                        "position": n,
                        "spec": {},
                        "max_attempts": 1000,
                        "available_at": 0.0,
                    }
                    for n in range(STEPS_PER_RUN)
                ],
            )
            ids.append(run_id)
        return ids

    async def seed() -> list[str]:
        db = await Database.open(url, upgrade=False)
        try:
            return await db.write(body)
        finally:
            await db.close()

    return asyncio.run(seed())


# --- the processes ----------------------------------------------------------------------------


def _writer(url: str, index: int, seed: int, go: Any, stop_at: Any, out: str) -> None:
    """One writer process: the R15 mix through `Database.write`, with a ledger of acknowledgements."""
    rng = random.Random(seed * 1000 + index)
    ledger: dict[str, Any] = {
        "claims": [],
        "appends": [],
        "completions": [],
        "heartbeats": 0,
        "latencies": [],
        "errors": [],
        "ops": {name: 0 for name, _ in MIX},
    }
    names = [name for name, _ in MIX]
    weights = [weight for _, weight in MIX]

    async def main() -> None:
        db = await Database.open(url, upgrade=False)
        worker = new_worker_id()
        held: list[step_results.Claim] = []
        appended = 0
        go.wait()
        try:
            while time.time() < stop_at.value:
                op = rng.choices(names, weights)[0]
                if op != "claim" and not held:
                    op = "claim"
                ledger["ops"][op] += 1
                started = time.perf_counter()
                try:
                    if op == "claim":
                        rows = await db.write(step_results.claim_with_events, worker, 60.0, 1, None)
                        for row in rows:
                            claim = step_results.Claim(
                                row.id, row.run_id, row.key, row.attempt, row.lease_token
                            )
                            held.append(claim)
                            ledger["claims"].append([row.id, row.attempt, row.lease_token])
                    elif op == "heartbeat":
                        kept = await db.write(step_store.extend_leases, worker, [c.token for c in held], 60.0)
                        assert len(kept) == len(held), (
                            "a lease of this writer was lost: nobody else reaps here"
                        )
                        ledger["heartbeats"] += 1
                    elif op == "append":
                        claim = rng.choice(held)
                        appended += 1
                        mark = f"{index}:{appended}"
                        draft = EventDraft("log", {"mark": mark}, step_key=claim.key, attempt=claim.attempt)
                        assert await db.write(step_results.append_step_events, claim, [draft])
                        ledger["appends"].append([claim.run_id, mark])
                    else:
                        claim = held.pop(rng.randrange(len(held)))
                        produced = step_results.Produced(output={"by": index})
                        await db.write(step_results.record_success, claim, produced, {})
                        ledger["completions"].append([claim.step_id, claim.attempt])
                except Exception as error:  # anything escaping the store is what R15 counts
                    ledger["errors"].append(f"{op}: {type(error).__name__}: {error}")
                ledger["latencies"].append(time.perf_counter() - started)
        finally:
            ledger["busy_retries"] = db.busy_retries
            await db.close()

    asyncio.run(main())
    Path(out).write_text(json.dumps(ledger))


def _reader(url: str, index: int, run_ids: list[str], go: Any, stop_at: Any, out: str) -> None:
    """SSE-style tailing: per run, read events after the last seen seq; seqs must stay dense."""
    result: dict[str, Any] = {"reads": 0, "events": 0, "errors": [], "gaps": []}

    async def main() -> None:
        db = await Database.open(url, upgrade=False)
        cursors = dict.fromkeys(run_ids, 0)
        go.wait()
        try:
            while time.time() < stop_at.value:
                for run_id in run_ids:
                    try:
                        rows = await db.read(events_after, run_id, cursors[run_id], 500)
                    except Exception as error:
                        result["errors"].append(f"{type(error).__name__}: {error}")
                        continue
                    result["reads"] += 1
                    for row in rows:
                        if row.seq != cursors[run_id] + 1:
                            result["gaps"].append([run_id, cursors[run_id], row.seq])
                        cursors[run_id] = row.seq
                        result["events"] += 1
                await asyncio.sleep(0.01)
        finally:
            await db.close()

    asyncio.run(main())
    Path(out).write_text(json.dumps(result))


def _run_processes(targets: list[tuple[Callable[..., None], tuple[Any, ...]]], seconds: float) -> None:
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    stop_at = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=fn, args=(*args[:-1], go, stop_at, args[-1])) for fn, args in targets]
    for proc in procs:
        proc.start()
    # Start together once every process is up, so all of them contend for the whole duration.
    stop_at.value = time.time() + 1.0 + seconds
    go.set()
    for proc in procs:
        proc.join(seconds + 60)
        if proc.is_alive():
            proc.kill()
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]


# --- the test -------------------------------------------------------------------------------------


def test_r15_sixteen_writer_processes_no_lock_error_escapes(sqlite_url: str, tmp_path: Path) -> None:
    seed = _seed()
    seconds = size(15, 60)
    run_ids = _seed_runs(sqlite_url)
    targets: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
        (_writer, (sqlite_url, i, seed, str(tmp_path / f"w{i}.json"))) for i in range(WRITERS)
    ]
    targets += [(_reader, (sqlite_url, i, run_ids, str(tmp_path / f"r{i}.json"))) for i in range(READERS)]
    _run_processes(targets, seconds)

    ledgers = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(WRITERS)]
    readers = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(READERS)]
    errors = [e for ledger in ledgers for e in ledger["errors"]] + [e for r in readers for e in r["errors"]]
    latencies = sorted(x for ledger in ledgers for x in ledger["latencies"])
    ops = {name: sum(ledger["ops"][name] for ledger in ledgers) for name, _ in MIX}
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    report = (
        f"R15 {WRITERS} writers x {seconds}s: {len(latencies)} write tx {ops}, "
        f"busy retries inside the store={sum(ledger['busy_retries'] for ledger in ledgers)}, "
        f"p50={statistics.median(latencies) * 1000:.1f}ms p99={p99 * 1000:.1f}ms "
        f"max={latencies[-1] * 1000:.1f}ms; readers: {sum(r['reads'] for r in readers)} reads, "
        f"{sum(r['events'] for r in readers)} events"
    )
    print(report)
    assert errors == [], f"errors reached callers of the store: {errors[:5]}"
    assert all(r["gaps"] == [] for r in readers), "a tailing reader saw a seq gap"
    assert min(ops.values()) > 0, ops

    # 100 % of acknowledged writes are in the file, and the file is sound.
    db_file = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(db_file) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    engine = create_engine(sync_url(sqlite_url))
    try:
        with engine.connect() as conn:
            step_rows = {row.id: row for row in conn.execute(select(steps))}
            logs = {
                (row.run_id, row.payload["mark"])
                for row in conn.execute(
                    select(events.c.run_id, events.c.payload).where(events.c.type == "log")
                )
            }
            started = {
                (row.step_key, row.attempt)
                for row in conn.execute(
                    select(events.c.step_key, events.c.attempt).where(events.c.type == "step.started")
                )
            }
    finally:
        engine.dispose()
    claims = [c for ledger in ledgers for c in ledger["claims"]]
    assert len({c[0] for c in claims}) == len(claims), "a step was claimed twice"
    for step_id, attempt, _token in claims:
        assert step_rows[step_id].attempt >= attempt
        assert (step_rows[step_id].key, attempt) in started
    appends = [tuple(a) for ledger in ledgers for a in ledger["appends"]]
    assert set(appends) <= logs, f"{len(set(appends) - logs)} acknowledged events are missing"
    completions = [c for ledger in ledgers for c in ledger["completions"]]
    for step_id, attempt in completions:
        assert step_rows[step_id].status == "succeeded" and step_rows[step_id].attempt == attempt
    if os.environ.get("BATON_R15_ASSERT_P99") == "1":
        assert p99 <= P99_BAR_S, report


# --- negative control: a deferred BEGIN on a read-then-write path ------------------------------------


def _deferred_read_then_write(
    url: str, run_ids: list[str], index: int, go: Any, stop_at: Any, out: str
) -> None:
    """Store bodies that read, then write (a run's steps, then an event) on a deferred BEGIN, no retries.

    (The claim itself is one UPDATE … WHERE id IN (SELECT …) on SQLite now, a write from its first
    statement; a read-then-write body is what a deferred BEGIN breaks.)
    """
    engine = create_engine(sync_url(url), connect_args={"timeout": 5.0})

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA busy_timeout=5000")

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")  # the defect under test: deferred, upgraded by the first write

    rng = random.Random(index)
    busy = 0
    writes = 0
    go.wait()
    while time.time() < stop_at.value:
        run_id = rng.choice(run_ids)
        try:
            with engine.connect() as conn, conn.begin():
                step_store.load_steps(conn, run_id)
                time.sleep(0.001)  # the rest of the read, on 2 busy cores
                append_events(conn, run_id, [EventDraft("log", {"control": index})])
                for key in ("baton_topics", "baton_tx", "baton_now"):
                    conn.info.pop(key, None)
            writes += 1
        except Exception as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            busy += 1
    engine.dispose()
    Path(out).write_text(json.dumps({"busy": busy, "writes": writes}))


def test_r15_negative_control_deferred_begin_hits_busy(sqlite_url: str, tmp_path: Path) -> None:
    run_ids = _seed_runs(sqlite_url)[:4]
    procs = 8
    _run_processes(
        [
            (_deferred_read_then_write, (sqlite_url, run_ids, i, str(tmp_path / f"d{i}.json")))
            for i in range(procs)
        ],
        3.0,
    )
    results = [json.loads((tmp_path / f"d{i}.json").read_text()) for i in range(procs)]
    busy = sum(r["busy"] for r in results)
    print(
        f"R15 control: deferred BEGIN, {procs} processes x 3s: {busy} BUSY, "
        f"{sum(r['writes'] for r in results)} writes"
    )
    assert busy >= 1, "a deferred read-then-write transaction was expected to hit SQLITE_BUSY"


# --- static check: every writing transaction body runs under BEGIN IMMEDIATE --------------------------

SRC = Path(__file__).resolve().parents[2] / "src" / "baton"
_WRITE_CALLS = {"insert", "update", "delete"}


#: the modules whose top-level functions are transaction bodies (the storage layer and the engine's)
_BODY_MODULES = ("store", "engine/step_results.py", "engine/progress.py")


def _calls(node: ast.AST) -> set[str]:
    """Plain-name calls (`insert(…)`, `append_events(…)`, `step_store.finish_step(…)` as its last name)."""
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            if isinstance(sub.func, ast.Name):
                names.add(sub.func.id)
            elif isinstance(sub.func, ast.Attribute) and isinstance(sub.func.value, ast.Name):
                if sub.func.value.id.endswith("_store") or sub.func.value.id in ("progress",):
                    names.add(sub.func.attr)
    return names


_SQL_WRITE = re.compile(r"\b(UPDATE \w+ SET|INSERT INTO|DELETE FROM)\b", re.IGNORECASE)


def _writes_sql_text(fn: ast.FunctionDef) -> bool:
    """The function builds a writing statement from SQL text (`text(f"UPDATE steps SET …")`)."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # its docstring may well name an UPDATE
    return any(
        isinstance(sub, ast.Constant) and isinstance(sub.value, str) and _SQL_WRITE.search(sub.value)
        for statement in body
        for sub in ast.walk(statement)
    )


def _executed_statements(node: ast.AST) -> set[str]:
    """Names of prebuilt statements passed to `conn.execute(NAME, …)` or `direct.X(conn, NAME, …)`."""
    found = set()
    for sub in ast.walk(node):
        if not (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)):
            continue
        on_direct = isinstance(sub.func.value, ast.Name) and sub.func.value.id == "direct"
        position = 1 if on_direct else 0
        if (on_direct or sub.func.attr == "execute") and len(sub.args) > position:
            statement = sub.args[position]
            if isinstance(statement, ast.Name):
                found.add(statement.id)
    return found


def writing_functions() -> set[str]:
    """Top-level functions of the storage layer that write, directly or through another one."""
    paths = [p for p in SRC.rglob("*.py") if str(p.relative_to(SRC)).startswith(_BODY_MODULES)]
    direct: set[str] = set()
    calls: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text())
        statements = {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign) and _WRITE_CALLS & _calls(node.value)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef):
                used = _calls(fn)
                calls.setdefault(fn.name, set()).update(used)
                if _WRITE_CALLS & used or statements & _executed_statements(fn) or _writes_sql_text(fn):
                    direct.add(fn.name)
    writers = set(direct)
    changed = True
    while changed:
        changed = False
        for name, used in calls.items():
            if name not in writers and used & writers:
                writers.add(name)
                changed = True
    return writers


def _read_transactions() -> list[tuple[str, int, str]]:
    """Every `X.read(fn, …)` call with the name of the body it runs."""
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "read"
                and node.args
            ):
                body = node.args[0]
                name = (
                    body.attr
                    if isinstance(body, ast.Attribute)
                    else body.id
                    if isinstance(body, ast.Name)
                    else ""
                )
                found.append((str(path.relative_to(SRC)), node.lineno, name))
    return found


def test_r15_static_every_writing_body_runs_in_an_immediate_transaction() -> None:
    writers = writing_functions()
    assert {
        "claim_steps",
        "append_events",
        "record_success",
        "extend_leases",
        "append_step_events",
    } <= writers
    misuse = [(path, line, name) for path, line, name in _read_transactions() if name in writers]
    assert misuse == [], f"writing bodies run in read (deferred) transactions: {misuse}"
    # The only BEGIN in the package is the store's: IMMEDIATE for every writing connection.
    begins = []
    for path in SRC.rglob("*.py"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if '"BEGIN' in line or "'BEGIN" in line:
                begins.append((str(path.relative_to(SRC)), lineno, line.strip()))
    assert [b[0] for b in begins] == ["store/database.py"], begins
    assert 'BEGIN" if read_only else "BEGIN IMMEDIATE' in begins[0][2], begins
