"""/v1/runs: create, list, read, transitions, fork, events page, artifacts and export."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import Connection, func, select

from baton.api.convert import artifact_out, event_out, run_out, run_summary
from baton.api.dependencies import Caller, Rt, visible_run
from baton.api.export import export_json, export_markdown, read_export
from baton.api.schemas import (
    ArtifactOut,
    EventPage,
    ForkBody,
    RetryBody,
    RunCreate,
    RunOut,
    RunPage,
    TransitionBody,
)
from baton.domain.errors import InvalidInputs, NotFound, UsageError
from baton.domain.status import RunStatus
from baton.engine.lifecycle import RunRequest
from baton.engine.scheduler import is_stalled
from baton.store import artifacts as artifact_store
from baton.store import events as event_store
from baton.store import runs as run_store
from baton.store.clock import db_now
from baton.store.schema import steps

router = APIRouter(prefix="/v1/runs", tags=["runs"])

RUN_LINKS = {
    "GetRun": {"operationId": "get_run", "parameters": {"run_id": "$response.body#/id"}},
    "RunEvents": {"operationId": "run_events", "parameters": {"run_id": "$response.body#/id"}},
    "CancelRun": {"operationId": "cancel_run", "parameters": {"run_id": "$response.body#/id"}},
    "RetryRun": {"operationId": "retry_run", "parameters": {"run_id": "$response.body#/id"}},
    "ResumeRun": {"operationId": "resume_run", "parameters": {"run_id": "$response.body#/id"}},
    "ConfirmRun": {"operationId": "confirm_run", "parameters": {"run_id": "$response.body#/id"}},
    "ForkRun": {
        "operationId": "fork_run",
        "parameters": {"run_id": "$response.body#/id"},
        "requestBody": {"from_step": "$response.body#/steps/0/key"},
    },
    "ListArtifacts": {"operationId": "list_artifacts", "parameters": {"run_id": "$response.body#/id"}},
    "ExportRun": {"operationId": "export_run", "parameters": {"run_id": "$response.body#/id"}},
    "AnswerInput": {
        "operationId": "answer_input",
        "parameters": {"request_id": "$response.body#/pending_inputs/0/id"},
    },
}


def _responses(status: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"links": RUN_LINKS}}


#: The `Idempotency-Key` request header: a retry with the same key replays the first answer.
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=150)]


def one_key(header: str | None, body: str | None) -> str | None:
    """The idempotency key from the header or the body; both may be given only when they agree."""
    if header is not None and body is not None and header != body:
        message = (
            f"the Idempotency-Key header ({header!r}) and the body's idempotency_key ({body!r}) differ: "
            "send one of them, or the same key in both"
        )
        raise InvalidInputs(message, [{"field": "idempotency_key", "message": message}])
    return header if header is not None else body


@router.post("", status_code=201, response_model=RunOut, operation_id="create_run", responses=_responses(201))
async def create_run(
    body: RunCreate,
    who: Caller,
    rt: Rt,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=150)] = None,
) -> RunOut:
    """Create a run of a flow. It waits for confirmation when its flow or policy asks for one."""
    if body.project_id is not None and not who.can(body.project_id, "member"):
        if who.can(body.project_id, "viewer"):
            from baton.domain.errors import Forbidden

            raise Forbidden(f"your role in project {body.project_id} is viewer; creating runs needs member")
        raise NotFound(f"project {body.project_id} not found")
    admin = body.project_id is not None and who.can(body.project_id, "admin")
    snapshot = await rt.lifecycle.create_run(
        RunRequest(
            flow=body.flow,
            inputs=body.inputs,
            project_id=body.project_id,
            created_by=who.user_id,
            title=body.title,
            band=body.band,
            source=body.source,
            idempotency_key=one_key(idempotency_key, body.idempotency_key),
            confirm=body.confirm,
            priority=body.priority,
            timeout_s=body.timeout_s,
            policy=body.policy,
            may_loosen=admin,
        )
    )
    return run_out(snapshot)


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, _, run_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return float(created), run_id
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(
            f"cursor {cursor!r} is not valid: pass the next_cursor of a previous page"
        ) from error


def _encode_cursor(created_at: float, run_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}|{run_id}".encode()).decode()


@router.get("", response_model=RunPage, operation_id="list_runs")
async def list_runs(
    who: Caller,
    rt: Rt,
    project_id: Annotated[str | None, Query(max_length=100)] = None,
    status: Annotated[str | None, Query(max_length=30)] = None,
    flow: Annotated[str | None, Query(max_length=100)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=300)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RunPage:
    """Runs the caller can see, newest first, with filters and cursor pagination."""
    projects = who.project_ids
    if project_id is not None:
        projects = [project_id] if project_id in who.roles else []
    before = _decode_cursor(cursor) if cursor else None

    def read(conn: Connection) -> tuple[list[Any], list[dict[str, Any]]]:
        rows = run_store.list_visible_runs(
            conn,
            project_ids=projects,
            owner=who.user_id if project_id is None else "",
            status=status,
            flow=flow,
            q=q,
            before=before,
            limit=limit + 1,
        )
        return rows, _with_stalled(conn, rows[:limit])

    rows, page = await rt.db.read(read)
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = _encode_cursor(last.created_at, last.id) if last is not None else None
    return RunPage(runs=[run_summary(r) for r in page], next_cursor=next_cursor)


def _with_stalled(conn: Connection, rows: list[Any]) -> list[dict[str, Any]]:
    """The rows with `stalled` judged as GET /v1/runs/{id} judges it (the list's stall warning)."""
    running = [r.id for r in rows if r.status == RunStatus.RUNNING]
    signs: dict[str, tuple[float | None, float | None]] = {}
    if running:
        query = (
            select(steps.c.run_id, func.max(steps.c.heartbeat_at), func.max(steps.c.finished_at))
            .where(steps.c.run_id.in_(running))
            .group_by(steps.c.run_id)
        )
        signs = {run_id: (beat, finished) for run_id, beat, finished in conn.execute(query)}
    now = db_now(conn) if running else 0.0
    out = []
    for row in rows:
        data = dict(row._mapping)
        if row.status == RunStatus.RUNNING:
            data["stalled"] = is_stalled(RunStatus.RUNNING, [row.started_at, *signs.get(row.id, ())], now)
        out.append(data)
    return out


@router.get("/{run_id}", response_model=RunOut, operation_id="get_run")
async def get_run(run_id: str, who: Caller, rt: Rt) -> RunOut:
    """A run with its steps, pending input requests and report."""
    await visible_run(rt, who, run_id)
    return run_out(await rt.lifecycle.get_run(run_id))


@router.post("/{run_id}/confirm", response_model=RunOut, operation_id="confirm_run")
async def confirm_run(run_id: str, who: Caller, rt: Rt, body: TransitionBody | None = None) -> RunOut:
    await visible_run(rt, who, run_id, "member")
    return run_out(await rt.lifecycle.confirm(run_id, by=who.user_name))


@router.post("/{run_id}/cancel", response_model=RunOut, operation_id="cancel_run")
async def cancel_run(
    run_id: str,
    who: Caller,
    rt: Rt,
    body: TransitionBody | None = None,
    idempotency_key: IdempotencyKey = None,
) -> RunOut:
    """Cancel: at once when nothing runs; otherwise in-flight steps stop within a heartbeat.

    Cancelling a cancelled run is a no-op; with the `Idempotency-Key` of an accepted cancel, so is
    cancelling a run that finished after it.
    """
    await visible_run(rt, who, run_id, "member")
    reason = body.reason if body else ""
    return run_out(
        await rt.lifecycle.cancel(run_id, reason=reason, by=who.user_name, idempotency_key=idempotency_key)
    )


@router.post(
    "/{run_id}/retry",
    status_code=201,
    response_model=RunOut,
    operation_id="retry_run",
    responses=_responses(201),
)
async def retry_run(
    run_id: str, who: Caller, rt: Rt, body: RetryBody | None = None, idempotency_key: IdempotencyKey = None
) -> RunOut:
    """A new run with the same flow, inputs and policy request; `retry_of` names this one.

    The same idempotency key (header `Idempotency-Key` or body `idempotency_key`) returns the same new run.
    """
    key = one_key(idempotency_key, body.idempotency_key if body else None)
    run = await visible_run(rt, who, run_id, "member")
    admin = run.project_id is not None and who.can(run.project_id, "admin")
    return run_out(await rt.lifecycle.retry(run_id, by=who.user_id, idempotency_key=key, may_loosen=admin))


@router.post("/{run_id}/resume", response_model=RunOut, operation_id="resume_run")
async def resume_run(
    run_id: str,
    who: Caller,
    rt: Rt,
    body: TransitionBody | None = None,
    idempotency_key: IdempotencyKey = None,
) -> RunOut:
    """Re-queue a failed run's failed steps; succeeded steps are kept.

    With the `Idempotency-Key` of the resume that was accepted, a retry returns the run (200), not a 409.
    """
    await visible_run(rt, who, run_id, "member")
    return run_out(await rt.lifecycle.resume(run_id, by=who.user_name, idempotency_key=idempotency_key))


@router.post(
    "/{run_id}/fork",
    status_code=201,
    response_model=RunOut,
    operation_id="fork_run",
    responses=_responses(201),
)
async def fork_run(run_id: str, body: ForkBody, who: Caller, rt: Rt) -> RunOut:
    """A new run from `from_step`, keeping the succeeded steps upstream of it."""
    await visible_run(rt, who, run_id, "member")
    return run_out(await rt.lifecycle.fork(run_id, body.from_step, inputs=body.inputs, by=who.user_id))


@router.get("/{run_id}/events", response_model=EventPage, operation_id="run_events")
async def run_events(
    run_id: str,
    who: Caller,
    rt: Rt,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> EventPage:
    """Events with `id > after`, oldest first (polling; the stream is the live alternative)."""
    await visible_run(rt, who, run_id)
    rows = await rt.db.read(event_store.events_after, run_id, after, limit)
    return EventPage(events=[event_out(r) for r in rows], next_after=rows[-1].seq if rows else after)


@router.get("/{run_id}/artifacts", response_model=list[ArtifactOut], operation_id="list_artifacts")
async def list_artifacts(run_id: str, who: Caller, rt: Rt) -> list[ArtifactOut]:
    await visible_run(rt, who, run_id)
    return [artifact_out(r) for r in await rt.db.read(artifact_store.list_artifacts, run_id)]


@router.get(
    "/{run_id}/artifacts/{artifact_id}",
    operation_id="get_artifact",
    response_class=Response,
    responses={
        200: {
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the raw content, served with the artifact's own media type (its `media_type`)",
        }
    },
)
async def get_artifact(run_id: str, artifact_id: str, who: Caller, rt: Rt) -> Response:
    """The artifact's raw content with its media type."""
    await visible_run(rt, who, run_id)
    row = await rt.db.read(artifact_store.get_artifact, artifact_id)
    if row is None or row.run_id != run_id:
        raise NotFound(f"artifact {artifact_id} not found in run {run_id}")
    # An ASCII fallback and the exact name (RFC 6266); a header holds only latin-1.
    plain = "".join(ch if " " <= ch <= "~" and ch not in '"\\' else "_" for ch in row.name)
    disposition = f"inline; filename=\"{plain}\"; filename*=UTF-8''{quote(row.name, safe='')}"
    return Response(
        content=bytes(row.content),
        media_type=row.media_type,
        headers={
            "Content-Disposition": disposition,
            "X-Content-Type-Options": "nosniff",
            # Agent-made content (HTML, SVG…) opened by itself must not run script on this origin,
            # where the dashboard's session lives.
            "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'",
        },
    )


@router.get(
    "/{run_id}/export",
    operation_id="export_run",
    responses={200: {"content": {"application/json": {}, "text/markdown": {}}, "description": "the run"}},
)
async def export_run(run_id: str, who: Caller, rt: Rt, format: Literal["json", "md"] = "json") -> Response:
    """The whole run as one document: JSON (run, steps, input requests, events, artifacts) or Markdown."""
    await visible_run(rt, who, run_id)
    snapshot, events, artifacts = await read_export(rt, run_id)
    if format == "md":
        return PlainTextResponse(export_markdown(snapshot, events), media_type="text/markdown")
    return JSONResponse(export_json(snapshot, events, artifacts))
