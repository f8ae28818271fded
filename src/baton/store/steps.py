"""Step rows by intent: insert, claim under a lease, fenced writes, lease upkeep and expiry."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Row,
    String,
    bindparam,
    case,
    column,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)

from baton.domain.ids import new_id, new_lease_token
from baton.domain.status import StepStatus
from baton.store import direct
from baton.store.clock import db_now, dialect_of
from baton.store.database import touch
from baton.store.schema import runs, step_needs, steps

S = StepStatus


def insert_steps(conn: Connection, run_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """Insert step rows (each with key, kind, needs, position, spec, max_attempts, status…).

    Each row gets `unmet`: how many of its needs have not succeeded, counting steps already in
    the run (for steps a flow adds later) and succeeded rows of this batch (for forks). Each
    need is also a `step_needs` row, by which the step is found when that need succeeds.
    """
    if not rows:
        return
    done = {r["key"] for r in rows if r.get("status") == S.SUCCEEDED.value}
    if any(r.get("needs") for r in rows):
        done |= set(
            conn.execute(
                select(steps.c.key).where(steps.c.run_id == run_id, steps.c.status == S.SUCCEEDED.value)
            ).scalars()
        )
    values = []
    edges = []
    for row in rows:
        needs = list(dict.fromkeys(row.get("needs") or ()))
        values.append(
            {
                "id": new_id("stp"),
                "run_id": run_id,
                "unmet": sum(1 for need in needs if need not in done),
                **row,
                "needs": needs,
            }
        )
        edges += [{"run_id": run_id, "need": need, "step_key": row["key"]} for need in needs]
    if conn.dialect.name == "postgresql" and _insertable_from_json(values):
        _insert_from_json(conn, steps.name, values)
        if edges:
            _insert_from_json(conn, step_needs.name, edges)
        return
    conn.execute(insert(steps), values)
    if edges:
        conn.execute(insert(step_needs), edges)


def _insertable_from_json(rows: Sequence[dict[str, Any]]) -> bool:
    """Rows that one JSON array carries unchanged: all with the same keys, and no JSON column left
    None (stored as JSON `null` by a plain insert, but as SQL NULL by `json_populate_recordset`)."""
    keys = rows[0].keys()
    if any(row.keys() != keys for row in rows):
        return False
    return all(row[name] is not None for row in rows for name in _JSON_COLUMNS if name in keys)


_JSON_COLUMNS = tuple(column.name for column in steps.c if isinstance(column.type, JSON))


def _insert_from_json(conn: Connection, table: str, rows: Sequence[dict[str, Any]]) -> None:
    """PostgreSQL: insert rows (all with the same keys) from one JSON array, in one statement.

    psycopg's executemany sends one insert per row: a new run's hundred steps and their needs
    took 3.9 and 1.8 ms that way.
    """
    direct.execute(conn, _insert_from_json_statement(table, tuple(rows[0])), {"rows": json.dumps(rows)})


@lru_cache(maxsize=32)
def _insert_from_json_statement(table: str, columns: tuple[str, ...]) -> Any:
    names = ", ".join(f'"{name}"' for name in columns)
    return text(
        f"INSERT INTO {table} ({names}) SELECT {names}"
        f" FROM json_populate_recordset(NULL::{table}, CAST(:rows AS json))"
    )


def satisfy_and_release(
    conn: Connection, run_id: str, keys: Sequence[str], now: float
) -> tuple[list[str], list[Row[Any]]]:
    """`keys` succeeded: their pending dependents lose as many unmet needs, and those left with
    none are released as `release_ready` would release them, in one statement.

    Only for a transaction in which nothing else made a pending step ready (no expansion, no
    recount): then the dependents of `keys` are the only steps `release_ready` could find, and
    one statement both counts their needs down and releases those left with none.
    """
    if not keys:
        return [], []
    sqlite = conn.dialect.name == "sqlite"
    params: dict[str, Any] = {"rid": run_id, "now": now}
    if len(keys) == 1:
        statement = _SATISFY_RELEASE_SQLITE if sqlite else _SATISFY_RELEASE
        params["need"] = keys[0]
    else:
        statement = _SATISFY_RELEASE_MANY_SQLITE if sqlite else _SATISFY_RELEASE_MANY
        params["needs"] = json.dumps(list(keys))
    changed = direct.rows(conn, statement, params)
    rows = sorted((row for row in changed if row.status != S.PENDING.value), key=lambda r: r.position)
    queued = [row.key for row in rows if row.kind != "input"]
    _announce_queued(conn, run_id, queued)
    return queued, [row for row in rows if row.kind == "input"]


def _satisfy_release(decrement: str, source: str, dependents: str) -> Any:
    """The statement of `satisfy_and_release`: SET expressions read the row as it was.

    The dependents are the pending steps the condition `dependents` finds (with `source` in
    FROM); each loses `decrement` unmet needs.
    """
    left = f"steps.unmet - {decrement}"
    return text(
        f"UPDATE steps SET unmet = {left},"
        f" status = CASE WHEN {left} > 0 THEN steps.status"
        f" WHEN steps.kind = 'input' THEN '{S.WAITING.value}' ELSE '{S.QUEUED.value}' END,"
        f" available_at = CASE WHEN {left} > 0 OR steps.kind = 'input' THEN steps.available_at ELSE :now END,"
        f" started_at = CASE WHEN {left} <= 0 AND steps.kind = 'input' THEN :now ELSE steps.started_at END"
        f"{source} WHERE {dependents}"
        " RETURNING steps.key, steps.position, steps.kind,"
        " CASE WHEN steps.kind = 'input' THEN steps.spec END AS spec, steps.status"
    ).columns(steps.c.key, steps.c.position, steps.c.kind, steps.c.spec, steps.c.status)


_PENDING = f"'{S.PENDING.value}'"
#: the needs met, as a JSON array bound to :needs
_MET_SQLITE = "SELECT value FROM json_each(:needs)"
_MET_PG = "SELECT jsonb_array_elements_text(CAST(:needs AS jsonb))"

# SQLite's planner, without statistics, walks every pending step of the run by (run_id, status)
# rather than the few dependents by (run_id, key): 40 us against 5 us at 200 pending steps, and
# growing with the run. The unary `+` keeps it off that index.
_SATISFY_RELEASE_SQLITE = _satisfy_release(
    "1",
    "",
    f"steps.run_id = :rid AND +steps.status = {_PENDING} AND steps.key IN (SELECT step_needs.step_key"
    " FROM step_needs WHERE step_needs.run_id = :rid AND step_needs.need = :need)",
)
# Counted once in FROM: a count in each SET expression ran four times per dependent (1.3 ms for
# a join of 100 on PostgreSQL).
_SATISFY_RELEASE_MANY_SQLITE = _satisfy_release(
    "met.n",
    " FROM (SELECT step_needs.step_key, count(*) AS n FROM step_needs"
    f" WHERE step_needs.run_id = :rid AND step_needs.need IN ({_MET_SQLITE})"
    " GROUP BY step_needs.step_key) AS met",
    f"steps.run_id = :rid AND +steps.status = {_PENDING} AND steps.key = met.step_key",
)
# PostgreSQL's planner, with the run's id given for `steps` (or derived for it from the join),
# read every step of the run by (run_id, ...) and matched the dependents against them: 0.35 ms
# of the server's time per step of a 200-step chain, by its log, and 0.45-1.2 ms by EXPLAIN
# ANALYZE on a fresh database, against 0.07 ms when it goes from the needs to each dependent by
# (run_id, key). The run is matched to the needs' only through an expression (`|| ''`), and the
# status likewise, so that the unique (run_id, key) index is the only way in.
_SATISFY_RELEASE = _satisfy_release(
    "1",
    " FROM step_needs AS met",
    "met.run_id = :rid AND met.need = :need AND steps.run_id = (met.run_id || '')"
    f" AND steps.key = met.step_key AND (steps.status || '') = {_PENDING}",
)
_SATISFY_RELEASE_MANY = _satisfy_release(
    "met.n",
    " FROM (SELECT step_needs.run_id, step_needs.step_key, count(*) AS n FROM step_needs"
    f" WHERE step_needs.run_id = :rid AND step_needs.need IN ({_MET_PG})"
    " GROUP BY step_needs.run_id, step_needs.step_key) AS met",
    f"steps.run_id = (met.run_id || '') AND steps.key = met.step_key AND (steps.status || '') = {_PENDING}",
)


def recount_unmet(conn: Connection, run_id: str) -> None:
    """Recompute every pending step's `unmet` from scratch (after resume, fork or a repair)."""
    rows = list(
        conn.execute(select(steps.c.key, steps.c.status, steps.c.needs).where(steps.c.run_id == run_id))
    )
    done = {r.key for r in rows if r.status == S.SUCCEEDED.value}
    for row in rows:
        if row.status == S.PENDING.value:
            unmet = sum(1 for need in row.needs or () if need not in done)
            conn.execute(
                update(steps).where(steps.c.run_id == run_id, steps.c.key == row.key).values(unmet=unmet)
            )


