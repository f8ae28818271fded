"""/healthz and /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import Connection, func, select

from baton.api.dependencies import Rt
from baton.api.schemas import Health
from baton.engine import metrics
from baton.store.schema import runs, steps

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, operation_id="healthz")
async def healthz(request: Request, rt: Rt) -> Health:
    """Liveness: the process answers and its database does too."""
    await rt.db.read(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
    return Health(status="ok", database=rt.db.dialect.name, workers=len(request.app.state.workers))


def _gauges(conn: Connection) -> dict[str, Any]:
    by_status: dict[str, int] = dict(
        conn.execute(select(runs.c.status, func.count()).group_by(runs.c.status)).all()
    )
    queued = conn.execute(
        select(func.count()).select_from(steps).where(steps.c.status == "queued")
    ).scalar_one()
    running = conn.execute(
        select(func.count()).select_from(steps).where(steps.c.status == "running")
    ).scalar_one()
    return {"runs": by_status, "queued": queued, "running": running}


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def prometheus_metrics(rt: Rt) -> Response:
    """Runs by status, queue depth, step durations and claim latency."""
    values = await rt.db.read(_gauges)
    registry = CollectorRegistry()
    runs_gauge = Gauge("baton_runs", "Runs by status", ["status"], registry=registry)
    for status in (
        "needs_confirmation",
        "queued",
        "running",
        "waiting_for_input",
        "succeeded",
        "failed",
        "cancelled",
    ):
        runs_gauge.labels(status).set(values["runs"].get(status, 0))
    Gauge("baton_steps_queued", "Steps ready and waiting for a worker", registry=registry).set(
        values["queued"]
    )
    Gauge("baton_steps_running", "Steps claimed by a worker", registry=registry).set(values["running"])
    body = generate_latest(registry) + generate_latest(metrics.REGISTRY)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
