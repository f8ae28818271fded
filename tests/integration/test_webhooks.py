"""Webhook deliveries on real SQLite and PostgreSQL to a real HTTP receiver on loopback.

The receiver checks every request's signature the way docs/webhooks.md tells users to, answers
500 to the first N requests, and can hold a request open to play a hung endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from baton.config import WebhookSettings, webhook_settings_from_env
from baton.domain.errors import UsageError
from baton.domain.webhooks import RetryPolicy, verify_signature
from baton.engine.lifecycle import RunRequest
from baton.engine.webhooks import WebhookService
from baton.engine.worker import WorkerSettings
from baton.flows.catalog import Catalog
from baton.flows.spec import Flow
from baton.runtime import Runtime, open_runtime
from baton.store import tenancy
from baton.store import webhooks as store
from baton.store.clock import db_now
from baton.store.schema import webhook_deliveries

SECRET = "whsec_test_secret_0123456789"

#: quick retries for tests: the production schedule spreads attempts over a day
FAST = WebhookSettings(
    allow_private=True,
    timeout_s=1.0,
    retry=RetryPolicy(max_attempts=3, base_s=0.05, factor=2.0, max_age_s=60.0),
    poll_s=0.05,
)
FAST_ENV = {
    "BATON_WEBHOOKS_ALLOW_PRIVATE": "1",
    "BATON_WEBHOOKS_TIMEOUT_S": "1",
    "BATON_WEBHOOKS_MAX_ATTEMPTS": "3",
    "BATON_WEBHOOKS_RETRY_BASE_S": "0.05",
    "BATON_WEBHOOKS_POLL_S": "0.05",
}


# --- the receiver ---------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    signed: bool


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1: 500 for the first `fail_first` requests (all if None), then 200."""

    secret: str = SECRET
    fail_first: int | None = 0
    hang_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    in_flight: int = 0
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        signed = verify_signature(self.secret, handler.headers.get("Baton-Signature", ""), body, time.time())
        with self.lock:
            self.requests.append(Received(dict(handler.headers), body, signed))
            count = len(self.requests)
            self.in_flight += 1
        try:
            if self.hang_s:
                self.release.wait(self.hang_s)
            failing = self.fail_first is None or count <= self.fail_first
            handler.send_response(500 if failing else 200)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        finally:
            with self.lock:
                self.in_flight -= 1