def release_ready(conn: Connection, run_id: str, now: float) -> tuple[list[str], list[Row[Any]]]:
    """Pending steps with every need met move on, in one statement: work steps become queued,
    input steps waiting. Returns the queued keys and the input steps (key, spec), in flow order."""
    rows = sorted(direct.rows(conn, _RELEASE_READY, {"rid": run_id, "now": now}), key=lambda r: r.position)
    keys = [row.key for row in rows if row.kind != "input"]
    _announce_queued(conn, run_id, keys)
    return keys, [row for row in rows if row.kind == "input"]


def _announce_queued(conn: Connection, run_id: str, keys: Sequence[str]) -> None:
    """Wake claimers once this transaction commits; remember what it queued (`forget_claimed_wakeup`)."""
    if keys:
        touch(conn, "steps")
        conn.info.setdefault("baton_queued", set()).update((run_id, key) for key in keys)


def forget_claimed_wakeup(conn: Connection, claimed: Iterable[Any]) -> None:
    """Steps this transaction queued and then claimed itself wake no other claimer.

    A chain's worker queues and claims the next step in one transaction; waking every claim loop
    (and, on PostgreSQL, NOTIFYing every worker) for it would cost each of them an empty claim.
    """
    queued: set[tuple[str, str]] = conn.info.get("baton_queued", set())
    queued.difference_update((row.run_id, row.key) for row in claimed)
    if not queued:
        conn.info.get("baton_topics", set()).discard("steps")


