"""/v1/schedules: create, list, read, pause, resume and delete the schedules that make runs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from baton.api.convert import schedule_out
from baton.api.dependencies import Caller, Principal, Rt
from baton.api.schemas import ScheduleCreate, ScheduleOut
from baton.domain.errors import Forbidden, NotFound
from baton.engine.schedules import ScheduleRequest, Schedules, schedule_view
from baton.runtime import Runtime
from baton.store import schedules as schedule_store

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

_ID = {"schedule_id": "$response.body#/id"}
SCHEDULE_LINKS = {
    "GetSchedule": {"operationId": "get_schedule", "parameters": _ID},
    "PauseSchedule": {"operationId": "pause_schedule", "parameters": _ID},
    "ResumeSchedule": {"operationId": "resume_schedule", "parameters": _ID},
    "DeleteSchedule": {"operationId": "delete_schedule", "parameters": _ID},
}


def _responses(status: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"links": SCHEDULE_LINKS}}


async def visible_schedule(rt: Runtime, who: Principal, schedule_id: str, role: str = "viewer") -> Any:
    """The schedule row if the caller may act on it with `role`; 404 otherwise, never a leak."""
    row = await rt.db.read(schedule_store.get_schedule, schedule_id)
    if row is None or not who.can(row.project_id, "viewer", owner=row.created_by):
        raise NotFound(f"schedule {schedule_id} not found")
    if not who.can(row.project_id, role, owner=row.created_by):
        raise Forbidden(f"your role in project {row.project_id} does not allow this; it needs {role}")
    return row


@router.post(
    "",
    status_code=201,
    response_model=ScheduleOut,
    operation_id="create_schedule",
    responses=_responses(201),
)
async def create_schedule(body: ScheduleCreate, who: Caller, rt: Rt) -> ScheduleOut:
    """Make runs of a flow with these inputs on a cron expression (in a time zone) or an interval."""
    if body.project_id is not None and not who.can(body.project_id, "member"):
        if who.can(body.project_id, "viewer"):
            raise Forbidden(
                f"your role in project {body.project_id} is viewer; creating schedules needs member"
            )
        raise NotFound(f"project {body.project_id} not found")
    view = await Schedules(rt.db, rt.catalog).create(
        ScheduleRequest(
            flow=body.flow,
            cron=body.cron,
            timezone=body.timezone,
            interval_s=body.interval_s,
            inputs=body.inputs,
            project_id=body.project_id,
            created_by=who.user_id,
            title=body.title,
            band=body.band,
            policy=body.policy,
            missed=body.missed,
            auto_confirm=body.auto_confirm,
            paused=body.paused,
        )
    )
    return schedule_out(view)


@router.get("", response_model=list[ScheduleOut], operation_id="list_schedules")
async def list_schedules(
    who: Caller,
    rt: Rt,
    project_id: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> list[ScheduleOut]:
    """The schedules the caller can see, newest first: those of its projects and its own."""
    projects = who.project_ids
    if project_id is not None:
        projects = [project_id] if project_id in who.roles else []
    owner = who.user_id if project_id is None else None
    rows = await rt.db.read(
        schedule_store.list_visible_schedules, project_ids=projects, owner=owner, limit=limit
    )
    return [schedule_out(schedule_view(r)) for r in rows]


@router.get("/{schedule_id}", response_model=ScheduleOut, operation_id="get_schedule")
async def get_schedule(schedule_id: str, who: Caller, rt: Rt) -> ScheduleOut:
    """A schedule with its next fire times and what its last fire did."""
    row = await visible_schedule(rt, who, schedule_id)
    return schedule_out(schedule_view(row))


@router.post("/{schedule_id}/pause", response_model=ScheduleOut, operation_id="pause_schedule")
async def pause_schedule(schedule_id: str, who: Caller, rt: Rt) -> ScheduleOut:
    """Stop firing until resumed; pausing a paused schedule changes nothing."""
    await visible_schedule(rt, who, schedule_id, "member")
    return schedule_out(await Schedules(rt.db, rt.catalog).pause(schedule_id))


@router.post("/{schedule_id}/resume", response_model=ScheduleOut, operation_id="resume_schedule")
async def resume_schedule(schedule_id: str, who: Caller, rt: Rt) -> ScheduleOut:
    """Fire again from now on; the fires that fell while it was paused are not made up."""
    await visible_schedule(rt, who, schedule_id, "member")
    return schedule_out(await Schedules(rt.db, rt.catalog).resume(schedule_id))


@router.delete("/{schedule_id}", response_model=ScheduleOut, operation_id="delete_schedule")
async def delete_schedule(schedule_id: str, who: Caller, rt: Rt) -> ScheduleOut:
    """Delete the schedule (returned as it was); the runs it made stay and still name it."""
    await visible_schedule(rt, who, schedule_id, "member")
    return schedule_out(await Schedules(rt.db, rt.catalog).delete(schedule_id))
