"""History benchmark: the API over a database of 100,000 runs and 5 million events.

    python bench/history.py [--quick] [--scale F] [--database sqlite|postgres|both] [--reseed]

Seeding goes around the engine, with bulk SQL: a recursive CTE `INSERT … SELECT` on SQLite,
`generate_series` on PostgreSQL. 100,000 x F runs over 100 projects (1 in 20 failed, 1 in 50
cancelled, five flows), two steps each, 50 events each, and one run (the newest) with 10,000
events. The user `bench` is a member of 10 of the projects (a tenth of the runs). The seeded
database is kept between runs, keyed by scale and by the migrations' revision and content:
~/.cache/baton-bench/history-KEY.db, and the PostgreSQL database `baton_hist_KEY` on the bench
server (BATON_BENCH_POSTGRES_URL). --reseed builds it again. --quick is --scale 0.1.

Against `baton serve --workers 0` over the seeded database, sequential requests with one
keep-alive connection (200 of each; 50 with --quick):

* `GET /v1/runs` first page; filtered page (`status=failed&flow=…`); deep cursor (a page
  starting 90 % of the way down the caller's runs); `GET /v1/runs/{id}` of random runs: p99;
* `GET /v1/runs/{id}/stream` of the 10,000-event run: time until the last event is read (median of 5);
* the server's RSS after all that.

Targets (issue 7, item 4): each p99 at most 20 ms; replay of 10,000 events under 0.5 s; server
RSS at most 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
from common import (
    Results,
    admin_dsn,
    make_tokens,
    percentile,
    pg_problem,
    pg_url_of,
    print_load,
    rss_mib,
    schema_key,
    server,
)

from baton.store.migrate import upgrade

CACHE = Path("~/.cache/baton-bench").expanduser()
TARGET_P99_MS = 20.0
TARGET_REPLAY_S = 0.5
TARGET_RSS_MIB = 200.0
BIG_EVENTS = 10_000
EVENTS_PER_RUN = 50
PROJECTS = 100
MEMBER_OF = 10
FLOWS = ("repo-review", "draft-critique", "post-variants", "handoff", "bench-other")
T0 = 1_700_000_000.0
SPEC = json.dumps(
    {
        "agent": None, "artifact": None, "handler": None, "engine": "offline", "prompt": "Write.",
        "schema": None, "timeout_s": None, "backoff_s": 1.0, "max_attempts": 3, "label": "step",
    }
)  # fmt: skip


def _status(i: str) -> str:
    """SQL for run i's status: 1 in 20 failed, 1 in 50 cancelled, else succeeded."""
    return f"CASE WHEN {i} % 20 = 7 THEN 'failed' WHEN {i} % 50 = 3 THEN 'cancelled' ELSE 'succeeded' END"


def _flow(i: str) -> str:
    return "CASE " + " ".join(f"WHEN {i} % 5 = {k} THEN '{f}'" for k, f in enumerate(FLOWS)) + " END"


