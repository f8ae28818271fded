"""The webhook service every worker runs: follow the event log into deliveries, then POST them, signed.

It never runs inside a run's transaction and a run never waits for it: a dispatcher reads the
committed event log behind a persisted cursor (`store.webhooks.dispatch_events`), and a delivery
loop claims due deliveries under a short lease and sends them concurrently, each bounded by a
timeout, recording every attempt and retrying failures with backoff until the policy gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from baton.config import WebhookSettings, webhook_settings_from_env
from baton.domain.errors import BatonError, InvalidInputs
from baton.domain.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    Target,
    is_success,
    next_attempt_in,
    parse_target,
    refusal,
    signature_header,
)
from baton.flows.catalog import Catalog
from baton.store import webhooks as store
from baton.store.database import Database

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

#: Resolves (host, port) to IP addresses; a seam for the address policy, not for tests' convenience.
Resolver = Callable[[str, int], Awaitable[list[str]]]

_MAX_ERROR_CHARS = 500
_DISPATCH_BATCH = 500
#: a woken dispatcher waits this long first, so a burst of events becomes one transaction
_DISPATCH_DEBOUNCE_S = 0.1
#: how long a stopping worker lets in-flight attempts finish before handing them back
_STOP_GRACE_S = 2.0
#: finished deliveries are pruned about this often (jittered, so that workers spread out), in batches
_PRUNE_EVERY_S = 3600.0
_PRUNE_BATCH = 1000


async def resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def check_target(url: str, *, allow_private: bool, resolver: Resolver = resolve) -> Target:
    """The URL's target if it may receive webhooks; InvalidInputs (422) with the reason otherwise."""
    target = parse_target(url)
    try:
        addresses = await resolver(target.host, target.port)
    except OSError as error:
        why = f"host {target.host} does not resolve ({error.strerror or error}); check the URL"
        raise InvalidInputs(why, [{"field": "url", "message": why}]) from None
    reason = refusal(target.host, addresses, allow_private=allow_private)
    if reason is not None:
        raise InvalidInputs(reason, [{"field": "url", "message": reason}])
    return target


