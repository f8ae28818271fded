"""Server-Sent Events: a run's events (id = its dense seq) and the project feed (id = commit cursor).

Both replay from the database after `Last-Event-ID`, then tail live; keep-alives are comment
lines without an id, so a reconnecting client never skips or repeats an event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from sse_starlette.sse import EventSourceResponse

from baton.api.convert import event_out
from baton.api.dependencies import Caller, Principal, Rt, visible_run
from baton.api.problems import TooManyRequests
from baton.domain.errors import UsageError
from baton.engine.follow import TERMINAL_EVENTS, wait_for_events
from baton.runtime import Runtime
from baton.store import events as event_store
from baton.store import runs as run_store
from baton.store import tenancy as tenancy_store

router = APIRouter(prefix="/v1", tags=["streams"])

KEEPALIVE_S = 15.0
#: how often an open stream re-checks that its token was not revoked
REVALIDATE_S = 2.0
_SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}
}


def _parse_seq(value: str | None) -> int:
    if value is None or value == "":
        return 0
    try:
        seq = int(value)
    except ValueError:
        raise UsageError(
            f"Last-Event-ID {value!r} is not an event id of this run: send the last id you received"
        ) from None
    if seq < 0:
        raise UsageError("Last-Event-ID must not be negative")
    return seq


class _StreamSlot:
    """Counts a token's open streams so one token cannot hold unbounded subscriptions."""

    def __init__(self, request: Request, who: Principal) -> None:
        self.counts: dict[str, int] = request.app.state.open_streams
        self.token = who.token_id
        limit = request.app.state.settings.max_streams_per_token
        if self.counts.get(self.token, 0) >= limit:
            raise TooManyRequests(f"this token already has {limit} open streams; close some first")
        self.counts[self.token] = self.counts.get(self.token, 0) + 1

    def release(self) -> None:
        self.counts[self.token] = max(0, self.counts.get(self.token, 1) - 1)


async def _still_valid(rt: Runtime, token_id: str) -> bool:
    row = await rt.db.read(tenancy_store.get_token, token_id)
    return row is not None and row.revoked_at is None


@router.get(
    "/runs/{run_id}/stream", operation_id="run_stream", responses=_SSE, response_class=EventSourceResponse
)
async def run_stream(
    run_id: str,
    request: Request,
    who: Caller,
    rt: Rt,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
) -> EventSourceResponse:
    """The run's events live. Ends cleanly after the run's final event."""
    await visible_run(rt, who, run_id)
    start = _parse_seq(last_event_id) if last_event_id is not None else (after or 0)
    slot = _StreamSlot(request, who)

    async def frames() -> AsyncIterator[dict[str, Any]]:
        seq = start
        checked = time.monotonic()
        try:
            while True:
                rows = await wait_for_events(rt.db, run_id, seq, timeout=1.0, limit=500)
                for row in rows:
                    seq = row.seq
                    yield {"id": str(row.seq), "data": event_out(row).model_dump_json()}
                if not rows or rows[-1].type in TERMINAL_EVENTS:
                    run = await rt.db.read(run_store.get_run, run_id)
                    if run is None:
                        return
                    if run.status in ("succeeded", "failed", "cancelled") and seq >= run.last_seq:
                        return
                if time.monotonic() - checked > REVALIDATE_S:
                    checked = time.monotonic()
                    if not await _still_valid(rt, who.token_id) or await request.is_disconnected():
                        return
        finally:
            slot.release()

    return EventSourceResponse(
        frames(), ping=int(KEEPALIVE_S), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


@router.get("/stream", operation_id="project_stream", responses=_SSE, response_class=EventSourceResponse)
async def project_stream(
    request: Request,
    who: Caller,
    rt: Rt,
    project_id: Annotated[str | None, Query(max_length=100)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=60)] = None,
) -> EventSourceResponse:
    """Run-level changes of the caller's projects (or one), for list views. Deltas are left out."""
    if project_id is not None and project_id not in who.roles:
        from baton.domain.errors import NotFound

        raise NotFound(f"project {project_id} not found")
    projects = [project_id] if project_id is not None else who.project_ids
    owner = None if project_id is not None else who.user_id
    cursor = last_event_id or None
    event_store.parse_cursor(cursor)  # refuse a malformed id before the stream starts
    slot = _StreamSlot(request, who)

    async def frames() -> AsyncIterator[dict[str, Any]]:
        nonlocal cursor
        checked = time.monotonic()
        try:
            while True:
                rows, next_cursor = await rt.db.read(
                    event_store.global_events_after,
                    cursor,
                    500,
                    project_ids=projects,
                    owner=owner,
                    skip_types=("step.delta",),
                )
                for row in rows:
                    position = event_store.format_cursor(int(row.tx), int(row.id))
                    yield {"id": position, "data": event_out(row).model_dump_json()}
                cursor = next_cursor
                if not rows:
                    await rt.db.wait(["runs"], 1.0 if rt.db.dialect.name == "postgresql" else 0.25)
                if time.monotonic() - checked > REVALIDATE_S:
                    checked = time.monotonic()
                    if not await _still_valid(rt, who.token_id) or await request.is_disconnected():
                        return
                await asyncio.sleep(0)
        finally:
            slot.release()

    return EventSourceResponse(
        frames(), ping=int(KEEPALIVE_S), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
