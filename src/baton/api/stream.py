"""Server-Sent Events: a run's events (id = its dense seq) and the project feed (id = commit cursor).

Both replay from the database after `Last-Event-ID`, then tail live; keep-alives are comment
lines without an id, so a reconnecting client never skips or repeats an event.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Header, Query, Request
from sse_starlette.sse import EventSourceResponse

from baton.api.convert import event_out
from baton.api.dependencies import Caller, Principal, Rt, visible_run
from baton.api.problems import TooManyRequests
from baton.api.schemas import iso_required
from baton.domain.errors import UsageError
from baton.engine.follow import CROSS_PROCESS_POLL_S, TERMINAL_EVENTS
from baton.runtime import Runtime
from baton.store import events as event_store
from baton.store import runs as run_store
from baton.store import tenancy as tenancy_store
from baton.store.recent_events import RecentEvent

router = APIRouter(prefix="/v1", tags=["streams"])

#: seconds between keep-alive comments on an idle stream (BATON_SSE_KEEPALIVE_S; at least 1)
KEEPALIVE_S = max(1.0, float(os.environ.get("BATON_SSE_KEEPALIVE_S") or 15.0))
#: events per read of a run stream
PAGE = 500
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


@dataclass(frozen=True, slots=True)
class _Frame:
    seq: int
    type: str
    wire: bytes  #: the encoded SSE frame, `id:` and `data:` lines


class _SharedPages:
    """One read of a run's events serves every stream of that run that asks for the same page.

    The streams following a run are woken together by each commit and then all want the same
    events: reading and serializing them once per run, not once per stream, is what lets hundreds
    of clients follow live runs from one process. A stream only joins a read that began after
    every wake-up it has seen (same `after`, same topic version), so it never gets a page older
    than the commit that woke it. Events this process committed itself come from memory
    (`Database.recent_events`), each encoded once, with no read at all.
    """

    def __init__(self) -> None:
        self._reads: dict[tuple[str, int, int], asyncio.Future[list[_Frame]]] = {}
        self._encoded: dict[tuple[str, int], _Frame] = {}

    async def page(
        self, rt: Runtime, run_id: str, after: int, version: int, *, woken: bool = True
    ) -> list[_Frame]:
        recent = rt.db.recent_events.after(run_id, after, PAGE, frontier=woken)
        if recent is not None:
            return [self._frame(event) for event in recent]
        key = (run_id, after, version)
        read = self._reads.get(key)
        if read is None:
            read = asyncio.ensure_future(self._read(rt, run_id, after))
            self._reads[key] = read
            read.add_done_callback(lambda _: self._reads.pop(key, None))
        # Shielded: a stream whose client left must not cancel the read the others wait for.
        return await asyncio.shield(read)

    def _frame(self, event: RecentEvent) -> _Frame:
        key = (event.run_id, event.seq)
        frame = self._encoded.get(key)
        if frame is None:
            if len(self._encoded) >= _ENCODED_MAX:
                self._encoded.clear()  # the live ones are encoded again once; old ones are not asked for
            frame = self._encoded[key] = _Frame(event.seq, event.type, _encode(event))
        return frame

    @staticmethod
    async def _read(rt: Runtime, run_id: str, after: int) -> list[_Frame]:
        rows = await rt.db.read(event_store.events_after, run_id, after, PAGE)
        return [_Frame(row.seq, row.type, _encode(row)) for row in rows]


#: encoded frames of recent events kept for the streams that have yet to send them
_ENCODED_MAX = 20_000


def _encode(row: Any) -> bytes:
    """The SSE frame of an event row: the bytes `ServerSentEvent(event_out(row)…).encode()` makes.

    Serialized by pydantic's own serializer from a plain dict rather than through a validated
    `EventOut` per event: a 10,000-event replay spent most of its time building those models
    (bench/history.py, issue 7). tests/unit/test_stream_frames.py holds the two byte for byte equal.
    The JSON has no raw newline, so it is one `data:` line.
    """
    payload = dict(row.payload or {})
    if row.step_key is not None:
        payload.setdefault("step_key", row.step_key)
    if row.attempt is not None:
        payload.setdefault("attempt", row.attempt)
    envelope = {
        "type": row.type,
        "id": row.seq,
        "timestamp": iso_required(row.created_at),
        "run_id": row.run_id,
        "payload": payload,
    }
    return b"id: %d\r\ndata: %s\r\n\r\n" % (row.seq, pydantic_core.to_json(envelope))


def _shared_pages(request: Request) -> _SharedPages:
    state = request.app.state
    pages: _SharedPages | None = getattr(state, "event_pages", None)
    if pages is None:
        pages = state.event_pages = _SharedPages()
    return pages


async def _next_frames(
    rt: Runtime, pages: _SharedPages, run_id: str, after: int, timeout: float, *, since: int | None = None
) -> tuple[list[_Frame], int]:
    """Frames after `after`, waiting up to `timeout` for the first (the stream's wait_for_events).

    Also returns the run's topic version taken before the frames were read. `since`: that
    version of the page just sent (a short one, the whole of what was there): while it has not
    moved, this process has committed nothing to the run since that read, so the stream waits
    before it reads again. Reading at once found nothing new on SQLite, where memory cannot
    vouch for other processes' commits, and cost a read per run per page (bench/stream.py,
    issue 7); other processes' commits are found by the poll, as they always were.
    """
    topics = [f"run:{run_id}"]
    poll = CROSS_PROCESS_POLL_S if rt.db.dialect.name == "sqlite" else timeout
    deadline = time.monotonic() + timeout
    woken = True
    if since is not None and rt.db.topics.version(topics) == since:
        woken = await rt.db.wait(topics, min(timeout, poll), since=since)
    while True:
        # Taken before the read: a commit during the read wakes the wait below at once.
        seen = rt.db.topics.version(topics)
        # After a wait that nothing ended, the store is read even when memory says "nothing
        # newer": a lost notification delays a stream by one wait at most.
        frames = await pages.page(rt, run_id, after, seen, woken=woken)
        remaining = deadline - time.monotonic()
        if frames or remaining <= 0:
            return frames, seen
        woken = await rt.db.wait(topics, min(remaining, poll), since=seen)


async def _still_valid(rt: Runtime, request: Request, token_id: str) -> bool:
    """Whether the stream's token still stands, as read at most REVALIDATE_S / 2 ago.

    Shared by every stream of the token: 500 streams on 50 tokens read 50 rows per interval, not
    500 (bench/stream.py, issue 7); streams that look at once share the one read in flight. A
    revocation still ends each stream within 1.5 x REVALIDATE_S.
    """
    state = request.app.state
    checks: dict[str, tuple[float, asyncio.Future[bool]]] | None = getattr(state, "token_checks", None)
    if checks is None:
        checks = state.token_checks = {}
    now = time.monotonic()
    seen = checks.get(token_id)
    if seen is None or now - seen[0] >= REVALIDATE_S / 2 or (seen[1].done() and seen[1].exception()):
        seen = (now, asyncio.ensure_future(_token_stands(rt, token_id)))
        checks[token_id] = seen
    # Shielded: a stream whose client left must not cancel the read the others wait for.
    return await asyncio.shield(seen[1])


async def _token_stands(rt: Runtime, token_id: str) -> bool:
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
    pages = _shared_pages(request)

    async def frames() -> AsyncIterator[bytes]:
        seq = start
        checked = time.monotonic()
        first = True
        read_at: int | None = None  # the topic version of the last short page sent
        try:
            while True:
                rows, version = await _next_frames(rt, pages, run_id, seq, timeout=1.0, since=read_at)
                read_at = version if rows and len(rows) < PAGE else None
                if rows:
                    # A page goes out in one write: frames encoded once per run, sent once per page.
                    seq = rows[-1].seq
                    yield b"".join(row.wire for row in rows)
                # Whether the run has ended is read when its stream starts quiet and after a final
                # event: not on every quiet second of every stream (500 streams would read 500 runs
                # a second for nothing, bench/stream.py).
                if (not rows and first) or (rows and rows[-1].type in TERMINAL_EVENTS):
                    run = await rt.db.read(run_store.get_run, run_id)
                    if run is None:
                        return
                    if run.status in ("succeeded", "failed", "cancelled") and seq >= run.last_seq:
                        return
                first = False
                if time.monotonic() - checked > REVALIDATE_S:
                    checked = time.monotonic()
                    if not await _still_valid(rt, request, who.token_id):
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
    after: Annotated[
        str | None,
        Query(max_length=60, description="start after this cursor when no Last-Event-ID is sent"),
    ] = None,
) -> EventSourceResponse:
    """Run-level changes of the caller's projects (or one), for list views. Deltas are left out.

    Without Last-Event-ID or `after` it starts at the beginning; the dashboard passes `after`, a
    cursor taken when it rendered the page, so a browser (which cannot set Last-Event-ID on its
    first connection) does not replay the whole history.
    """
    if project_id is not None and project_id not in who.roles:
        from baton.domain.errors import NotFound

        raise NotFound(f"project {project_id} not found")
    projects = [project_id] if project_id is not None else who.project_ids
    owner = None if project_id is not None else who.user_id
    cursor = last_event_id or after or None
    event_store.parse_cursor(cursor)  # refuse a malformed id before the stream starts
    slot = _StreamSlot(request, who)

    async def frames() -> AsyncIterator[dict[str, Any]]:
        nonlocal cursor
        checked = time.monotonic()
        try:
            while True:
                seen = rt.db.topics.version(["runs"])
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
                    poll = 1.0 if rt.db.dialect.name == "postgresql" else 0.25
                    await rt.db.wait(["runs"], poll, since=seen)
                if time.monotonic() - checked > REVALIDATE_S:
                    checked = time.monotonic()
                    if not await _still_valid(rt, request, who.token_id):
                        return
                await asyncio.sleep(0)
        finally:
            slot.release()

    return EventSourceResponse(
        frames(), ping=int(KEEPALIVE_S), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