_IS_INPUT = steps.c.kind == "input"
_RELEASE_READY = (
    update(steps)
    .where(steps.c.run_id == bindparam("rid"), steps.c.status == S.PENDING.value, steps.c.unmet <= 0)
    .values(
        status=case((_IS_INPUT, S.WAITING.value), else_=S.QUEUED.value),
        available_at=case((_IS_INPUT, steps.c.available_at), else_=bindparam("now")),
        started_at=case((_IS_INPUT, bindparam("now")), else_=steps.c.started_at),
    )
    # The spec only of input steps (their prompt): a run's start released a hundred work steps
    # and decoded each one's spec for nothing.
    .returning(steps.c.key, steps.c.position, steps.c.kind, case((_IS_INPUT, steps.c.spec)).label("spec"))
)


def unfinished_states(conn: Connection, run_id: str) -> tuple[list[Row[Any]], list[str]]:
    """What judging a run needs: the steps that are not done and not blocked, and the blocked keys.

    Blocked = pending with an unmet need; only their keys matter (for the reason a stuck run gives).
    """
    rows = list(conn.execute(_UNFINISHED, {"run_id": run_id}))
    blocked: list[str] = []
    if not any(r.status in (S.QUEUED.value, S.RUNNING.value, S.WAITING.value, S.FAILED.value) for r in rows):
        blocked = list(conn.execute(_BLOCKED, {"run_id": run_id}).scalars())
    return rows, blocked


def lock_step(conn: Connection, step_id: str) -> Row[Any] | None:
    """The step, its row locked until the transaction ends (PostgreSQL; SQLite's writer is alone)."""
    return conn.execute(select(steps).where(steps.c.id == step_id).with_for_update()).first()