def seed_statements(runs: int, dialect: str) -> list[str]:
    """INSERT … SELECT statements that fill runs, steps and events (run 0 is the newest and biggest)."""
    if dialect == "sqlite":
        series = "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last}) "
        source = "n"
        pad = "printf('%07d', {i})"
        project = f"printf('proj-%03d', i % {PROJECTS})"
        json_cast = ""
    else:
        series = ""
        source = "generate_series(0, {last}) AS n(i)"
        pad = "lpad(({i})::text, 7, '0')"
        project = f"'proj-' || lpad((i % {PROJECTS})::text, 3, '0')"
        json_cast = "::json"
    run_id = "'run_seed_' || " + pad.format(i="i")
    status = _status("i")
    # Run i was created (runs - i) * 10 s after T0: run 0 is the newest.
    created = f"({T0} + ({runs} - i) * 10.0)"
    terminal = (
        f"CASE {status} WHEN 'failed' THEN 'run.failed' WHEN 'cancelled' THEN 'run.cancelled'"
        " ELSE 'run.succeeded' END"
    )
    events_of = f"CASE WHEN i = 0 THEN {BIG_EVENTS} ELSE {EVENTS_PER_RUN} END"
    insert_runs = (
        series.format(last=runs - 1)
        + "INSERT INTO runs (id, flow, flow_version, project_id, created_by, title, inputs, status,"
        " status_reason, policy, concurrency_key, concurrency_limit, concurrency_strategy, priority,"
        " last_seq, created_at, queued_at, started_at, finished_at, updated_at) "
        f"SELECT {run_id}, {_flow('i')}, '1', {project}, 'seeder', 'Seeded run ' || i, '{{}}'{json_cast},"
        f" {status}, 'seeded', '{{}}'{json_cast}, {project} || ':seeder', 1, 'enqueue', 0, {events_of},"
        f" {created}, {created}, {created} + 1, {created} + 5, {created} + 5 "
        f"FROM {source.format(last=runs - 1)}"
    )
    insert_steps = (
        series.format(last=2 * runs - 1)
        + "INSERT INTO steps (id, run_id, key, kind, status, needs, unmet, position, spec,"
        " attempt, max_attempts, available_at, started_at, finished_at, output_text, engine) "
        f"SELECT 'step_seed_' || {pad.format(i='i')}, 'run_seed_' || {pad.format(i='i / 2')},"
        " 's' || (i % 2), 'agent', 'succeeded', '[]'" + json_cast + ", 0, i % 2,"
        f" '{SPEC}'{json_cast}, 1, 3, 0, {T0}, {T0} + 2, 'Seeded output of a step.', 'offline' "
        f"FROM {source.format(last=2 * runs - 1)}"
    )
    # Events: run r's seq s for every (r, s); i enumerates them, run-major.
    seq_of = f"(CASE WHEN i < {BIG_EVENTS} THEN i + 1 ELSE (i - {BIG_EVENTS}) % {EVENTS_PER_RUN} + 1 END)"
    run_of = f"(CASE WHEN i < {BIG_EVENTS} THEN 0 ELSE (i - {BIG_EVENTS}) / {EVENTS_PER_RUN} + 1 END)"
    count_of = f"(CASE WHEN i < {BIG_EVENTS} THEN {BIG_EVENTS} ELSE {EVENTS_PER_RUN} END)"
    run_status = _status(run_of)
    event_terminal = terminal.replace(status, run_status)
    total_events = BIG_EVENTS + (runs - 1) * EVENTS_PER_RUN
    event_time = f"({T0} + ({runs} - {run_of}) * 10.0 + {seq_of} * 0.001)"
    insert_events = (
        series.format(last=total_events - 1)
        + "INSERT INTO events (run_id, seq, tx, type, step_key, attempt, payload, created_at) "
        f"SELECT 'run_seed_' || {pad.format(i=run_of)}, {seq_of}, 0,"
        f" CASE WHEN {seq_of} = 1 THEN 'run.created' WHEN {seq_of} = {count_of} THEN {event_terminal}"
        " ELSE 'log' END,"
        f" CASE WHEN {seq_of} = 1 OR {seq_of} = {count_of} THEN NULL ELSE 's' || ({seq_of} % 2) END, 1,"
        f" ('{{\"message\": \"seeded line ' || {seq_of} || ' of the run\"}}'){json_cast}, {event_time} "
        f"FROM {source.format(last=total_events - 1)}"
    )
    return [insert_runs, insert_steps, insert_events]


