"""create_app(settings): the FastAPI app, its lifespan (store, workers, reaper) and middleware."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from baton import heap, redaction
from baton.api import problems
from baton.api.bootstrap import bootstrap_if_empty
from baton.api.dependencies import RateLimiter
from baton.api.routes import catalog as catalog_routes
from baton.api.routes import health, inputs, runs, tenancy, webhooks, workers
from baton.api.routes import schedules as schedule_routes
from baton.api.stream import router as stream_router
from baton.config import ServerSettings
from baton.domain.errors import BatonError
from baton.engine import step_results
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.runtime import open_runtime
from baton.store import tenancy as tenancy_store
from baton.web import install as install_dashboard

logger = logging.getLogger(__name__)

REAPER_S = 5.0


class BodyLimit:
    """Refuse request bodies over the limit with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        if declared is not None:
            # The server delivers no more than Content-Length bytes.
            await self.app(scope, receive, send)
            return
        # A body without a length (chunked) is read here, up to the limit, before the app sees it:
        # an error raised from `receive` inside the app would reach the client as a 400 (FastAPI
        # calls any failure while reading the body a parse error), not as this 413.
        buffered: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            # The buffered body first, then the live channel (disconnects, for streams).
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problems.problem(
            413, "Payload too large", f"the request body is over {self.limit} bytes; send less"
        )
        await response(scope, receive, send)


class SecurityHeaders:
    """nosniff and same-origin referrers on every response; a stray BatonError becomes a problem.

    Pure ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware pushes every
    chunk of a streaming response through an extra task and memory stream, which on hundreds of
    live SSE streams cost a fifth of the server's CPU (bench/stream.py).
    """

    HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"))

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in self.HEADERS if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except BatonError as error:
            if started:
                raise
            await problems.baton_problem(error)(scope, receive, with_headers)


def create_app(settings: ServerSettings, *, catalog: Catalog | None = None) -> FastAPI:
    redaction.install_log_redaction()  # no model key or token in a log line of the server

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(
            settings.database_url,
            settings.flow_sources,
            catalog=catalog,
            server_policy=settings.server_policy,
        ) as rt:
            app.state.runtime = rt
            # Run streams take the events workers in other processes commit from their
            # notifications, without reading them back (PostgreSQL; bench/stream.py, issue 7).
            rt.db.receive_events = True
            first = await rt.db.write(bootstrap_if_empty)
            if first is not None:
                # Shown once, like Jupyter's: only the token's hash is kept.
                print(
                    f"Baton: created project 'default' and admin user; sign in at "
                    f"{settings.base_url}/login?token={first.token}\n"
                    f"       or use the API with: Authorization: Bearer {first.token}",
                    file=sys.stderr,
                    flush=True,
                )
            app.state.workers = [
                rt.worker(WorkerSettings(concurrency=settings.concurrency, lease_s=settings.lease_s))
                for _ in range(settings.workers)
            ]
            tasks = [asyncio.create_task(w.run(), name="baton-worker") for w in app.state.workers]
            if not app.state.workers:
                tasks.append(asyncio.create_task(_reap_forever(app), name="baton-api-reaper"))
            tasks.append(asyncio.create_task(_flush_token_use(app), name="baton-token-use"))
            heap.freeze_startup_objects()
            try:
                yield
            finally:
                for worker in app.state.workers:
                    worker.stop()
                for task in tasks:
                    if task.get_name() != "baton-worker":
                        task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(
        title="Baton",
        version="0.1.0",
        description="Durable, observable, human-in-the-loop orchestration of LLM agent workflows.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.rate_limiter = RateLimiter(settings.rate_per_s, settings.rate_burst)
    app.state.token_last_used = {}
    app.state.background_writes = []
    app.state.open_streams = {}
    problems.install(app)
    for router in (
        runs.router,
        inputs.router,
        catalog_routes.router,
        tenancy.router,
        stream_router,
        health.router,
        workers.router,
        schedule_routes.router,
        webhooks.router,
    ):
        app.include_router(router)
    install_dashboard(app)

    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


async def _reap_forever(app: FastAPI) -> None:
    """An API-only replica still repairs what dead workers left behind."""
    rt = app.state.runtime
    while True:
        await asyncio.sleep(REAPER_S)
        try:
            await rt.db.write(step_results.reap, rt.lifecycle.flows)
        except BatonError as error:
            logger.warning("reaper pass failed: %s", error, extra={"action": "api.reap_failed"})


async def _flush_token_use(app: FastAPI) -> None:
    """Write tokens' last-used times in the background, batched, off the request path."""
    rt = app.state.runtime
    while True:
        await asyncio.sleep(2.0)
        pending: list[str] = app.state.background_writes
        if not pending:
            continue
        batch = sorted(set(pending))
        pending.clear()

        with contextlib.suppress(BatonError):
            await rt.db.write(_mark_used, batch)


def _mark_used(conn: Any, token_ids: list[str]) -> None:
    for token_id in token_ids:
        tenancy_store.mark_token_used(conn, token_id)