def get_step(conn: Connection, step_id: str) -> Row[Any] | None:
    return conn.execute(select(steps).where(steps.c.id == step_id)).first()


def load_steps(conn: Connection, run_id: str) -> list[Row[Any]]:
    """Every step of the run in order (a run's start and end, snapshots: hundreds of rows at a time)."""
    return direct.rows(conn, _LOAD_STEPS, {"run_id": run_id})


_LOAD_STEPS = select(steps).where(steps.c.run_id == bindparam("run_id")).order_by(steps.c.position)


def load_results(conn: Connection, run_id: str) -> list[Row[Any]]:
    """What a run's report and result need of its steps, in order: no spec, no usage.

    A run's end read every column of every step, and decoding each step's spec was most of it.
    """
    return direct.rows(conn, _LOAD_RESULTS, {"run_id": run_id})


_RESULT_COLUMNS = "key kind status needs attempt output output_ref output_text error".split()
_LOAD_RESULTS = (
    select(*(steps.c[name] for name in _RESULT_COLUMNS))
    .where(steps.c.run_id == bindparam("run_id"))
    .order_by(steps.c.position)
)


def load_outputs(conn: Connection, run_id: str, keys: Sequence[str]) -> list[Row[Any]]:
    """`key`, `output` and `output_ref` of the named steps of a run (what a downstream step reads)."""
    if not keys:
        return []
    return list(conn.execute(_LOAD_OUTPUTS, {"run_id": run_id, "keys": list(keys)}))


_LOAD_OUTPUTS = (
    select(steps.c.key, steps.c.output, steps.c.output_ref)
    .where(steps.c.run_id == bindparam("run_id"), steps.c.key.in_(bindparam("keys", expanding=True)))
    .order_by(steps.c.position)
)


#: what scheduling needs of every step of a run; outputs and specs stay in the database
_STATE_COLUMNS = [
    steps.c.key,
    steps.c.kind,
    steps.c.status,
    steps.c.needs,
    steps.c.attempt,
    steps.c.max_attempts,
    steps.c.position,
    steps.c.error,
    # Input steps keep their spec: its prompt is the reason a waiting run gives.
    case((steps.c.kind == "input", steps.c.spec), else_=None).label("spec"),
]


def failed_or_active(conn: Connection, run_id: str) -> tuple[bool, bool]:
    """Whether some step of the run failed, and whether some is queued or running.

    Two index probes that stop at the first match: most completions of a wide run only need to
    learn that the run goes on, without reading every unfinished step.
    """
    failed, active = direct.first(conn, _FAILED_OR_ACTIVE, {"run_id": run_id})
    return bool(failed), bool(active)


def _exists_in(*statuses: StepStatus) -> Any:
    return (
        select(steps.c.id)
        # OR of equalities rather than IN: store/direct runs it without expanding an IN list.
        .where(steps.c.run_id == bindparam("run_id"), or_(*(steps.c.status == s.value for s in statuses)))
        .limit(1)
        .exists()
    )


_FAILED_OR_ACTIVE = select(_exists_in(S.FAILED), _exists_in(S.QUEUED, S.RUNNING))
_UNFINISHED = (
    select(*_STATE_COLUMNS)
    .where(
        steps.c.run_id == bindparam("run_id"),
        steps.c.status.not_in([S.SUCCEEDED.value, S.SKIPPED.value]),
        (steps.c.status != S.PENDING.value) | (steps.c.unmet <= 0),
    )
    .order_by(steps.c.position)
)
_BLOCKED = (
    select(steps.c.key)
    .where(steps.c.run_id == bindparam("run_id"), steps.c.status == S.PENDING.value, steps.c.unmet > 0)
    .order_by(steps.c.position)
)


