"""The `workers` table: one row per worker process incarnation, kept fresh by its heartbeat."""

from __future__ import annotations

import os
import socket
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from baton.store.clock import db_now
from baton.store.schema import workers


def register_worker(conn: Connection, worker_id: str, concurrency: int) -> None:
    now = db_now(conn)
    conn.execute(
        insert(workers).values(
            id=worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            concurrency=concurrency,
            in_flight=0,
            started_at=now,
            heartbeat_at=now,
        )
    )


def beat(conn: Connection, worker_id: str, in_flight: int) -> None:
    conn.execute(
        update(workers)
        .where(workers.c.id == worker_id)
        .values(heartbeat_at=db_now(conn), in_flight=in_flight)
    )


def mark_stopped(conn: Connection, worker_id: str) -> None:
    conn.execute(
        update(workers).where(workers.c.id == worker_id).values(stopped_at=db_now(conn), in_flight=0)
    )


def list_workers(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(select(workers).order_by(workers.c.started_at.desc())))
