"""The oracles: an `effects` table committed with each step, and an `executions` log written aside.

effects
    `effects(run_id, step_key, kind, attempts, n)` with UNIQUE(run_id, step_key, kind), filled by a
    trigger on `artifacts`. A step records an effect with `record_effect(ctx, kind)`, which adds
    the artifact `effect:KIND` to the step's result; Baton inserts a step's artifacts in the very
    transaction that records its success (step_results.record_success), so the effect row commits
    if and only if the step's result does. A second commit of the same effect does not fail (that
    would hide it): it counts, `n > 1`, and `attempts` lists every attempt that committed it.

executions
    `DIR/executions.jsonl`, one JSON line per attempt start and end:
    {"phase", "run", "step", "attempt", "token", "pid", "t"}. Written by the step's code in the
    worker, with O_APPEND in a single write(2) (lines of concurrent processes never interleave, and
    a line survives the process's SIGKILL), outside any database transaction: it shows what ran,
    even what the database then refused. DIR is BATON_RELIABILITY_DIR in the worker's environment.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from baton.store.database import sqlite_path, sync_url

DIR_ENV = "BATON_RELIABILITY_DIR"
EXECUTIONS = "executions.jsonl"

_SQLITE_DDL = [
    """CREATE TABLE IF NOT EXISTS effects (
         run_id TEXT NOT NULL, step_key TEXT NOT NULL, kind TEXT NOT NULL,
         attempts TEXT NOT NULL, n INTEGER NOT NULL DEFAULT 1, UNIQUE (run_id, step_key, kind))""",
    """CREATE TRIGGER IF NOT EXISTS effects_from_artifacts AFTER INSERT ON artifacts
       WHEN substr(NEW.name, 1, 7) = 'effect:'
       BEGIN
         INSERT INTO effects (run_id, step_key, kind, attempts, n)
         VALUES (NEW.run_id, NEW.step_key, substr(NEW.name, 8), CAST(NEW.attempt AS TEXT), 1)
         ON CONFLICT (run_id, step_key, kind)
         DO UPDATE SET n = n + 1, attempts = attempts || ',' || excluded.attempts;
       END""",
]
_POSTGRES_DDL = [
    """CREATE TABLE IF NOT EXISTS effects (
         run_id TEXT NOT NULL, step_key TEXT NOT NULL, kind TEXT NOT NULL,
         attempts TEXT NOT NULL, n INTEGER NOT NULL DEFAULT 1, UNIQUE (run_id, step_key, kind))""",
    """CREATE OR REPLACE FUNCTION effects_from_artifacts() RETURNS trigger AS $$
       BEGIN
         IF substr(NEW.name, 1, 7) = 'effect:' THEN
           INSERT INTO effects (run_id, step_key, kind, attempts, n)
           VALUES (NEW.run_id, NEW.step_key, substr(NEW.name, 8), CAST(NEW.attempt AS TEXT), 1)
           ON CONFLICT (run_id, step_key, kind)
           DO UPDATE SET n = effects.n + 1, attempts = effects.attempts || ',' || EXCLUDED.attempts;
         END IF;
         RETURN NEW;
       END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS effects_from_artifacts ON artifacts",
    """CREATE TRIGGER effects_from_artifacts AFTER INSERT ON artifacts
       FOR EACH ROW EXECUTE FUNCTION effects_from_artifacts()""",
]


def install_effects(url: str) -> None:
    """Create the `effects` table and its trigger in a migrated test database (idempotent)."""
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            for statement in _SQLITE_DDL if sqlite_path(url) is not None else _POSTGRES_DDL:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def record_effect(ctx: Any, kind: str) -> None:
    """Called by a step: commit the effect `kind` together with this attempt's result."""
    ctx.artifact(f"effect:{kind}", json.dumps({"attempt": ctx.attempt}), "application/json")


