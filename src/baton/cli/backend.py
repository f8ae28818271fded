"""Where the CLI's commands act: the database here (`LocalBackend`) or a Baton server (`HttpBackend`).

Both answer in the same shapes, those of the engine's lifecycle snapshots (times as epoch
seconds), so the commands print and follow runs with one code path. Over HTTP nothing here opens a
database or starts a worker: the server's workers execute the steps, and live views read the run's
Server-Sent Events through `baton.client.Client.stream`, which resumes with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from baton.cli.common import Target, parse_inputs, user
from baton.cli.live import DatabaseFeed, Feed, InProcessWorker, LiveEvent
from baton.domain import errors

if TYPE_CHECKING:
    from baton.client import Client
    from baton.flows.spec import Flow
    from baton.runtime import Runtime

T = TypeVar("T")

#: a page of the events API, the most it allows
_EVENTS_PAGE = 10_000
#: a page of the runs API, the most it allows
_RUNS_PAGE = 200


class Backend:
    """The operations the CLI's commands need, on runs, inputs and events."""

    target: Target

    async def get_run(self, run_id: str) -> dict[str, Any]:
        raise NotImplementedError

    async def list_runs(
        self, *, status: str | None, flow: str | None, project: str | None, limit: int
    ) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def confirm(self, run_id: str) -> dict[str, Any]:
        raise NotImplementedError

    async def cancel(self, run_id: str, reason: str) -> dict[str, Any]:
        raise NotImplementedError

    async def retry(self, run_id: str) -> dict[str, Any]:
        raise NotImplementedError

    async def resume(self, run_id: str) -> dict[str, Any]:
        raise NotImplementedError

    async def fork(self, run_id: str, from_step: str, changes: Sequence[str]) -> dict[str, Any]:
        """`changes` are KEY=VALUE inputs typed by the flow's schema, over the source run's inputs."""
        raise NotImplementedError

    async def events(self, run_id: str, after: int, limit: int) -> list[LiveEvent]:
        raise NotImplementedError

    def follow_events(self, run_id: str, after: int) -> AsyncIterator[LiveEvent]:
        """Every event after `after` as it commits, until the run ends."""
        raise NotImplementedError

    async def pending_inputs(self, run_id: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def input_request(self, request_id: str) -> dict[str, Any]:
        """A pending input request (NotFound when there is none with that id)."""
        raise NotImplementedError

    async def answer(self, request_id: str, value: Any) -> dict[str, Any]:
        raise NotImplementedError

    def feed(self, run_id: str) -> Feed:
        raise NotImplementedError

    def worker(self, *, concurrency: int = 8, lease: float = 30.0) -> InProcessWorker | None:
        """A worker to execute steps while a command follows a run (local mode only)."""
        return None

    async def all_events(self, run_id: str, after: int = 0) -> list[LiveEvent]:
        found: list[LiveEvent] = []
        while True:
            page = await self.events(run_id, found[-1].seq if found else after, _EVENTS_PAGE)
            found += page
            if len(page) < _EVENTS_PAGE:
                return found


@contextlib.asynccontextmanager
async def open_backend(where: Target) -> AsyncIterator[Backend]:
    """The database (opened, migrated if needed) or a client of the server, closed afterwards."""
    if where.remote:
        client = make_client(where)
        try:
            yield HttpBackend(client, where)
        finally:
            client.close()
        return
    from baton.runtime import open_runtime

    async with open_runtime(where.database_url, where.sources) as rt:
        yield LocalBackend(rt, where)


# --- local: the database here ----------------------------------------------------------------------


class LocalBackend(Backend):
    def __init__(self, rt: Runtime, where: Target) -> None:
        self.rt = rt
        self.target = where

    async def get_run(self, run_id: str) -> dict[str, Any]:
        return await self.rt.lifecycle.get_run(run_id)

    async def list_runs(
        self, *, status: str | None, flow: str | None, project: str | None, limit: int
    ) -> list[dict[str, Any]]:
        from baton.store import runs as run_store

        rows = await self.rt.db.read(
            run_store.list_runs, project_id=project, status=status, flow=flow, limit=limit
        )
        return [dict(row._mapping) for row in rows]

    async def confirm(self, run_id: str) -> dict[str, Any]:
        return await self.rt.lifecycle.confirm(run_id, by=user())

    async def cancel(self, run_id: str, reason: str) -> dict[str, Any]:
        return await self.rt.lifecycle.cancel(run_id, reason=reason, by=user())

    async def retry(self, run_id: str) -> dict[str, Any]:
        return await self.rt.lifecycle.retry(run_id, by=user())

    async def resume(self, run_id: str) -> dict[str, Any]:
        return await self.rt.lifecycle.resume(run_id, by=user())

    async def fork(self, run_id: str, from_step: str, changes: Sequence[str]) -> dict[str, Any]:
        edited = None
        if changes:
            source = await self.rt.lifecycle.get_run(run_id)
            flow = self.rt.catalog.get(source["flow"])
            typed = parse_inputs(changes, flow.input_schema, flow=flow.name)
            edited = {**(source.get("inputs") or {}), **typed}
        return await self.rt.lifecycle.fork(run_id, from_step, inputs=edited, by=user())

    async def events(self, run_id: str, after: int, limit: int) -> list[LiveEvent]:
        from baton.store import events as event_store

        rows = await self.rt.db.read(event_store.events_after, run_id, after, limit)
        return [LiveEvent.from_row(row) for row in rows]

    async def follow_events(self, run_id: str, after: int) -> AsyncIterator[LiveEvent]:
        from baton.engine.follow import follow_run

        async for row in follow_run(self.rt.db, run_id, after):
            yield LiveEvent.from_row(row)

    async def pending_inputs(self, run_id: str | None = None) -> list[dict[str, Any]]:
        from baton.store import inputs as input_store

        rows = await self.rt.db.read(input_store.list_requests, status="pending", run_id=run_id)
        return [dict(row._mapping) for row in rows]

    async def input_request(self, request_id: str) -> dict[str, Any]:
        from baton.store import inputs as input_store

        row = await self.rt.db.read(input_store.get_request, request_id)
        if row is None:
            raise errors.NotFound(f"input request {request_id} not found: see `baton inputs ls`")
        return dict(row._mapping)

    async def answer(self, request_id: str, value: Any) -> dict[str, Any]:
        return await self.rt.lifecycle.answer(request_id, value, by=user())

    def feed(self, run_id: str) -> Feed:
        return DatabaseFeed(self.rt, run_id)

    def worker(self, *, concurrency: int = 8, lease: float = 30.0) -> InProcessWorker | None:
        from baton.engine.worker import WorkerSettings

        settings = WorkerSettings(concurrency=concurrency, lease_s=lease, poll_s=0.5, drain_s=5.0)
        return InProcessWorker(self.rt, settings)


# --- HTTP: a Baton server --------------------------------------------------------------------------


def make_client(where: Target) -> Client:
    from baton.client import Client

    assert where.server is not None and where.token is not None
    return Client(where.server, where.token)


def explain(error: errors.BatonError, server: str) -> errors.BatonError:
    """A refused token says what to do about it; other errors are the server's own words."""
    if isinstance(error, errors.Unauthorized):
        return errors.Unauthorized(
            f"the server at {server} refused the token ({error.message}): "
            "pass a valid one with --token TOKEN or BATON_TOKEN"
        )
    return error


async def call(server: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking client call in a thread, so Ctrl-C and the live view stay responsive."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except errors.BatonError as error:
        raise explain(error, server) from None


def epoch(value: Any) -> float | None:
    """An API timestamp (ISO 8601) as epoch seconds, the CLI's unit."""
    if value is None or isinstance(value, int | float):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


_TIMES = ("created_at", "started_at", "finished_at", "answered_at", "expires_at")


def _with_epochs(item: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(item)
    for name in _TIMES:
        if name in out:
            out[name] = epoch(out[name])
    return out


def run_from_api(run: Mapping[str, Any]) -> dict[str, Any]:
    """A RunOut / RunSummary body in the shape of a lifecycle snapshot."""
    out = _with_epochs(run)
    out["steps"] = [_with_epochs(step) for step in run.get("steps") or []]
    out["pending_inputs"] = [_with_epochs(request) for request in run.get("pending_inputs") or []]
    return out


def event_from_api(envelope: Mapping[str, Any]) -> LiveEvent:
    """The envelope {type, id, timestamp, run_id, payload} (step_key, attempt inside the payload)."""
    payload = dict(envelope.get("payload") or {})
    step_key = payload.pop("step_key", None)
    attempt = payload.pop("attempt", None)
    at = epoch(envelope.get("timestamp"))
    return LiveEvent(
        seq=int(envelope["id"]),
        type=str(envelope["type"]),
        step_key=str(step_key) if step_key is not None else None,
        attempt=int(attempt) if isinstance(attempt, int) else None,
        payload=payload,
        created_at=at if at is not None else 0.0,
    )


_END = object()


class StreamPump:
    """`Client.stream` (blocking, resuming by itself) read in a thread and handed to the event loop.

    The thread is a daemon: a user who stops following is not held up by an open connection.
    """

    def __init__(self, client: Client, run_id: str, after: int) -> None:
        self.client = client
        self.run_id = run_id
        self.after = after
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False
        self.ended = False
        self.thread = threading.Thread(target=self._pump, name=f"baton-stream-{run_id}", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            for envelope in self.client.stream(self.run_id, self.after):
                if self.closed:
                    return
                self._hand(event_from_api(envelope))
        except BaseException as error:  # handed to the loop, raised there
            self._hand(error)
        else:
            self._hand(_END)

    def _hand(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody follows any more
            self.closed = True

    async def take(self, timeout: float | None) -> list[LiveEvent]:
        """What arrived, waiting up to `timeout` (None: for ever) for the first item."""
        if self.ended:
            return []
        items: list[Any] = []
        try:
            async with asyncio.timeout(timeout):  # not wait_for: 3.11's can swallow a cancellation
                items.append(await self.queue.get())
        except TimeoutError:
            return []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        found: list[LiveEvent] = []
        for item in items:
            if item is _END:
                self.ended = True
                break
            if isinstance(item, errors.BatonError):
                raise explain(item, self.client.server)
            if isinstance(item, BaseException):
                raise errors.RuntimeFailure(f"the event stream from {self.client.server} failed: {item!r}")
            found.append(item)
        return found

    def close(self) -> None:
        self.closed = True


class HttpFeed:
    """A run followed over HTTP: snapshot and history from the API, then its SSE stream."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.goes_on = f"the run goes on on the server at {client.server}"
        self._history: list[LiveEvent] = []
        self._until = 0
        self._pump: StreamPump | None = None

    async def snapshot(self) -> tuple[dict[str, Any], int]:
        run = run_from_api(await call(self.client.server, self.client.get_run, self.run_id))
        history: list[LiveEvent] = []
        while True:  # the history so far, read as pages: then the stream goes on from its end
            after = history[-1].seq if history else 0
            page = await call(self.client.server, self.client.events, self.run_id, after, _EVENTS_PAGE)
            history += [event_from_api(e) for e in page.get("events") or []]
            if len(page.get("events") or []) < _EVENTS_PAGE:
                break
        self._history = history
        self._until = history[-1].seq if history else 0
        return run, self._until

    async def wait(self, after: int, timeout: float) -> list[LiveEvent]:
        if self._history:
            found, self._history = [e for e in self._history if e.seq > after], []
            return found
        if self._pump is None:
            self._pump = StreamPump(self.client, self.run_id, max(after, self._until))
        return await self._pump.take(timeout)

    @property
    def ended(self) -> bool:
        return self._pump is not None and self._pump.ended

    async def final(self) -> dict[str, Any]:
        if self._pump is not None:
            self._pump.close()
        return run_from_api(await call(self.client.server, self.client.get_run, self.run_id))


class HttpBackend(Backend):
    def __init__(self, client: Client, where: Target) -> None:
        self.client = client
        self.target = where
        self.server = client.server

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await call(self.server, fn, *args, **kwargs)

    async def get_run(self, run_id: str) -> dict[str, Any]:
        return run_from_api(await self._call(self.client.get_run, run_id))

    async def list_runs(
        self, *, status: str | None, flow: str | None, project: str | None, limit: int
    ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(found) < limit:
            page = await self._call(
                self.client.list_runs,
                status=status,
                flow=flow,
                project_id=project,
                cursor=cursor,
                limit=min(_RUNS_PAGE, limit - len(found)),
            )
            found += [run_from_api(r) for r in page.get("runs") or []]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return found[:limit]

    async def confirm(self, run_id: str) -> dict[str, Any]:
        return run_from_api(await self._call(self.client.confirm, run_id))

    async def cancel(self, run_id: str, reason: str) -> dict[str, Any]:
        return run_from_api(await self._call(self.client.cancel, run_id, reason))

    async def retry(self, run_id: str) -> dict[str, Any]:
        return run_from_api(await self._call(self.client.retry, run_id))

    async def resume(self, run_id: str) -> dict[str, Any]:
        return run_from_api(await self._call(self.client.resume, run_id))

    async def fork(self, run_id: str, from_step: str, changes: Sequence[str]) -> dict[str, Any]:
        edited = None
        if changes:
            source = await self.get_run(run_id)
            flow = await self._call(self.client.flow, source["flow"])
            typed = parse_inputs(changes, flow.get("input_schema") or {}, flow=str(flow["name"]))
            edited = {**(source.get("inputs") or {}), **typed}
        return run_from_api(await self._call(self.client.fork, run_id, from_step, edited))

    async def events(self, run_id: str, after: int, limit: int) -> list[LiveEvent]:
        page = await self._call(self.client.events, run_id, after, min(limit, _EVENTS_PAGE))
        return [event_from_api(e) for e in page.get("events") or []]

    async def follow_events(self, run_id: str, after: int) -> AsyncIterator[LiveEvent]:
        await self._call(self.client.get_run, run_id)  # a clear error for an unknown run
        pump = StreamPump(self.client, run_id, after)
        try:
            while not pump.ended:
                for event in await pump.take(None):
                    yield event
        finally:
            pump.close()

    async def pending_inputs(self, run_id: str | None = None) -> list[dict[str, Any]]:
        rows = await self._call(self.client.inputs, "pending")
        return [_with_epochs(r) for r in rows if run_id is None or r.get("run_id") == run_id]

    async def input_request(self, request_id: str) -> dict[str, Any]:
        # Pending ones first; the others only so that answering one again gets the server's 409.
        for status in ("pending", "answered", "cancelled", "expired"):
            for request in await self._call(self.client.inputs, status):
                if request.get("id") == request_id:
                    return _with_epochs(request)
        raise errors.NotFound(f"input request {request_id} not found: see `baton inputs ls`")

    async def answer(self, request_id: str, value: Any) -> dict[str, Any]:
        return run_from_api(await self._call(self.client.answer, request_id, value))

    def feed(self, run_id: str) -> Feed:
        return HttpFeed(self.client, run_id)


# --- flows: what can be run, in one shape for both modes -------------------------------------------


def flow_from_spec(flow: Flow) -> dict[str, Any]:
    steps = []
    for spec in flow.steps:
        does = spec.engine or spec.handler or ""
        if spec.prompt:
            does = f"{does}: {spec.prompt}" if does else spec.prompt
        steps.append(
            {
                "key": spec.key,
                "kind": spec.kind.value,
                "needs": list(spec.needs),
                "does": does,
                "timeout_s": spec.timeout_s,
            }
        )
    return {
        "name": flow.name,
        "version": flow.version,
        "category": flow.category,
        "title": flow.title or "",
        "description": flow.description or "",
        "require_confirmation": flow.require_confirmation,
        "input_schema": dict(flow.input_schema),
        "steps": steps,
        "bands": {name: dict(band or {}) for name, band in flow.bands.items()},
    }


def flow_from_api(flow: Mapping[str, Any]) -> dict[str, Any]:
    title = str(flow.get("title") or "")
    return {
        "name": flow["name"],
        "version": str(flow.get("version") or ""),
        "category": str(flow.get("category") or ""),
        "title": "" if title == flow["name"] else title,
        "description": str(flow.get("description") or ""),
        "require_confirmation": bool(flow.get("require_confirmation")),
        "input_schema": dict(flow.get("input_schema") or {}),
        "bands": dict(flow.get("band_details") or {}),
        "steps": [
            {
                "key": s["key"],
                "kind": s.get("kind") or "?",
                "needs": list(s.get("needs") or []),
                "does": s.get("engine") or "",
                "timeout_s": None,
            }
            for s in flow.get("steps") or []
        ],
    }


async def list_flows(where: Target) -> list[dict[str, Any]]:
    if not where.remote:
        return [flow_from_spec(flow) for flow in where.load_catalog()]
    client = make_client(where)
    try:
        return [flow_from_api(f) for f in await call(client.server, client.flows)]
    finally:
        client.close()


async def get_flow(where: Target, name: str) -> dict[str, Any]:
    if not where.remote:
        return flow_from_spec(where.load_catalog().get(name))
    client = make_client(where)
    try:
        return flow_from_api(await call(client.server, client.flow, name))
    finally:
        client.close()