def encode_body(body: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact, sorted keys, so every retry sends the same bytes."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str).encode()


class WebhookService:
    """One process's dispatcher and delivery loop; any number may run against one database."""

    def __init__(
        self,
        db: Database,
        settings: WebhookSettings | None = None,
        *,
        resolver: Resolver = resolve,
        concurrency: int = 16,
    ) -> None:
        self.db = db
        self.settings = settings or webhook_settings_from_env()
        self.resolver = resolver
        self.concurrency = concurrency
        #: how long a claimed attempt is ours: the request's own budget and then some
        self.lease_s = self.settings.timeout_s + 5.0

    async def run_forever(self) -> None:
        http = _ClientOnFirstUse(self._http)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._dispatch_forever(), name="baton-webhook-dispatch")
                group.create_task(self._deliver_forever(http), name="baton-webhook-deliver")
                group.create_task(self._prune_forever(), name="baton-webhook-prune")
        finally:
            await http.aclose()

    def _http(self) -> httpx.AsyncClient:
        import httpx

        # No redirects (a 3xx could point anywhere, past the address check) and no proxies from
        # the environment (the address check is about where the request goes).
        return httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=httpx.Timeout(self.settings.timeout_s)
        )

    # --- the dispatcher --------------------------------------------------------------------------

    async def dispatch_once(self) -> int:
        """Move the cursor over what has been logged since; returns how many deliveries were made."""
        made = 0
        if not await self.db.read(store.any_active):
            return made
        while True:
            position = await self.db.read(store.dispatch_position)
            if not await self.db.read(store.has_events_after, position):
                return made
            moved = await self.db.write(store.dispatch_events, _DISPATCH_BATCH)
            made += moved
            if (await self.db.read(store.dispatch_position)) == position:
                return made  # nothing visible yet (PostgreSQL horizon), or another dispatcher has it

    async def _dispatch_forever(self) -> None:
        topics = ["runs"]
        while True:
            since = self.db.topics.version(topics)
            try:
                await self.dispatch_once()
            except Exception as error:  # logged and retried: a service that dies stops its worker
                logger.warning(
                    "webhook dispatch failed: %s", error, extra={"action": "webhook.dispatch_failed"}
                )
            await self.db.wait(topics, self.settings.poll_s, since=since)
            await asyncio.sleep(_DISPATCH_DEBOUNCE_S)

    # --- the delivery loop ------------------------------------------------------------------------

    async def deliver_due(self, http: httpx.AsyncClient | _ClientOnFirstUse) -> int:
        """Claim what is due (up to the free slots) and send it all; returns how many were attempted."""
        claimed = await self.db.write(store.claim_due, self.lease_s, self.concurrency)
        await asyncio.gather(*(self._attempt(http, row) for row in claimed))
        return len(claimed)

    async def _deliver_forever(self, http: httpx.AsyncClient | _ClientOnFirstUse) -> None:
        in_flight: dict[asyncio.Task[None], Any] = {}
        topics = [store.WEBHOOKS_TOPIC]
        try:
            while True:
                since = self.db.topics.version(topics)
                free = self.concurrency - len(in_flight)
                claimed: list[Any] = []
                if free > 0:
                    try:
                        claimed = await self._claim(free)
                    except Exception as error:  # logged and retried, like the dispatcher's
                        logger.warning(
                            "webhook claim failed: %s", error, extra={"action": "webhook.claim_failed"}
                        )
                for row in claimed:
                    task = asyncio.create_task(self._attempt(http, row), name=f"baton-webhook-{row.id}")
                    in_flight[task] = row
                    task.add_done_callback(lambda done: in_flight.pop(done, None))
                if claimed and len(claimed) == free:
                    continue  # there may be more due right now
                timeout = self.settings.poll_s
                with contextlib.suppress(BatonError):
                    due = await self.db.read(store.next_due_in)
                    if due is not None:
                        timeout = min(timeout, max(due, 0.01))
                waiter = asyncio.create_task(self.db.wait(topics, timeout, since=since))
                try:
                    await asyncio.wait({waiter, *in_flight}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
        finally:
            # The worker is stopping. Attempts about to get their answer get a moment to record it
            # (an answered attempt is counted); the rest are handed back, due now and not counted,
            # rather than left leased. One that did settle no longer matches its token.
            stopped = dict(in_flight)
            if stopped:
                await asyncio.wait(stopped, timeout=min(self.settings.timeout_s, _STOP_GRACE_S))
            for task in stopped:
                task.cancel()
            await asyncio.gather(*stopped, return_exceptions=True)
            for row in stopped.values():
                with contextlib.suppress(BatonError):
                    await self.db.write(store.release, row.id, row.lease_token)

    # --- retention -------------------------------------------------------------------------------

    async def prune_once(self) -> int:
        """Delete the deliveries that ended more than `keep_days` ago; returns how many."""
        pruned = 0
        while True:
            batch = await self.db.write(store.prune_finished, self.settings.keep_days * 86400.0, _PRUNE_BATCH)
            pruned += batch
            if batch < _PRUNE_BATCH:
                return pruned

    async def _prune_forever(self) -> None:
        # Not at start-up: a worker that starts and stops often should not pay for it each time.
        while True:
            await asyncio.sleep(_PRUNE_EVERY_S * (0.5 + random.random()))
            try:
                pruned = await self.prune_once()
            except Exception as error:  # logged and tried again later: a service that dies stops its worker
                logger.warning(
                    "webhook delivery pruning failed: %s", error, extra={"action": "webhook.prune_failed"}
                )
                continue
            if pruned:
                logger.info(
                    "deleted %d webhook deliveries older than %g days",
                    pruned,
                    self.settings.keep_days,
                    extra={"action": "webhook.pruned"},
                )

    async def _claim(self, limit: int) -> list[Any]:
        """Claim due deliveries; if the worker stops meanwhile, the claimed ones are handed back."""
        claim = asyncio.ensure_future(self.db.write(store.claim_due, self.lease_s, limit))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                for row in await claim:
                    await self.db.write(store.release, row.id, row.lease_token)
            raise

    async def _attempt(self, http: httpx.AsyncClient | _ClientOnFirstUse, row: Any) -> None:
        """One POST of one delivery, then its outcome recorded; never raises (a service must not die)."""
        status_code: int | None = None
        error: str | None = None
        permanent = False
        try:
            status_code, error, permanent = await asyncio.wait_for(
                self._post(http, row), timeout=self.settings.timeout_s + 1.0
            )
        except TimeoutError:
            error = f"no response within {self.settings.timeout_s:g} s"
        except Exception as exc:  # a delivery's failure is recorded, never allowed to stop the loop
            error = f"{type(exc).__name__}: {exc}"
        if status_code is not None and is_success(status_code):
            status, retry_in = store.SUCCEEDED, None
        else:
            if error is None:
                error = f"the receiver answered {status_code}"
            age = float(row.last_attempt_at) - float(row.created_at)
            retry_in = (
                None
                if permanent
                else next_attempt_in(self.settings.retry, int(row.attempts), age, random.random())
            )
            status = store.FAILED if retry_in is None else store.PENDING
        error = None if error is None else error[:_MAX_ERROR_CHARS]
        # Once there is an outcome it is recorded even if the service is stopped meanwhile: an
        # answered attempt must count, or a receiver would see more requests than attempts.
        settling = asyncio.ensure_future(
            self.db.write(
                store.settle,
                row.id,
                row.lease_token,
                status=status,
                status_code=status_code,
                error=error,
                retry_in=retry_in,
            )
        )
        try:
            kept = await asyncio.shield(settling)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await settling
            raise
        except BatonError as exc:
            logger.warning(
                "webhook delivery %s: could not record the attempt: %s",
                row.id,
                exc,
                extra={"action": "webhook.settle_failed", "delivery_id": row.id},
            )
            return
        logger.info(
            "webhook delivery %s (%s) attempt %s: %s",
            row.id,
            row.event_type,
            row.attempts,
            status if kept else "lease lost, result dropped",
            extra={
                "action": f"webhook.{status}" if kept else "webhook.stale_result",
                "delivery_id": row.id,
                "webhook_id": row.webhook_id,
                "attempt": row.attempts,
                "status_code": status_code,
            },
        )

    async def _post(
        self, http: httpx.AsyncClient | _ClientOnFirstUse, row: Any
    ) -> tuple[int | None, str | None, bool]:
        """(status code, error, permanent): the address is checked again now, since DNS can change."""
        import httpx

        target = parse_target(row.url)
        try:
            addresses = await self.resolver(target.host, target.port)
        except OSError as exc:
            return None, f"host {target.host} does not resolve: {exc.strerror or exc}", False
        reason = refusal(target.host, addresses, allow_private=self.settings.allow_private)
        if reason is not None:
            return None, f"refused: {reason}", True
        body = encode_body(dict(row.body))
        url = httpx.URL(row.url)
        host_header = url.netloc.decode("ascii")
        # Connect to the address just checked, not to whatever a second lookup would say
        # (DNS rebinding); Host and TLS SNI/verification still use the name.
        pinned = url.copy_with(host=addresses[0])
        headers = {
            "Host": host_header,
            "Content-Type": "application/json",
            "User-Agent": "Baton-Webhooks/1",
            SIGNATURE_HEADER: signature_header(row.secret, int(time.time()), body),
            EVENT_HEADER: str(row.event_type),
            DELIVERY_HEADER: str(row.id),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            async with http.stream(
                "POST", pinned, content=body, headers=headers, extensions=extensions
            ) as resp:
                return resp.status_code, None, False
        except httpx.TimeoutException:
            return None, f"no response within {self.settings.timeout_s:g} s", False
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, False


class _ClientOnFirstUse:
    """The HTTP client, made for the first delivery: a worker whose projects have no webhook
    never imports httpx (about 45 ms of a `baton run`'s start-up, bench/startup.py)."""

    def __init__(self, make: Callable[[], httpx.AsyncClient]) -> None:
        self._make = make
        self._client: httpx.AsyncClient | None = None

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            self._client = self._make()
        return self._client.stream(*args, **kwargs)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


async def run_webhooks_forever(db: Database, catalog: Catalog) -> None:
    """The background service: settings from BATON_WEBHOOKS_* (see config.WebhookSettings)."""
    del catalog  # webhooks do not depend on flows
    try:
        settings = webhook_settings_from_env()
    except BatonError as error:
        logger.error("webhooks are off: %s", error, extra={"action": "webhook.misconfigured"})
        await asyncio.Event().wait()
        return
    await WebhookService(db, settings).run_forever()
