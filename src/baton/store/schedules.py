"""Schedule rows by intent: insert, read, list the visible ones, lock the next due one, update, delete."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from baton.store.clock import db_now
from baton.store.database import touch
from baton.store.schema import schedules


def insert_schedule(conn: Connection, values: dict[str, Any]) -> Row[Any]:
    now = db_now(conn)
    conn.execute(insert(schedules).values(created_at=now, updated_at=now, **values))
    touch(conn, "schedules")
    row = get_schedule(conn, values["id"])
    assert row is not None
    return row


def get_schedule(conn: Connection, schedule_id: str) -> Row[Any] | None:
    return conn.execute(select(schedules).where(schedules.c.id == schedule_id)).first()


def list_visible_schedules(
    conn: Connection, *, project_ids: Sequence[str], owner: str | None, limit: int = 200
) -> list[Row[Any]]:
    """Schedules of the given projects, plus the owner's outside any project; newest first."""
    visible: ColumnElement[bool] = schedules.c.project_id.in_(list(project_ids))
    if owner is not None:
        visible = visible | (schedules.c.project_id.is_(None) & (schedules.c.created_by == owner))
    query = (
        select(schedules)
        .where(visible)
        .order_by(schedules.c.created_at.desc(), schedules.c.id.desc())
        .limit(limit)
    )
    return list(conn.execute(query))


def list_schedules(conn: Connection, *, project_id: str | None = None, limit: int = 200) -> list[Row[Any]]:
    """Every schedule (of one project when given): the local CLI's view of its own database."""
    query = select(schedules)
    if project_id is not None:
        query = query.where(schedules.c.project_id == project_id)
    query = query.order_by(schedules.c.created_at.desc(), schedules.c.id.desc()).limit(limit)
    return list(conn.execute(query))


def any_due(conn: Connection, flows: Sequence[str]) -> bool:
    """Whether some schedule of these flows is due: a read, so an idle tick takes no write lock."""
    query = (
        select(schedules.c.id)
        .where(schedules.c.next_fire_at <= db_now(conn), schedules.c.flow.in_(list(flows)))
        .limit(1)
    )
    return conn.execute(query).first() is not None


def lock_next_due(conn: Connection, now: float, flows: Sequence[str]) -> Row[Any] | None:
    """The most overdue schedule of these flows, locked until the transaction ends.

    PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent workers each take a different schedule, and
    a worker that reads a row just fired by another re-checks `next_fire_at` and passes it by.
    SQLite: the write transaction (BEGIN IMMEDIATE) already makes this worker the only writer.
    Only flows this worker has loaded: a worker without the flow leaves the fire to one with it.
    """
    query = (
        select(schedules)
        .where(schedules.c.next_fire_at <= now, schedules.c.flow.in_(list(flows)))
        .order_by(schedules.c.next_fire_at, schedules.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return conn.execute(query).first()


def update_schedule(conn: Connection, schedule_id: str, **fields: Any) -> Row[Any] | None:
    row = conn.execute(
        update(schedules)
        .where(schedules.c.id == schedule_id)
        .values(updated_at=db_now(conn), **fields)
        .returning(*schedules.c)
    ).first()
    if row is not None:
        touch(conn, "schedules")
    return row


def delete_schedule(conn: Connection, schedule_id: str) -> bool:
    """Delete the schedule; the runs it made stay, still naming it."""
    deleted = conn.execute(delete(schedules).where(schedules.c.id == schedule_id)).rowcount
    if deleted:
        touch(conn, "schedules")
    return bool(deleted)


def next_due_at(conn: Connection, flows: Sequence[str]) -> float | None:
    """The earliest next fire time among active schedules of these flows."""
    return conn.execute(
        select(schedules.c.next_fire_at)
        .where(schedules.c.next_fire_at.is_not(None), schedules.c.flow.in_(list(flows)))
        .order_by(schedules.c.next_fire_at)
        .limit(1)
    ).scalar_one_or_none()
