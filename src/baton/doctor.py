"""Audit a Baton database for broken invariants: stranded runs, zombie leases, event gaps.

Every check is one read-only query judged by the database clock. `audit(url)` opens its own
read-only connection (SQLite: `mode=ro`; PostgreSQL: a READ ONLY transaction), so it is safe to
run against a live database while workers and API servers use it. The reliability suite runs the
same checks after every scenario; `baton doctor` runs them for an operator.

`grace_s` is how long something may legitimately look stuck: a lease that expired a moment ago
waits for the next reaper pass, a cancel request waits for the next heartbeat. Findings are only
reported once they are older than that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, create_engine, text

from baton.store.clock import db_now
from baton.store.database import redact, sqlite_path, sync_url

#: Long enough for a production reaper (5 s) and lease (30 s) to repair what they own.
DEFAULT_GRACE_S = 60.0

_TERMINAL = "('succeeded', 'failed', 'cancelled')"


@dataclass(frozen=True, slots=True)
class Finding:
    """One broken invariant: which check, on what run (and step), and what is wrong in words."""

    check: str
    run_id: str | None
    step_key: str | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Check:
    """A named audit query. `sql` returns rows of (run_id, step_key, detail) given :now and :grace."""

    name: str
    summary: str
    sql: str


CHECKS: tuple[Check, ...] = (
    Check(
        "expired_lease",
        "a running step whose lease expired longer ago than the grace: no live owner, and no reaper "
        "has reclaimed it",
        """SELECT run_id, key, 'lease of ' || COALESCE(claimed_by, '?') || ' expired, attempt '
                  || CAST(attempt AS TEXT)
           FROM steps WHERE status = 'running' AND lease_expires_at < :now - :grace""",
    ),
    Check(
        "running_without_lease",
        "a running step with no lease token or expiry: nobody can renew it and nobody fences writes",
        """SELECT run_id, key, 'running with lease_token=' || COALESCE(lease_token, 'NULL')
           FROM steps WHERE status = 'running' AND (lease_token IS NULL OR lease_expires_at IS NULL)""",
    ),
    Check(
        "overdue_step",
        "a running step past its own deadline (timeout + lease) that nobody timed out",
        """SELECT run_id, key, 'deadline passed, attempt ' || CAST(attempt AS TEXT)
           FROM steps WHERE status = 'running' AND deadline_at < :now - :grace""",
    ),
    Check(
        "attempts_exceeded",
        "a step that ran more attempts than it allows: redelivery did not stop",
        """SELECT run_id, key, CAST(attempt AS TEXT) || ' attempts of at most ' || CAST(max_attempts AS TEXT)
           FROM steps WHERE attempt > max_attempts""",
    ),
    Check(
        "live_step_in_finished_run",
        "a queued or running step of a run that already finished",
        f"""SELECT steps.run_id, steps.key, 'step ' || steps.status || ' in a ' || runs.status || ' run'
           FROM steps JOIN runs ON runs.id = steps.run_id
           WHERE steps.status IN ('queued', 'running') AND runs.status IN {_TERMINAL}""",
    ),
    Check(
        "stranded_run",
        "a running run with no step queued, running or waiting: nothing will ever move it on",
        """SELECT runs.id, NULL, 'running since ' || CAST(runs.updated_at AS TEXT) || ' with nothing to do'
           FROM runs WHERE runs.status = 'running' AND runs.updated_at < :now - :grace
             AND NOT EXISTS (SELECT 1 FROM steps WHERE steps.run_id = runs.id
                             AND steps.status IN ('queued', 'running', 'waiting'))""",
    ),
    Check(
        "waiting_without_request",
        "a run waiting for input with no pending input request: nobody can answer it",
        """SELECT runs.id, NULL, 'waiting_for_input with no pending request'
           FROM runs WHERE runs.status = 'waiting_for_input' AND runs.updated_at < :now - :grace
             AND NOT EXISTS (SELECT 1 FROM input_requests r WHERE r.run_id = runs.id
                             AND r.status = 'pending')""",
    ),
    Check(
        "overdue_cancel",
        "a cancel request older than the grace on a run that is still not finished",
        f"""SELECT id, NULL, 'cancel requested, still ' || status
           FROM runs WHERE cancel_requested_at < :now - :grace AND status NOT IN {_TERMINAL}""",
    ),
    Check(
        "overdue_input",
        "a pending input request past its expiry that nobody expired",
        """SELECT run_id, step_key, 'input request ' || id || ' expired but still pending'
           FROM input_requests WHERE status = 'pending' AND expires_at < :now - :grace""",
    ),
    Check(
        "overdue_run",
        "an unfinished run past its deadline (the run's timeout) that nobody failed",
        f"""SELECT id, NULL, 'deadline passed, still ' || status
           FROM runs WHERE deadline_at < :now - :grace AND status NOT IN {_TERMINAL}""",
    ),
    Check(
        "event_sequence_gap",
        "a run whose events are not numbered 1..last_seq exactly once each (missing or extra events)",
        """SELECT runs.id, NULL, 'last_seq ' || CAST(runs.last_seq AS TEXT) || ', '
                  || CAST(COALESCE(e.n, 0) AS TEXT) || ' events, seq '
                  || CAST(COALESCE(e.lo, 0) AS TEXT) || '..' || CAST(COALESCE(e.hi, 0) AS TEXT)
           FROM runs LEFT JOIN (SELECT run_id, COUNT(*) AS n, MIN(seq) AS lo, MAX(seq) AS hi
                                FROM events GROUP BY run_id) e ON e.run_id = runs.id
           WHERE COALESCE(e.n, 0) <> runs.last_seq OR COALESCE(e.hi, 0) <> runs.last_seq
              OR (runs.last_seq > 0 AND e.lo <> 1)""",
    ),
)

CHECK_NAMES = tuple(check.name for check in CHECKS)


def audit_connection(
    conn: Connection, *, grace_s: float = DEFAULT_GRACE_S, checks: tuple[Check, ...] = CHECKS
) -> list[Finding]:
    """Run every check in `conn`'s current transaction; the findings in check order."""
    params = {"now": db_now(conn), "grace": float(grace_s)}
    findings: list[Finding] = []
    for check in checks:
        for run_id, step_key, detail in conn.execute(text(check.sql), params):
            findings.append(Finding(check.name, run_id, step_key, str(detail)))
    return findings