def set_steps_status(
    conn: Connection,
    run_id: str,
    keys: Iterable[str] | None,
    sources: Iterable[StepStatus],
    target: StepStatus,
    **fields: Any,
) -> list[str]:
    """Guarded move of several steps of a run (`keys=None`: all of them); returns the keys that moved."""
    query = update(steps).where(steps.c.run_id == run_id, steps.c.status.in_([s.value for s in sources]))
    if keys is not None:
        keys = list(keys)
        if not keys:
            return []
        query = query.where(steps.c.key.in_(keys))
    moved = conn.execute(query.values(status=target.value, **fields).returning(steps.c.key)).scalars()
    result = list(moved)
    if target is S.QUEUED:
        _announce_queued(conn, run_id, result)
    return result


_CLAIM_CANDIDATES = """
SELECT steps.id FROM steps JOIN runs ON runs.id = steps.run_id
WHERE steps.status = 'queued' AND steps.available_at <= :now
  AND runs.status = 'running' AND runs.cancel_requested_at IS NULL{flows}
ORDER BY steps.available_at, {tiebreak}
LIMIT :limit"""


def claim_steps(
    conn: Connection,
    worker_id: str,
    lease_s: float,
    limit: int,
    flows: Sequence[str] | None = None,
    *,
    run_id: str | None = None,
) -> list[Row[Any]]:
    """Claim up to `limit` ready steps: attempt + 1, a fresh lease token, a lease on the DB clock.

    PostgreSQL locks candidates with SKIP LOCKED so claimers never wait on each other; SQLite's
    BEGIN IMMEDIATE makes this transaction the only writer. A cancelled run's steps are never
    claimed, since its row no longer matches.
    """
    now = db_now(conn)
    params: dict[str, Any] = {"now": now, "limit": limit}
    flow_filter = ""
    if flows is not None and not flows:
        return []
    if flows is not None:
        # A worker only claims steps of flows it has loaded; others are left for other workers.
        names = sorted(flows)
        flow_filter = " AND runs.flow IN (" + ", ".join(f":flow{i}" for i in range(len(names))) + ")"
        params.update({f"flow{i}": name for i, name in enumerate(names)})
    tiebreak = "steps.id"
    if run_id is not None:
        flow_filter += " AND steps.run_id = :run_id"
        params["run_id"] = run_id
        # One run's steps in flow order: the order of `ix_steps_run_claimable`, so the claim
        # reads one index entry. By id, SQLite walked every queued step of every run (80 us at
        # 1,000 queued runs, against 7) and sorted the run's ties.
        tiebreak = "steps.position"
    query = _CLAIM_CANDIDATES.format(flows=flow_filter, tiebreak=tiebreak) + dialect_of(conn).lock_clause()
    params.update({"worker": worker_id, "expires": now + lease_s, "lease": lease_s})
    if limit == 1:
        # The common claim (a chain's next step, one free slot) picks and claims in one statement.
        params["token"] = new_lease_token()
        return direct.rows(conn, _claim_one(query), params)
    # Several: picked and claimed in one statement too, each with its own fresh token.
    params["tokens"] = json.dumps([new_lease_token() for _ in range(limit)])
    claimed = direct.rows(conn, _claim_many(query, conn.dialect.name), params)
    return sorted(claimed, key=lambda row: (row.available_at, row.position if run_id else row.id))


_CLAIM_SET = (
    "status = 'running', attempt = attempt + 1, claimed_by = :worker, lease_expires_at = :expires,"
    " deadline_at = CASE WHEN timeout_s IS NOT NULL THEN :now + timeout_s + :lease ELSE NULL END,"
    " heartbeat_at = :now, started_at = :now, finished_at = NULL"
    # `error` keeps the previous attempt's failure: the new attempt is told what went wrong.
)


@lru_cache(maxsize=256)
def _claim_one(candidates: str) -> Any:
    """Claim the one step `candidates` picks (PostgreSQL: locked with SKIP LOCKED)."""
    columns = ", ".join(f'"{column.name}"' for column in steps.c)
    return text(
        f"UPDATE steps SET {_CLAIM_SET}, lease_token = :token"
        f" WHERE id = ({candidates}) AND status = 'queued' RETURNING {columns}"
    ).columns(*steps.c)


