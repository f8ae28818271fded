"""Input requests: open one for a waiting step, answer it once, list the pending ones."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from baton.domain.ids import new_id
from baton.store.clock import db_now
from baton.store.database import touch
from baton.store.schema import input_requests


def open_request(
    conn: Connection,
    run_id: str,
    step_key: str,
    prompt: str,
    schema: dict[str, Any],
    project_id: str | None,
    *,
    expires_at: float | None = None,
) -> str:
    request_id = new_id("inp")
    conn.execute(
        insert(input_requests).values(
            id=request_id,
            run_id=run_id,
            step_key=step_key,
            project_id=project_id,
            prompt=prompt,
            schema=schema,
            status="pending",
            created_at=db_now(conn),
            expires_at=expires_at,
        )
    )
    touch(conn, "inputs")
    return request_id


def get_request(conn: Connection, request_id: str) -> Row[Any] | None:
    return conn.execute(select(input_requests).where(input_requests.c.id == request_id)).first()


def answer_request(
    conn: Connection, request_id: str, answer: Any, answered_by: str | None
) -> Row[Any] | None:
    """Guarded: only a pending request takes an answer; None when it was not pending."""
    touch(conn, "inputs")
    return conn.execute(
        update(input_requests)
        .where(input_requests.c.id == request_id, input_requests.c.status == "pending")
        .values(status="answered", answer=answer, answered_by=answered_by, answered_at=db_now(conn))
        .returning(*input_requests.c)
    ).first()


def close_requests_of_run(conn: Connection, run_id: str, status: str = "cancelled") -> None:
    conn.execute(
        update(input_requests)
        .where(input_requests.c.run_id == run_id, input_requests.c.status == "pending")
        .values(status=status, answered_at=db_now(conn))
    )
    touch(conn, "inputs")


def list_requests(
    conn: Connection, *, status: str | None = "pending", run_id: str | None = None
) -> list[Row[Any]]:
    query = select(input_requests)
    if status:
        query = query.where(input_requests.c.status == status)
    if run_id:
        query = query.where(input_requests.c.run_id == run_id)
    return list(conn.execute(query.order_by(input_requests.c.created_at)))


def expired_requests(conn: Connection, limit: int = 100) -> list[Row[Any]]:
    """Pending requests past their expiry, on the database clock."""
    return list(
        conn.execute(
            select(input_requests)
            .where(
                input_requests.c.status == "pending",
                input_requests.c.expires_at.is_not(None),
                input_requests.c.expires_at < db_now(conn),
            )
            .limit(limit)
        )
    )


def expire_request(conn: Connection, request_id: str) -> Row[Any] | None:
    touch(conn, "inputs")
    return conn.execute(
        update(input_requests)
        .where(input_requests.c.id == request_id, input_requests.c.status == "pending")
        .values(status="expired", answered_at=db_now(conn))
        .returning(*input_requests.c)
    ).first()