@contextlib.contextmanager
def receiver(**kwargs: Any) -> Iterator[Receiver]:
    rec = Receiver(**kwargs)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec.handle(self)

        def log_message(self, *args: Any) -> None:
            pass

    rec.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.server.daemon_threads = True
    thread = threading.Thread(target=rec.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.release.set()
        rec.server.shutdown()
        rec.server.server_close()


# --- flows and helpers ----------------------------------------------------------------------------

quick = Flow("hook_quick")


@quick.step()
async def only(ctx: Any) -> str:
    return "done"


#: set by a test: the `waits` flow's step returns only once this says so
WAIT_FOR: list[Callable[[], bool]] = []
waits = Flow("hook_waits")


@waits.step()
async def until_told(ctx: Any) -> str:
    deadline = time.monotonic() + 20
    # Polled: the condition is set by the receiver's thread, not by this event loop.
    while WAIT_FOR and not WAIT_FOR[0]() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return "told"


CATALOG = Catalog([quick, waits])


@pytest.fixture(autouse=True)
def _fast_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers' own webhook services read the environment: make them as quick as `FAST`."""
    for name, value in FAST_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    async with open_runtime(database_url, catalog=CATALOG, upgrade=False) as runtime:
        await runtime.db.write(tenancy.create_project, "p1", "p1")
        await runtime.db.write(tenancy.create_project, "p2", "p2")
        yield runtime


async def add_webhook(rt: Runtime, url: str, types: list[str], project: str = "p1") -> str:
    # The dispatcher's cursor starts at the log's end on its first pass: take that pass first.
    await rt.db.write(store.dispatch_events)
    row = await rt.db.write(
        store.create_webhook, project_id=project, url=url, event_types=types, secret=SECRET
    )
    return str(row.id)


async def run_flow(rt: Runtime, flow: str, project: str = "p1") -> str:
    created = await rt.lifecycle.create_run(RunRequest(flow=flow, project_id=project, created_by="alice"))
    await asyncio.wait_for(rt.worker(WorkerSettings(lease_s=5)).run(until_idle=True), 30)
    return str(created["id"])


async def deliveries_when(
    rt: Runtime, webhook_id: str, done: Callable[[list[Any]], bool], settings: WebhookSettings = FAST
) -> list[Any]:
    """Poll the deliveries until `done` holds (deadline 15 s), running a service meanwhile."""
    service = asyncio.create_task(WebhookService(rt.db, settings).run_forever())
    try:
        deadline = time.monotonic() + 15
        while True:
            rows = await rt.db.read(store.list_deliveries, webhook_id)
            if done(rows):
                return rows
            assert time.monotonic() < deadline, (
                f"deliveries never got there: {[dict(r._mapping) for r in rows]}"
            )
            await asyncio.sleep(0.05)
    finally:
        service.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await service


def settled(rows: list[Any]) -> bool:
    return bool(rows) and all(r.status != store.PENDING for r in rows)


# --- tests ----------------------------------------------------------------------------------------


async def test_signed_delivery_is_retried_after_500s_then_succeeds(rt: Runtime) -> None:
    with receiver(fail_first=2) as rec:
        webhook_id = await add_webhook(rt, rec.url, ["run.succeeded"])
        run_id = await run_flow(rt, "hook_quick")
        rows = await deliveries_when(rt, webhook_id, settled)

    assert len(rows) == 1, "one subscribed event, one delivery"
    delivery = rows[0]
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 3, 200)
    assert delivery.event_type == "run.succeeded" and delivery.run_id == run_id
    assert len(rec.requests) == 3 and all(r.signed for r in rec.requests)
    assert {r.headers["Baton-Delivery"] for r in rec.requests} == {delivery.id}, "one id across retries"
    assert {r.headers["Baton-Event"] for r in rec.requests} == {"run.succeeded"}
    assert len({r.body for r in rec.requests}) == 1, "every retry sends the same bytes"
    assert f'"id":"{run_id}"'.encode() in rec.requests[0].body


async def test_a_receiver_that_always_fails_is_given_up_after_the_limit(rt: Runtime) -> None:
    with receiver(fail_first=None) as rec:
        webhook_id = await add_webhook(rt, rec.url, ["*"])
        await run_flow(rt, "hook_quick")
        rows = await deliveries_when(rt, webhook_id, settled)
        given_up = Counter(r.headers["Baton-Delivery"] for r in rec.requests)
        # Given up means given up: a service running on finds nothing more to send.
        async with httpx.AsyncClient() as http:
            assert await WebhookService(rt.db, FAST).deliver_due(http) == 0
        assert Counter(r.headers["Baton-Delivery"] for r in rec.requests) == given_up

    assert rows and {r.status for r in rows} == {"failed"}
    assert {r.attempts for r in rows} == {FAST.retry.max_attempts}
    assert {r.last_status_code for r in rows} == {500}
    assert all("answered 500" in (r.last_error or "") for r in rows)
    # An attempt cut off by the test worker's shutdown after its request left is sent again.
    assert set(given_up) == {r.id for r in rows}
    assert all(n >= FAST.retry.max_attempts for n in given_up.values())
    assert SECRET not in repr([dict(r._mapping) for r in rows]), "the secret is never recorded"


async def stop_service_mid_request(rt: Runtime, rec: Receiver, settings: WebhookSettings) -> None:
    """Run a delivery service until the receiver holds one of its requests, then stop it.

    A request counts once the receiver has it: one the run's own worker sent may still be held.
    """
    await rt.db.write(store.dispatch_events)
    before = len(rec.requests)
    service = asyncio.create_task(WebhookService(rt.db, settings).run_forever())
    try:
        deadline = time.monotonic() + 15
        while len(rec.requests) == before:
            assert time.monotonic() < deadline, "the service never sent the delivery"
            await asyncio.sleep(0.01)
    finally:
        service.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await service