@lru_cache(maxsize=256)
def _claim_many(candidates: str, dialect: str) -> Any:
    """Claim every step `candidates` picks, the n-th taking the n-th token of the JSON array `:tokens`."""
    columns = ", ".join(f'steps."{column.name}"' for column in steps.c)
    # Picked once, then updated: PostgreSQL would otherwise rescan a subquery joined in FROM,
    # and each rescan would pick (and the update claim) more rows.
    if dialect == "sqlite":
        token, materialized = "json_extract(:tokens, '$[' || (picked.n - 1) || ']')", ""
    else:
        token, materialized = "CAST(:tokens AS jsonb) ->> CAST(picked.n - 1 AS integer)", " MATERIALIZED"
    return text(
        f"WITH picked AS{materialized}"
        f" (SELECT c.id AS picked_id, row_number() OVER () AS n FROM ({candidates}) AS c)"
        f" UPDATE steps SET {_CLAIM_SET}, lease_token = {token}"
        " FROM picked WHERE steps.id = picked.picked_id AND steps.status = 'queued'"
        f" RETURNING {columns}"
    ).columns(*steps.c)


_HOLD_LEASE = (
    update(steps)
    .where(
        steps.c.id == bindparam("step_id"),
        steps.c.lease_token == bindparam("token"),
        steps.c.status == S.RUNNING.value,
    )
    .values(heartbeat_at=bindparam("now"))
    .returning(*steps.c)
)


def hold_lease(conn: Connection, step_id: str, token: str) -> Row[Any] | None:
    """The fence: lock the step iff `token` is still its live lease; None means the lease is lost."""
    return direct.first(conn, _HOLD_LEASE, {"step_id": step_id, "token": token, "now": db_now(conn)})


def hold_leases(conn: Connection, leases: Sequence[tuple[str, str]]) -> set[str]:
    """`hold_lease` for several (step id, token) pairs in one statement; the ids still held."""
    if not leases:
        return set()
    rows = conn.execute(
        update(steps)
        .where(tuple_(steps.c.id, steps.c.lease_token).in_(list(leases)), steps.c.status == S.RUNNING.value)
        .values(heartbeat_at=db_now(conn))
        .returning(steps.c.id)
    ).all()
    return {row.id for row in rows}


def finish_step(
    conn: Connection, step_id: str, token: str, target: StepStatus, **fields: Any
) -> Row[Any] | None:
    """Record a running step's end, only while `token` is still its lease."""
    params = {f"v_{name}": value for name, value in fields.items()}
    params.update({"step_id": step_id, "token": token, "now": db_now(conn)})
    return direct.first(conn, _finish_statement(target.value, tuple(sorted(fields))), params)


def finish_steps_succeeded(
    conn: Connection, finished: Sequence[tuple[str, str, Any, str | None]]
) -> dict[str, Row[Any]]:
    """`finish_step(…, SUCCEEDED)` for several steps with an inline output, in one statement.

    `finished` holds (step id, lease token, output, output text); each step ends only while
    that token is still its lease. Returns the ended steps by id (a step whose lease is lost is
    not among them), each with its `id` and the `artifact` its spec names (or None): only what
    recording them needs, since decoding whole rows was a tenth of the statement's cost. The
    outputs are stored as `finish_step` stores them, as JSON text.
    """
    rows = [[step_id, token, json.dumps(output), text_] for step_id, token, output, text_ in finished]
    statement = _FINISH_MANY_SQLITE if conn.dialect.name == "sqlite" else _FINISH_MANY
    ended = direct.rows(conn, statement, {"finished": json.dumps(rows), "now": db_now(conn)})
    return {row.id: row for row in ended}


_FINISH_MANY_TEMPLATE = (
    "UPDATE steps SET status = 'succeeded', finished_at = :now, lease_expires_at = NULL,"
    " lease_token = NULL, error = NULL, usage = NULL, output_ref = NULL,"
    " output = {output}, output_text = {output_text}"
    " FROM {rows} WHERE steps.id = {id} AND steps.lease_token = {token} AND {running}"
    " RETURNING steps.id, {artifact} AS artifact"
)


