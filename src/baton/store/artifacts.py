"""Artifacts: named content of any size, stored once and passed around by id."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, insert, select

from baton.domain.ids import new_id
from baton.store.clock import db_now
from baton.store.schema import artifacts

_META = [c for c in artifacts.c if c.name != "content"]


def insert_artifact(
    conn: Connection,
    run_id: str,
    name: str,
    content: bytes,
    media_type: str,
    *,
    step_key: str | None = None,
    attempt: int | None = None,
) -> dict[str, Any]:
    artifact_id = new_id("art")
    values = {
        "id": artifact_id,
        "run_id": run_id,
        "step_key": step_key,
        "attempt": attempt,
        "name": name,
        "media_type": media_type,
        "size": len(content),
        "created_at": db_now(conn),
    }
    conn.execute(insert(artifacts).values(content=content, **values))
    return values


def list_artifacts(conn: Connection, run_id: str) -> list[Row[Any]]:
    return list(
        conn.execute(select(*_META).where(artifacts.c.run_id == run_id).order_by(artifacts.c.created_at))
    )


def get_artifact(conn: Connection, artifact_id: str) -> Row[Any] | None:
    return conn.execute(select(artifacts).where(artifacts.c.id == artifact_id)).first()


def get_artifact_content(conn: Connection, artifact_id: str) -> bytes | None:
    value = conn.execute(select(artifacts.c.content).where(artifacts.c.id == artifact_id)).scalar()
    return bytes(value) if value is not None else None