async def test_a_stopping_service_records_an_attempt_answered_within_its_grace(rt: Runtime) -> None:
    with receiver(fail_first=None, hang_s=0.3) as rec:
        webhook_id = await add_webhook(rt, rec.url, ["run.succeeded"])
        await run_flow(rt, "hook_quick")
        await stop_service_mid_request(rt, rec, FAST)
        [row] = await rt.db.read(store.list_deliveries, webhook_id)
        answered = len(rec.requests)
    # Every request the receiver answered is an attempt on record: none is sent "for free".
    assert (row.status, row.last_status_code, row.lease_token) == (store.PENDING, 500, None)
    assert row.attempts == answered >= 1


async def test_a_stopping_service_hands_back_an_unanswered_attempt_uncounted(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_WEBHOOKS_TIMEOUT_S", "30")  # the run's own worker waits the same way
    patient = dataclasses.replace(FAST, timeout_s=30.0)  # grace of 2 s, then handed back
    with receiver(hang_s=30) as rec:
        webhook_id = await add_webhook(rt, rec.url, ["run.succeeded"])
        await run_flow(rt, "hook_quick")
        rec.requests.clear()  # whatever the run's own worker sent was handed back at its stop too
        started = time.monotonic()
        await stop_service_mid_request(rt, rec, patient)
        stopped_in = time.monotonic() - started
        [row] = await rt.db.read(store.list_deliveries, webhook_id)
        now = await rt.db.read(db_now)
    assert len(rec.requests) == 1 and stopped_in < 10
    assert (row.status, row.attempts, row.lease_token) == (store.PENDING, 0, None)
    assert row.next_attempt_at <= now, "handed back due now, for the next worker"


async def test_a_hung_receiver_does_not_hold_up_the_run(rt: Runtime) -> None:
    with receiver(hang_s=10) as rec:
        webhook_id = await add_webhook(rt, rec.url, ["run.started"])
        # The step ends only once the receiver holds run.started's request open: the run then
        # finishes while its webhook is still waiting for an answer.
        WAIT_FOR[:] = [lambda: rec.in_flight > 0]
        try:
            run_id = await run_flow(rt, "hook_waits")
        finally:
            WAIT_FOR.clear()
        run = await rt.lifecycle.get_run(run_id)
        assert run["status"] == "succeeded"
        assert rec.in_flight == 1, "the run finished while the delivery was still hanging"
        rows = await deliveries_when(rt, webhook_id, lambda rows: bool(rows) and bool(rows[0].last_error))
        rec.release.set()
    assert "no response within 1 s" in (rows[0].last_error or "")


async def test_a_target_that_now_resolves_to_loopback_is_refused_at_delivery(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BATON_WEBHOOKS_ALLOW_PRIVATE")  # the worker's own service is strict too
    with receiver() as rec:
        webhook_id = await add_webhook(rt, rec.url, ["run.succeeded"])  # allowed when made
        await run_flow(rt, "hook_quick")
        strict = WebhookSettings(allow_private=False, timeout_s=1.0, poll_s=0.05)
        rows = await deliveries_when(rt, webhook_id, settled, strict)
    assert rows[0].status == "failed" and not rec.requests
    assert "127.0.0.1 is a loopback address" in (rows[0].last_error or "")


async def dispatch_everything(rt: Runtime) -> None:
    """Dispatch until the cursor has passed every event: on PostgreSQL a pass stops at the oldest
    transaction still open anywhere on the server (another test's, say), so one pass may not do.
    `store.has_events_after` cannot tell: it looks below that same horizon, and says "nothing"
    while another test's transaction is open; this looks at the whole log."""
    deadline = time.monotonic() + 15
    while await rt.db.read(_events_past_the_cursor):
        assert time.monotonic() < deadline, "the dispatcher never caught up with the log"
        await rt.db.write(store.dispatch_events)
        await asyncio.sleep(0.02)


def _events_past_the_cursor(conn: Any) -> bool:
    from sqlalchemy import and_, or_, select

    from baton.store.events import parse_cursor
    from baton.store.schema import events

    position = store.dispatch_position(conn)
    if position is None:
        return True
    tx, event_id = parse_cursor(position)
    after = or_(events.c.tx > tx, and_(events.c.tx == tx, events.c.id > event_id))
    return conn.execute(select(events.c.id).where(after).limit(1)).first() is not None


async def test_the_dispatcher_makes_one_delivery_per_webhook_and_event(rt: Runtime) -> None:
    await run_flow(rt, "hook_quick")  # before any webhook: never delivered
    mine = await add_webhook(rt, "http://127.0.0.1:9/a", ["run.created", "run.succeeded"])
    everything = await add_webhook(rt, "http://127.0.0.1:9/b", ["*"])
    elsewhere = await add_webhook(rt, "http://127.0.0.1:9/c", ["*"], project="p2")
    run_id = await run_flow(rt, "hook_quick")
    await dispatch_everything(rt)
    # A log read again (a crash before the commit, two dispatchers) makes nothing twice, and
    # events from before a webhook existed stay undelivered.
    await rt.db.write(_rewind_to_start)
    await dispatch_everything(rt)

    def types(webhook_id: str) -> list[str]:
        return sorted(r.event_type for r in rows[webhook_id])

    rows = {w: await rt.db.read(store.list_deliveries, w) for w in (mine, everything, elsewhere)}
    assert types(mine) == ["run.created", "run.succeeded"]
    assert {r.run_id for r in rows[mine]} == {run_id}
    assert "run.started" in types(everything) and "step.delta" not in types(everything)
    assert len(types(everything)) == len(set(types(everything)))
    assert rows[elsewhere] == []


def _rewind_to_start(conn: Any) -> None:
    from sqlalchemy import update

    from baton.store.schema import webhook_cursors

    conn.execute(update(webhook_cursors).values(position="-1.0"))


async def test_finished_deliveries_are_pruned_after_the_retention_and_pending_ones_kept(rt: Runtime) -> None:
    webhook_id = await add_webhook(rt, "http://127.0.0.1:9/hook", ["*"])
    pings = [(await rt.db.write(store.add_ping, webhook_id, "p1")).id for _ in range(4)]
    day = 86400.0
    shapes = {  # status, ended (days ago); the pending one was made 40 days ago and never ended
        pings[0]: (store.SUCCEEDED, 40.0),
        pings[1]: (store.FAILED, 31.0),
        pings[2]: (store.SUCCEEDED, 29.0),
        pings[3]: (store.PENDING, None),
    }

    def age(conn: Any) -> None:
        now = db_now(conn)
        for delivery_id, (status, ended) in shapes.items():
            conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id)
                .values(
                    status=status,
                    created_at=now - 40 * day,
                    finished_at=None if ended is None else now - ended * day,
                )
            )

    await rt.db.write(age)
    service = WebhookService(rt.db, dataclasses.replace(FAST, keep_days=30))
    assert await service.prune_once() == 2
    left = {row.id for row in await rt.db.read(store.list_deliveries, webhook_id)}
    assert left == {pings[2], pings[3]}
    assert await service.prune_once() == 0


def test_the_retention_setting_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_WEBHOOKS_KEEP_DAYS", "7")
    assert webhook_settings_from_env().keep_days == 7
    monkeypatch.setenv("BATON_WEBHOOKS_KEEP_DAYS", "0")
    with pytest.raises(UsageError, match="BATON_WEBHOOKS_KEEP_DAYS must be a positive number of days"):
        webhook_settings_from_env()
    monkeypatch.setenv("BATON_WEBHOOKS_KEEP_DAYS", "a month")
    with pytest.raises(UsageError, match="BATON_WEBHOOKS_KEEP_DAYS must be a number"):
        webhook_settings_from_env()