def audit(url: str, *, grace_s: float = DEFAULT_GRACE_S) -> list[Finding]:
    """Open `url` read-only, run every check, close. Raises FileNotFoundError for a missing SQLite file."""
    with read_only_connection(url) as conn:
        return audit_connection(conn, grace_s=grace_s)


@contextmanager
def read_only_connection(url: str) -> Iterator[Connection]:
    """A connection that cannot write: SQLite opened `mode=ro`, PostgreSQL in a READ ONLY transaction."""
    path = sqlite_path(url)
    if path is not None:
        if not path.exists():
            raise FileNotFoundError(f"no SQLite database at {path}: check --database / BATON_DATABASE_URL")
        engine = create_engine(
            "sqlite://",
            creator=_sqlite_read_only(str(path.resolve())),
        )
    else:
        engine = create_engine(sync_url(url), connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            try:
                yield conn
            finally:
                conn.rollback()
    finally:
        engine.dispose()


def _sqlite_read_only(path: str) -> Callable[[], Any]:
    import sqlite3
    from urllib.parse import quote

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=5.0)
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    return connect


def summarize(findings: list[Finding]) -> Mapping[str, int]:
    """How many findings each check has (every check listed, zero included)."""
    counts = dict.fromkeys(CHECK_NAMES, 0)
    for finding in findings:
        counts[finding.check] = counts.get(finding.check, 0) + 1
    return counts


__all__ = [
    "CHECKS",
    "DEFAULT_GRACE_S",
    "Finding",
    "audit",
    "audit_connection",
    "read_only_connection",
    "redact",
    "summarize",
]