def seed_sqlite(path: Path, runs: int) -> None:
    upgrade(f"sqlite:///{path}")
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # a seed that dies half way is thrown away
        conn.execute("PRAGMA cache_size=-400000")
        for statement in seed_statements(runs, "sqlite"):
            conn.execute(statement)
        conn.commit()
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def seed_postgres(database: str, runs: int) -> None:
    with psycopg.connect(admin_dsn(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {database}")
    upgrade(pg_url_of(database))
    with psycopg.connect(pg_url_of(database)) as conn:
        conn.execute("SET synchronous_commit = off")
        for statement in seed_statements(runs, "postgresql"):
            conn.execute(statement)  # type: ignore[arg-type]
        conn.commit()
    with psycopg.connect(pg_url_of(database), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def seeded_url(dialect: str, runs: int, reseed: bool) -> str:
    """The URL of the seeded database for this scale and schema, building it when needed."""
    key = f"{schema_key()}_{runs}"
    started = time.perf_counter()
    if dialect == "sqlite":
        CACHE.mkdir(parents=True, exist_ok=True)
        path = CACHE / f"history-{key}.db"
        if reseed or not path.exists():
            building = path.with_suffix(".building")
            # Seeds of other schemas, and a half-built one, go; other scales of this schema stay.
            for stale in CACHE.glob("history-*"):
                if not stale.name.startswith(f"history-{schema_key()}_") or stale.name.startswith(
                    building.name
                ):
                    stale.unlink()
            seed_sqlite(building, runs)
            building.rename(path)
            print(f"sqlite: seeded {path} in {time.perf_counter() - started:.0f} s", flush=True)
        return f"sqlite:///{path}"
    database = f"baton_hist_{key}".lower()
    with psycopg.connect(admin_dsn(), autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if reseed or exists is None:
            # Seeds of other schemas, and a half-built one, are dropped; other scales stay.
            for (old,) in admin.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'baton_hist_%'"
            ).fetchall():
                if not old.startswith(f"baton_hist_{schema_key()}_".lower()) or old.endswith("_building"):
                    admin.execute(f"DROP DATABASE IF EXISTS {old} WITH (FORCE)")
            seed_postgres(database + "_building", runs)
            admin.execute(f"ALTER DATABASE {database}_building RENAME TO {database}")
            print(f"postgresql: seeded {database} in {time.perf_counter() - started:.0f} s", flush=True)
    return pg_url_of(database)


def cursor_for(runs: int, position: int) -> str:
    """The next_cursor that ends a page at the caller's run at `position` (0 = newest it sees)."""
    # The caller sees projects 0..MEMBER_OF-1, that is runs i with i % PROJECTS < MEMBER_OF.
    visible = [i for i in range(runs) if i % PROJECTS < MEMBER_OF]
    i = visible[min(position, len(visible) - 1)]
    created = T0 + (runs - i) * 10.0
    return base64.urlsafe_b64encode(f"{created!r}|run_seed_{i:07d}".encode()).decode()


def timed(client: httpx.Client, path: str, n: int) -> list[float]:
    """n GETs of path (a format string with {r} for a random number), each checked: milliseconds."""
    samples = []
    for _ in range(n):
        url = path.format(r=random.randrange(1_000_000))
        started = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"GET {url}: {response.status_code} {response.text[:300]}")
    return samples


def replay_seconds(client: httpx.Client, run_id: str) -> float:
    started = time.perf_counter()
    seen = 0
    with client.stream("GET", f"/v1/runs/{run_id}/stream") as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data:"):
                seen += 1
                if seen >= BIG_EVENTS:
                    break
    took = time.perf_counter() - started
    if seen < BIG_EVENTS:
        raise SystemExit(f"the stream of {run_id} ended after {seen} of {BIG_EVENTS} events")
    return took


def bench_database(dialect: str, runs: int, n: int, results: Results, reseed: bool) -> None:
    url = seeded_url(dialect, runs, reseed)
    token = asyncio.run(make_tokens(url, "bench", [f"proj-{p:03d}" for p in range(MEMBER_OF)]))[0]
    visible = runs // PROJECTS * MEMBER_OF
    deep = cursor_for(runs, int(visible * 0.9))
    # Random runs the caller can see: project number (i % 100) below MEMBER_OF.
    run_ids = [
        f"run_seed_{i:07d}" for i in range(0, runs, PROJECTS // MEMBER_OF * 3) if i % PROJECTS < MEMBER_OF
    ]
    label = f"{dialect}, {runs:,} runs"
    with (
        tempfile.TemporaryDirectory(prefix="baton-bench-history-") as tmp,
        server(url, Path(tmp), workers=0) as (proc, base),
    ):
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30.0) as client:
            timed(client, "/v1/runs", 5)  # warm-up: connection, caches
            cases = {
                "GET /v1/runs first page": "/v1/runs",
                "GET /v1/runs filtered (status=failed, flow)": "/v1/runs?status=failed&flow=post-variants",
                "GET /v1/runs deep cursor (90 %)": f"/v1/runs?cursor={deep}",
            }
            for name, path in cases.items():
                samples = timed(client, path, n)
                results.add(f"{label}: {name} p99", percentile(samples, 0.99), "ms", TARGET_P99_MS,
                            note=f"p50 {percentile(samples, 0.5):.1f}")  # fmt: skip
            samples = []
            for _ in range(n):
                run_id = random.choice(run_ids)
                started = time.perf_counter()
                response = client.get(f"/v1/runs/{run_id}")
                samples.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
            results.add(f"{label}: GET /v1/runs/{{id}} p99", percentile(samples, 0.99), "ms", TARGET_P99_MS,
                        note=f"p50 {percentile(samples, 0.5):.1f}")  # fmt: skip
            replays = [replay_seconds(client, "run_seed_0000000") for _ in range(5)]
            results.add(f"{label}: stream replay of {BIG_EVENTS:,} events", statistics.median(replays), "s",
                        TARGET_REPLAY_S)  # fmt: skip
        memory = rss_mib(proc.pid)
        results.add(f"{label}: server RSS after the requests", memory, "MiB", TARGET_RSS_MIB)


def main(args: argparse.Namespace) -> int:
    scale = args.scale or (0.1 if args.quick else 1.0)
    runs = max(PROJECTS, int(100_000 * scale))
    n = 50 if args.quick else 200
    results = Results("history", args.quick)
    results.note(
        f"{runs:,} runs, {BIG_EVENTS + (runs - 1) * EVENTS_PER_RUN:,} events; user bench sees "
        f"{runs // PROJECTS * MEMBER_OF:,} runs"
    )
    if args.database in ("sqlite", "both"):
        bench_database("sqlite", runs, n, results, args.reseed)
    if args.database in ("postgres", "both"):
        problem = pg_problem()
        if problem is None:
            bench_database("postgresql", runs, n, results, args.reseed)
        else:
            results.note(f"postgresql: skipped, the server is not reachable ({problem})")
    print_load(results)
    results.save()
    return 0 if results.all_pass else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="--scale 0.1 and fewer requests")
    parser.add_argument("--scale", type=float, default=0.0, help="fraction of 100,000 runs to seed")
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--reseed", action="store_true", help="build the seeded database again")
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(parser.parse_args()))
