"""Run rows by intent: insert, lock, guarded status change, look-ups and lists."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Float,
    Integer,
    Row,
    Select,
    String,
    bindparam,
    func,
    insert,
    select,
    tuple_,
    union_all,
    update,
)

from baton.domain.status import TERMINAL_RUN_STATUSES, RunStatus
from baton.store import direct
from baton.store.clock import db_now
from baton.store.database import touch
from baton.store.dialects import PostgresDialect
from baton.store.schema import runs


def insert_run(conn: Connection, values: dict[str, Any]) -> Row[Any]:
    """Insert a run; returns its row as stored (defaults filled in)."""
    now = db_now(conn)
    row = conn.execute(insert(runs).values(created_at=now, updated_at=now, **values).returning(*runs.c)).one()
    touch(conn, "runs")
    return row


def get_run(conn: Connection, run_id: str) -> Row[Any] | None:
    return conn.execute(select(runs).where(runs.c.id == run_id)).first()


# Statements on the hot path of every step are built once: building a statement costs far more
# than running it.
_LOCK_RUN = (
    update(runs)
    .where(runs.c.id == bindparam("run_id"))
    .values(updated_at=bindparam("now"))
    .returning(*runs.c)
)
_LOCK_RUN_READING_CLOCK = (
    update(runs)
    .where(runs.c.id == bindparam("run_id"))
    .values(updated_at=PostgresDialect().now())
    .returning(*runs.c)
)


def step_contexts(conn: Connection, run_ids: Sequence[str]) -> dict[str, tuple[str, Any, Any]]:
    """What claimed steps need of their runs, in one read: flow, inputs and policy by run id."""
    columns = (runs.c.id, runs.c.flow, runs.c.inputs, runs.c.policy)
    rows = conn.execute(select(*columns).where(runs.c.id.in_(run_ids)))
    return {row.id: (row.flow, row.inputs, row.policy) for row in rows}


def lock_run(conn: Connection, run_id: str) -> Row[Any] | None:
    """Read the run and hold its row lock until the transaction ends (a write on both dialects).

    On PostgreSQL, a transaction that has not read the clock yet takes it from this statement
    (`updated_at` is set to the server's clock): one round trip fewer per step.
    """
    if conn.dialect.name == "postgresql" and "baton_now" not in conn.info:
        row = direct.first(conn, _LOCK_RUN_READING_CLOCK, {"run_id": run_id})
        if row is not None:
            conn.info["baton_now"] = float(row.updated_at)
        return row
    return direct.first(conn, _LOCK_RUN, {"run_id": run_id, "now": db_now(conn)})


def lock_runs(conn: Connection, run_ids: Iterable[str]) -> set[str]:
    """Hold the row locks of several runs (in id order, as every multi-run locker must); the ids found.

    On PostgreSQL one statement locks them all, and sets the transaction's clock as `lock_run` does.
    """
    wanted = sorted(set(run_ids))
    if conn.dialect.name != "postgresql":
        return {run_id for run_id in wanted if lock_run(conn, run_id) is not None}
    in_order = select(runs.c.id).where(runs.c.id.in_(wanted)).order_by(runs.c.id).with_for_update()
    clock = bindparam("now", db_now(conn)) if "baton_now" in conn.info else PostgresDialect().now()
    rows = conn.execute(
        update(runs)
        .where(runs.c.id.in_(in_order.scalar_subquery()))
        .values(updated_at=clock)
        .returning(runs.c.id, runs.c.updated_at)
    ).all()
    if rows and "baton_now" not in conn.info:
        conn.info["baton_now"] = float(rows[0].updated_at)
    return {row.id for row in rows}


def transition_run(
    conn: Connection, run_id: str, sources: Iterable[RunStatus], target: RunStatus, reason: str, **fields: Any
) -> Row[Any] | None:
    """`UPDATE … WHERE status IN (sources)`; None when the run was not in one of them."""
    row = conn.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.status.in_([s.value for s in sources]))
        .values(status=target.value, status_reason=reason, updated_at=db_now(conn), **fields)
        .returning(*runs.c)
    ).first()
    if row is not None:
        touch(conn, "runs", f"run:{run_id}")
        if target in TERMINAL_RUN_STATUSES:
            # For the run-end hooks (tracing) once the transaction has committed.
            conn.info.setdefault("baton_ended_runs", []).append(row)
    return row


def update_run(conn: Connection, run_id: str, **fields: Any) -> None:
    conn.execute(update(runs).where(runs.c.id == run_id).values(updated_at=db_now(conn), **fields))


def find_by_idempotency_key(conn: Connection, scoped_key: str) -> Row[Any] | None:
    return conn.execute(select(runs).where(runs.c.idempotency_key == scoped_key)).first()


def active_runs_of_key(conn: Connection, key: str) -> list[Row[Any]]:
    """Runs holding a slot of `key`: running or waiting for input, and not being cancelled."""
    return list(
        conn.execute(
            select(runs).where(
                runs.c.concurrency_key == key,
                runs.c.status.in_([RunStatus.RUNNING.value, RunStatus.WAITING_FOR_INPUT.value]),
                runs.c.cancel_requested_at.is_(None),
            )
        )
    )


def queued_runs_of_key(conn: Connection, key: str) -> list[Row[Any]]:
    """Queued runs of `key` in promotion order: higher priority first, then oldest."""
    return list(
        conn.execute(
            select(runs)
            .where(runs.c.concurrency_key == key, runs.c.status == RunStatus.QUEUED.value)
            .order_by(runs.c.priority.desc(), runs.c.queued_at, runs.c.id)
        )
    )


def keys_with_queued_runs(conn: Connection) -> list[str]:
    return [
        r[0] for r in conn.execute(select(runs.c.concurrency_key).where(runs.c.status == "queued").distinct())
    ]


def runs_past_deadline(conn: Connection) -> list[Row[Any]]:
    now = db_now(conn)
    return list(
        conn.execute(
            select(runs.c.id).where(
                runs.c.deadline_at.is_not(None),
                runs.c.deadline_at < now,
                runs.c.status.in_(["running", "waiting_for_input", "queued"]),
            )
        )
    )


def list_runs(
    conn: Connection,
    *,
    project_id: str | None = None,
    status: str | None = None,
    flow: str | None = None,
    q: str | None = None,
    before: tuple[float, str] | None = None,
    limit: int = 50,
) -> list[Row[Any]]:
    """Newest first; `before` is the (created_at, id) of the last row of the previous page."""
    query = select(runs)
    if project_id is not None:
        query = query.where(runs.c.project_id == project_id)
    return _page(conn, query, status=status, flow=flow, q=q, before=before, limit=limit)


def _page(
    conn: Connection,
    query: Select[Any],
    *,
    status: str | None,
    flow: str | None,
    q: str | None,
    before: tuple[float, str] | None,
    limit: int,
) -> list[Row[Any]]:
    """One page of a run list: the common filters, newest first, after the cursor `before`."""
    query = _page_query(query, status=status, flow=flow, q=q, before=before, limit=limit)
    return list(conn.execute(query))


def _page_query(
    query: Select[Any],
    *,
    status: str | None,
    flow: str | None,
    q: str | None,
    before: tuple[float, str] | None,
    limit: int,
) -> Select[Any]:
    if status:
        query = query.where(runs.c.status == status)
    if flow:
        query = query.where(runs.c.flow == flow)
    if q:
        query = query.where(func.lower(runs.c.title).contains(q.lower()))
    if before is not None:
        created, run_id = before
        # A row-value comparison, not `a < x OR (a = x AND b < y)`: PostgreSQL then walks the
        # index backwards from the cursor and stops at the page, instead of a bitmap OR.
        query = query.where(tuple_(runs.c.created_at, runs.c.id) < tuple_(created, run_id))
    return query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)


def runs_in_status(conn: Connection, status: RunStatus) -> list[Row[Any]]:
    return list(conn.execute(select(runs).where(runs.c.status == status.value)))


#: Above this many projects a run list is one statement rather than one small read per project.
PER_PROJECT_PAGES = 50


def list_visible_runs(
    conn: Connection,
    *,
    project_ids: list[str],
    owner: str,
    status: str | None = None,
    flow: str | None = None,
    q: str | None = None,
    before: tuple[float, str] | None = None,
    limit: int = 50,
) -> list[Row[Any]]:
    """Runs of the given projects, plus the owner's runs outside any project; newest first.

    Up to `PER_PROJECT_PAGES` projects, the newest keys of each project (and of the owner's own
    runs), each read from the `(project_id, …, created_at)` indexes and stopped at `limit`, are
    merged into the page: a caller who sees 100,000 runs reads at most `limit` keys per project
    instead of sorting all of them (issue 7). Past that many projects a plain `IN` does it.
    """
    project_ids = list(dict.fromkeys(project_ids))
    if len(project_ids) > PER_PROJECT_PAGES:
        visible = runs.c.project_id.in_(project_ids) | (
            runs.c.project_id.is_(None) & (runs.c.created_by == owner)
        )
        return list(
            conn.execute(
                _page_query(
                    select(runs).where(visible), status=status, flow=flow, q=q, before=before, limit=limit
                )
            )
        )
    query = _merged_page(len(project_ids), bool(status), bool(flow), bool(q), before is not None)
    params: dict[str, Any] = {f"project_{i}": p for i, p in enumerate(project_ids)}
    params.update(owner=owner, status=status, flow=flow, q=q.lower() if q else None, limit=limit)
    if before is not None:
        params.update(before_created=before[0], before_id=before[1])
    return list(conn.execute(query, params))


@functools.lru_cache(maxsize=512)
def _merged_page(projects: int, status: bool, flow: bool, q: bool, before: bool) -> Select[Any]:
    """The statement of `list_visible_runs` for its shape, built once: building costs more than running.

    One statement: each part's newest keys (a LIMIT per part, so wrapped as a subquery, which
    SQLite needs in a compound), the page's keys among them, then whole rows only for those.
    """
    parts = [runs.c.project_id == bindparam(f"project_{i}") for i in range(projects)]
    parts.append(runs.c.project_id.is_(None) & (runs.c.created_by == bindparam("owner")))
    newest = (runs.c.created_at.desc(), runs.c.id.desc())
    subqueries = []
    for part in parts:
        keys = select(runs.c.created_at, runs.c.id).where(part)
        if status:
            keys = keys.where(runs.c.status == bindparam("status"))
        if flow:
            keys = keys.where(runs.c.flow == bindparam("flow"))
        if q:
            keys = keys.where(func.lower(runs.c.title).contains(bindparam("q")))
        if before:
            cursor = tuple_(bindparam("before_created", type_=Float), bindparam("before_id", type_=String))
            keys = keys.where(tuple_(runs.c.created_at, runs.c.id) < cursor)
        subqueries.append(keys.order_by(*newest).limit(bindparam("limit", type_=Integer)).subquery())
    merged = union_all(*(select(sub.c.created_at, sub.c.id) for sub in subqueries)).subquery()
    page = (
        select(merged.c.id)
        .order_by(merged.c.created_at.desc(), merged.c.id.desc())
        .limit(bindparam("limit", type_=Integer))
        .subquery()
    )
    return select(runs).join(page, runs.c.id == page.c.id).order_by(*newest)