def _finish_many(rows: str, element: str, as_json: str, artifact: str, running: str) -> Any:
    """The statement for one dialect: `rows` of the array, `element` n of a row, `as_json` a text,
    `artifact` the spec's artifact name, `running` the condition that the step still runs."""
    return text(
        _FINISH_MANY_TEMPLATE.format(
            rows=rows,
            id=element.format(0),
            token=element.format(1),
            output=as_json.format(element.format(2)),
            output_text=element.format(3),
            artifact=artifact,
            running=running,
        )
    ).columns(steps.c.id, column("artifact", String))


_FINISH_MANY_SQLITE = _finish_many(
    "json_each(:finished) AS f",
    "json_extract(f.value, '$[{}]')",
    "{}",
    "CAST(json_extract(steps.spec, '$.artifact') AS TEXT)",
    "steps.status = 'running'",
)
# PostgreSQL, planning for a few running steps by its statistics, found them through the status
# index, which also holds an entry for every version of every step that ran since the last
# vacuum: 0.7 ms for eight steps in a fan-out. The steps are looked up by id instead, and the
# status, kept out of the planner's reach (`|| ''`), checked on the rows found.
_FINISH_MANY = _finish_many(
    "json_array_elements(CAST(:finished AS json)) AS f(value)",
    "f.value ->> {}",
    "CAST({} AS json)",
    "steps.spec ->> 'artifact'",
    "steps.id = ANY(ARRAY(SELECT value ->> 0 FROM json_array_elements(CAST(:finished AS json))))"
    " AND steps.status || '' = 'running'",
)


@lru_cache(maxsize=64)
def _finish_statement(target: str, names: tuple[str, ...]) -> Any:
    return (
        update(steps)
        .where(
            steps.c.id == bindparam("step_id"),
            steps.c.lease_token == bindparam("token"),
            steps.c.status == S.RUNNING.value,
        )
        .values(
            status=target,
            finished_at=bindparam("now"),
            lease_expires_at=None,
            **{name: bindparam(f"v_{name}", type_=steps.c[name].type) for name in names},
        )
        .returning(*steps.c)
    )


def extend_leases(conn: Connection, worker_id: str, tokens: Sequence[str], lease_s: float) -> list[Row[Any]]:
    """One statement for every in-flight step of a worker; returns the leases still held.

    A lease never extends past the step's own deadline, so a stuck step still times out.
    """
    if not tokens:
        return []
    now = db_now(conn)
    return list(
        conn.execute(
            update(steps)
            .where(
                steps.c.claimed_by == worker_id,
                steps.c.lease_token.in_(list(tokens)),
                steps.c.status == "running",
            )
            .values(lease_expires_at=now + lease_s, heartbeat_at=now)
            .returning(steps.c.id, steps.c.lease_token, steps.c.run_id)
        )
    )


def cancel_requested_runs(conn: Connection, run_ids: Sequence[str]) -> set[str]:
    if not run_ids:
        return set()
    rows = conn.execute(
        select(runs.c.id).where(runs.c.id.in_(list(set(run_ids))), runs.c.cancel_requested_at.is_not(None))
    ).scalars()
    return set(rows)


def expired_leases(conn: Connection, limit: int = 100) -> list[Row[Any]]:
    """Running steps whose lease ran out, or whose own deadline passed, on the database clock."""
    now = db_now(conn)
    return list(
        conn.execute(
            select(steps)
            .where(
                steps.c.status == S.RUNNING.value,
                (steps.c.lease_expires_at < now) | (steps.c.deadline_at < now),
            )
            .limit(limit)
        )
    )


def running_steps_of_run(conn: Connection, run_id: str) -> list[Row[Any]]:
    return list(
        conn.execute(select(steps).where(steps.c.run_id == run_id, steps.c.status == S.RUNNING.value))
    )


def next_available_at(conn: Connection) -> float | None:
    """When the earliest queued step becomes claimable (for a worker's sleep)."""
    value = conn.execute(
        select(steps.c.available_at)
        .join(runs, runs.c.id == steps.c.run_id)
        .where(steps.c.status == S.QUEUED.value, runs.c.status == "running")
        .order_by(steps.c.available_at)
        .limit(1)
    ).scalar()
    return float(value) if value is not None else None
