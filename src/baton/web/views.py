"""The dashboard's pages: runs, a run, the inbox, workers; and the HTML fragments their script loads.

Pages are rendered here from the store for what must be known before the first paint (who is
signed in, their projects, whether a run exists for them); everything live comes from the /v1 API
in the browser (static/*.js), with the session cookie and the CSRF header on writes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Connection, func, select

from baton.domain.errors import BatonError
from baton.domain.policy import effective_policy
from baton.runtime import Runtime
from baton.store import artifacts as artifact_store
from baton.store import runs as run_store
from baton.store import tenancy as tenancy_store
from baton.store.clock import dialect_of
from baton.store.events import format_cursor
from baton.store.schema import events
from baton.web import session
from baton.web.render import STATIC_DIR, artifact_html, fragment, markdown_html, render
from baton.web.session import PROJECT_COOKIE, Viewer, current_project, current_viewer, redirect_to_login

router = APIRouter(include_in_schema=False)

STATUSES = (
    "needs_confirmation",
    "queued",
    "running",
    "waiting_for_input",
    "succeeded",
    "failed",
    "cancelled",
)
CATEGORIES = ("Analysis", "Discovery", "Planning", "Authoring", "Review")


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _frame(conn: Connection, viewer: Viewer, project: str | None) -> dict[str, Any]:
    """What every page knows: the viewer's projects, the current project's members and policy."""
    projects = tenancy_store.list_projects(conn, viewer.project_ids())
    members: dict[str, str] = {viewer.user_id: viewer.user_name}
    policy: dict[str, Any] | None = None
    if project is not None:
        members.update({row.id: row.name for row in tenancy_store.list_members(conn, project)})
        policy = next((p.policy for p in projects if p.id == project), None)
    return {
        "projects": [{"id": p.id, "name": p.name, "role": viewer.roles.get(p.id)} for p in projects],
        "members": members,
        "project_policy": policy or {},
    }


def stream_head(conn: Connection) -> str:
    """A /v1/stream cursor at the present: every later commit comes after it, no earlier one.

    The list pages read the runs after taking it, so the stream (started `after` it) replays at
    most a few events the list already shows, never the whole history, and misses none.
    """
    horizon = dialect_of(conn).visible_horizon(conn)
    if horizon is not None:
        # PostgreSQL: every transaction below the horizon has ended; later ones sort after it.
        return format_cursor(horizon - 1, 2**62)
    # SQLite: one writer at a time, so events commit in id order (their marker is 0).
    last = conn.execute(select(func.max(events.c.id))).scalar_one_or_none()
    return format_cursor(0, int(last or 0))


def _confirmation_modes(rt: Runtime, project_policy: dict[str, Any]) -> dict[str, str]:
    """Per flow: `required` (policy says so: no skipping), `optional` (the flow asks; the launcher
    may skip it), or `none` (runs start at once)."""
    modes = {}
    for flow in rt.catalog:
        try:
            effective = effective_policy(
                rt.lifecycle.server_policy, project_policy, flow.policy, None, run_may_loosen=False
            ).effective
        except BatonError:  # a stored layer that no longer parses: be safe
            modes[flow.name] = "required"
            continue
        if effective.require_confirmation:
            modes[flow.name] = "required"
        else:
            modes[flow.name] = "optional" if flow.require_confirmation else "none"
    return modes


async def _page(
    request: Request,
    viewer: Viewer,
    template: str,
    page: str,
    extra: dict[str, Any] | None = None,
    *,
    status: int = 200,
) -> Response:
    rt = _rt(request)
    project = current_project(request, viewer)
    frame = await rt.db.read(_frame, viewer, project)
    if page in ("runs", "inbox"):
        frame["stream_from"] = await rt.db.read(stream_head)
    role = viewer.roles.get(project) if project else None
    data = {
        "page": page,
        "user": {"id": viewer.user_id, "name": viewer.user_name, "admin": viewer.is_admin},
        "project": project,
        "projects": frame["projects"],
        "members": frame["members"],
        "can_launch": project is None or role in ("member", "admin"),
        "confirmation": _confirmation_modes(rt, frame["project_policy"]),
        "categories": list(CATEGORIES),
        "statuses": list(STATUSES),
        "stream_from": frame.get("stream_from"),
        **(extra or {}),
    }
    response = render(
        request,
        template,
        {"page": page, "data": data, "project": project, "projects": frame["projects"]},
        viewer=viewer,
        status=status,
    )
    chosen = request.query_params.get("project")
    if chosen and chosen in viewer.roles:
        response.set_cookie(
            PROJECT_COOKIE,
            chosen,
            max_age=365 * 86400,
            samesite="lax",
            path="/",
            httponly=True,  # only the server reads it
            secure=request.url.scheme == "https",
        )
    return response


async def not_found(request: Request, viewer: Viewer, what: str) -> Response:
    """The same answer for a run that does not exist and one in someone else's project."""
    return await _page(request, viewer, "not_found.html", "not_found", {"what": what}, status=404)


@router.get("/")
async def runs_page(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return redirect_to_login(request)
    return await _page(request, viewer, "runs.html", "runs")


async def _visible_run(request: Request, viewer: Viewer, run_id: str) -> Any:
    run = await _rt(request).db.read(run_store.get_run, run_id)
    if run is None or not viewer.sees(run.project_id, run.created_by):
        return None
    return run


@router.get("/runs/{run_id}")
async def run_page(request: Request, run_id: str) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return redirect_to_login(request)
    run = await _visible_run(request, viewer, run_id)
    if run is None:
        return await not_found(request, viewer, f"run {run_id}")
    creator = await _rt(request).db.read(tenancy_store.get_user, run.created_by) if run.created_by else None
    return await _page(
        request,
        viewer,
        "run.html",
        "run",
        {
            "run_id": run.id,
            "run_title": run.title or run.flow,
            "may_act": viewer.may_act(run.project_id, run.created_by),
            "created_by_name": creator.name if creator is not None else None,
        },
    )


@router.get("/runs/{run_id}/report")
async def run_report(request: Request, run_id: str) -> Response:
    """The run's report as sanitized HTML (the page shows it on top once the run is done)."""
    viewer = await current_viewer(request)
    run = await _visible_run(request, viewer, run_id) if viewer is not None else None
    if run is None:
        return fragment('<p class="muted">Not found.</p>', 404)
    if not run.report:
        return fragment("")
    return fragment(markdown_html(run.report))


@router.get("/runs/{run_id}/artifacts/{artifact_id}")
async def artifact_view(request: Request, run_id: str, artifact_id: str) -> Response:
    """One artifact rendered for reading inline (the raw file is at /v1/…/artifacts/{id})."""
    viewer = await current_viewer(request)
    run = await _visible_run(request, viewer, run_id) if viewer is not None else None
    row = await _rt(request).db.read(artifact_store.get_artifact, artifact_id) if run is not None else None
    if row is None or row.run_id != run_id:
        return fragment('<p class="muted">Not found.</p>', 404)
    return fragment(artifact_html(row.name, row.media_type, bytes(row.content)))


@router.get("/inbox")
async def inbox_page(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return redirect_to_login(request)
    return await _page(request, viewer, "inbox.html", "inbox")


@router.get("/workers")
async def workers_page(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return redirect_to_login(request)
    return await _page(request, viewer, "workers.html", "workers")


def install(app: FastAPI) -> None:
    """Add the dashboard to the API's app: sign-in, pages, fragments and /static."""
    app.include_router(session.router)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
