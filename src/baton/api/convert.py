"""Rows and lifecycle snapshots -> API response models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from baton.api.schemas import (
    ArtifactOut,
    EventOut,
    InputRequestOut,
    RunOut,
    RunSummary,
    ScheduleOut,
    StepOut,
    iso,
    iso_required,
)


def step_out(row: Mapping[str, Any]) -> StepOut:
    spec = row.get("spec") or {}
    return StepOut(
        key=row["key"],
        kind=row["kind"],
        status=row["status"],
        label=str(spec.get("label") or row["key"]),
        needs=list(row.get("needs") or []),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        engine=row.get("engine"),
        started_at=iso(row.get("started_at")),
        finished_at=iso(row.get("finished_at")),
        error=row.get("error"),
        output=row.get("output"),
        output_ref=row.get("output_ref"),
        output_text=row.get("output_text"),
        usage=row.get("usage"),
    )


def input_out(row: Mapping[str, Any]) -> InputRequestOut:
    return InputRequestOut(
        id=row["id"],
        run_id=row["run_id"],
        step_key=row["step_key"],
        project_id=row.get("project_id"),
        prompt=row["prompt"],
        schema=row.get("schema") or {},
        status=row["status"],
        answer=row.get("answer"),
        answered_by=row.get("answered_by"),
        created_at=iso_required(row["created_at"]),
        answered_at=iso(row.get("answered_at")),
        expires_at=iso(row.get("expires_at")),
    )


def _summary_fields(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": run["id"],
        "flow": run["flow"],
        "project_id": run.get("project_id"),
        "created_by": run.get("created_by"),
        "schedule_id": run.get("schedule_id"),
        "title": run.get("title") or "",
        "band": run.get("band"),
        "status": run["status"],
        "status_reason": run.get("status_reason") or "",
        "retry_of": run.get("retry_of"),
        "forked_from": run.get("forked_from"),
        "fork_step": run.get("fork_step"),
        "cancel_requested": run.get("cancel_requested_at") is not None,
        "stalled": bool(run.get("stalled")),
        "progress": run.get("progress"),
        "created_at": iso(run["created_at"]),
        "started_at": iso(run.get("started_at")),
        "finished_at": iso(run.get("finished_at")),
    }


def run_summary(run: Mapping[str, Any]) -> RunSummary:
    return RunSummary(**_summary_fields(run))


def run_out(snapshot: Mapping[str, Any]) -> RunOut:
    return RunOut(
        **_summary_fields(snapshot),
        inputs=snapshot.get("inputs") or {},
        source=snapshot.get("source"),
        policy=snapshot.get("policy") or {},
        result=snapshot.get("result"),
        report=snapshot.get("report"),
        usage=snapshot.get("usage"),
        steps=[step_out(s) for s in snapshot.get("steps", [])],
        pending_inputs=[input_out(i) for i in snapshot.get("pending_inputs", []) if i["status"] == "pending"],
    )


def schedule_out(view: Mapping[str, Any]) -> ScheduleOut:
    """A schedule (engine.schedules.schedule_view) as the API shows it."""
    fields: dict[str, Any] = {name: view.get(name) for name in _SCHEDULE_FIELDS}
    return ScheduleOut(
        **fields,
        paused=view.get("paused_at") is not None,
        auto_confirm=bool(view.get("auto_confirm")),
        inputs=view.get("inputs") or {},
        title=view.get("title") or "",
        next_fire_at=iso(view.get("next_fire_at")),
        next_fires=[iso_required(f) for f in view.get("next_fires") or []],
        last_fire_at=iso(view.get("last_fire_at")),
        created_at=iso_required(view["created_at"]),
        updated_at=iso_required(view["updated_at"]),
    )


_SCHEDULE_FIELDS = (
    "id",
    "project_id",
    "created_by",
    "flow",
    "band",
    "policy",
    "cron",
    "timezone",
    "interval_s",
    "missed",
    "last_run_id",
    "last_error",
    "fires",
)


def event_out(row: Any) -> EventOut:
    payload = dict(row.payload or {})
    if row.step_key is not None:
        payload.setdefault("step_key", row.step_key)
    if row.attempt is not None:
        payload.setdefault("attempt", row.attempt)
    return EventOut(
        type=row.type, id=row.seq, timestamp=iso_required(row.created_at), run_id=row.run_id, payload=payload
    )


def artifact_out(row: Any) -> ArtifactOut:
    return ArtifactOut(
        id=row.id,
        run_id=row.run_id,
        step_key=row.step_key,
        attempt=row.attempt,
        name=row.name,
        media_type=row.media_type,
        size=row.size,
        created_at=iso_required(row.created_at),
    )
