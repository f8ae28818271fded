"""/v1/workers: the worker processes, their hosts, in-flight steps and last heartbeats."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import Connection, select

from baton.api.dependencies import Caller, Principal, Rt
from baton.api.schemas import iso, iso_required
from baton.store import workers as worker_store
from baton.store.clock import db_now
from baton.store.schema import runs, steps

router = APIRouter(prefix="/v1", tags=["workers"])


class InFlightStep(BaseModel):
    run_id: str
    step_key: str
    attempt: int
    started_at: datetime | None


class WorkerOut(BaseModel):
    id: str = Field(description="host:pid:random, new at every process start")
    host: str
    pid: int
    concurrency: int
    in_flight: int = Field(description="steps it runs now, as of its last heartbeat")
    steps: list[InFlightStep] = Field(
        default_factory=list, description="the in-flight steps of runs the caller can see"
    )
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float = Field(description="seconds since its last heartbeat, by the database clock")
    stopped_at: datetime | None


def _read(conn: Connection, who: Principal) -> tuple[list[Any], list[Any], float]:
    visible = runs.c.project_id.in_(who.project_ids) | (
        runs.c.project_id.is_(None) & (runs.c.created_by == who.user_id)
    )
    running = conn.execute(
        select(steps.c.run_id, steps.c.key, steps.c.attempt, steps.c.started_at, steps.c.claimed_by)
        .join(runs, runs.c.id == steps.c.run_id)
        .where(steps.c.status == "running", visible)
        .order_by(steps.c.started_at)
        .limit(1000)
    ).all()
    return worker_store.list_workers(conn)[:200], list(running), db_now(conn)


@router.get("/workers", response_model=list[WorkerOut], operation_id="list_workers")
async def list_workers(who: Caller, rt: Rt) -> list[WorkerOut]:
    """Every worker process, newest first. Workers are shared infrastructure: any signed-in user
    sees them all, but only the in-flight steps of runs they can see."""
    rows, running, now = await rt.db.read(_read, who)
    by_worker: dict[str, list[InFlightStep]] = {}
    for step in running:
        by_worker.setdefault(step.claimed_by or "", []).append(
            InFlightStep(
                run_id=step.run_id, step_key=step.key, attempt=step.attempt, started_at=iso(step.started_at)
            )
        )
    return [
        WorkerOut(
            id=row.id,
            host=row.host,
            pid=row.pid,
            concurrency=row.concurrency,
            in_flight=row.in_flight,
            steps=by_worker.get(row.id, []),
            started_at=iso_required(row.started_at),
            heartbeat_at=iso_required(row.heartbeat_at),
            heartbeat_age_s=max(0.0, now - row.heartbeat_at),
            stopped_at=iso(row.stopped_at),
        )
        for row in rows
    ]