@dataclass(frozen=True, slots=True)
class Effect:
    run_id: str
    step_key: str
    kind: str
    attempts: str
    n: int


def read_effects(url: str) -> list[Effect]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT run_id, step_key, kind, attempts, n FROM effects"))
            return [Effect(*row) for row in rows]
    finally:
        engine.dispose()


# --- executions ------------------------------------------------------------------------------------


def ledger_dir() -> Path | None:
    value = os.environ.get(DIR_ENV)
    return Path(value) if value else None


def record_execution(ctx: Any, phase: str, **extra: Any) -> None:
    """Called by a step at its start and end: append one line to the executions log (if configured)."""
    directory = ledger_dir()
    if directory is None:
        return
    line = {
        "phase": phase,
        "run": ctx.run_id,
        "step": ctx.step_key,
        "attempt": ctx.attempt,
        "token": ctx.claim.token,
        "pid": os.getpid(),
        "t": time.time(),
        **extra,
    }
    append_line(directory / EXECUTIONS, line)


def append_line(path: Path, record: Mapping[str, Any]) -> None:
    """One JSON line, appended in a single write(2): atomic with respect to other appenders."""
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Execution:
    phase: str
    run: str
    step: str
    attempt: int
    token: str
    pid: int
    t: float


def read_executions(directory: Path) -> list[Execution]:
    path = Path(directory) / EXECUTIONS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            data = json.loads(line)
            rows.append(
                Execution(
                    data["phase"],
                    data["run"],
                    data["step"],
                    data["attempt"],
                    data["token"],
                    data["pid"],
                    data["t"],
                )
            )
    return rows


StepId = tuple[str, str]  # (run_id, step_key)


def execution_violations(
    executions: Iterable[Execution],
    final: Mapping[StepId, tuple[str, int]],
    released: set[tuple[str, str, int]],
) -> dict[str, list[str]]:
    """The ledger rules, as a pure function; every list must be empty.

    final: (run, step) → (status, attempt) of the step row now.
    released: (run, step, attempt) of every attempt the database ended other than by success
              (`step.lease_expired`, `step.retrying`, `step.failed`, `step.cancelled` events).

    double_claim        one attempt (one lease) started more than once
    completed_rerun     an attempt newer than the one whose success is recorded started: the
                        step ran again after it had completed
    overlapping_live    an attempt superseded by a newer one without the database ever ending it:
                        two leases were live at once
    """
    starts: dict[tuple[str, str, int], list[Execution]] = defaultdict(list)
    for record in executions:
        if record.phase == "start":
            starts[(record.run, record.step, record.attempt)].append(record)
    problems: dict[str, list[str]] = {"double_claim": [], "completed_rerun": [], "overlapping_live": []}
    newest: dict[StepId, int] = defaultdict(int)
    for run, step, attempt in starts:
        newest[(run, step)] = max(newest[(run, step)], attempt)
    for (run, step, attempt), records in sorted(starts.items()):
        if len(records) > 1 or len({r.token for r in records}) > 1:
            pids = ", ".join(str(r.pid) for r in records)
            problems["double_claim"].append(
                f"{run}/{step} attempt {attempt} started {len(records)}x (pids {pids})"
            )
        status, last = final.get((run, step), ("?", 0))
        if status == "succeeded" and attempt > last:
            problems["completed_rerun"].append(
                f"{run}/{step} attempt {attempt} started after attempt {last} succeeded"
            )
        newer = attempt < max(last, newest[(run, step)])
        if newer and (run, step, attempt) not in released:
            problems["overlapping_live"].append(
                f"{run}/{step} attempt {attempt} was superseded without being released (two live leases)"
            )
    return problems


def dump(directory: Path, limit: int = 200) -> str:
    """The tail of the executions log, for a failure message."""
    path = Path(directory) / EXECUTIONS
    if not path.exists():
        return "(no executions log)"
    lines = path.read_text().splitlines()
    return "\n".join(lines[-limit:])
