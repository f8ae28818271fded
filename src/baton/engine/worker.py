"""The worker: claim ready steps into free slots, run them, heartbeat their leases, reap the dead."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from baton import redaction
from baton.agents.command import sweep_orphans
from baton.domain.errors import BatonError, StoreUnavailable
from baton.domain.ids import new_worker_id
from baton.engine import background, metrics, step_results
from baton.engine.execution import StepExecution
from baton.engine.streamed_output import StreamedOutput
from baton.failpoints import failpoint
from baton.flows.catalog import Catalog
from baton.store import steps as step_store
from baton.store import workers as worker_store
from baton.store.database import Database

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int = 8
    lease_s: float = 30.0
    poll_s: float = 1.0
    reaper_s: float = 5.0
    #: How long a stopping worker lets in-flight steps finish before cancelling them.
    drain_s: float = 10.0
    #: How often leases are extended; None: a quarter of the lease (the most the lease allows).
    heartbeat: float | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.lease_s <= 0 or self.poll_s <= 0 or self.reaper_s <= 0:
            raise ValueError("lease_s, poll_s and reaper_s must be positive")
        if self.heartbeat is not None and not 0 < self.heartbeat * 4 <= self.lease_s:
            # Three heartbeats may be lost (a busy machine, a slow commit) before a lease expires.
            raise ValueError(
                f"the lease ({self.lease_s:g} s) must be at least 4 x the heartbeat ({self.heartbeat:g} s): "
                "lengthen the lease or heartbeat more often"
            )

    @property
    def heartbeat_s(self) -> float:
        return self.heartbeat if self.heartbeat is not None else self.lease_s / 4


class Worker:
    """Runs steps of the flows in its catalog. `run(until_idle=True)` returns once nothing is left."""

    def __init__(self, db: Database, catalog: Catalog, settings: WorkerSettings | None = None) -> None:
        # A step's traceback in the log must not carry a key the step held (baton.redaction).
        redaction.install_log_redaction()
        self.db = db
        self.catalog = catalog
        self.flows = catalog.as_mapping()
        self.settings = settings or WorkerSettings()
        self.id = new_worker_id()
        self.logger = logger.getChild(self.id.replace(".", "_"))
        self.in_flight: dict[str, StepExecution] = {}
        #: writes what every running step streams, all of them in one transaction per flush
        self.output = StreamedOutput(db)
        self._stop = asyncio.Event()
        self._side: list[asyncio.Task[None]] = []
        self._names = catalog.names()
        self.steps_run = 0
        self._until_idle = False
        #: Whether the last claim got as many steps as it had free slots (so more may be ready).
        self._capped = True

    def stop(self) -> None:
        """Stop claiming; in-flight steps get `drain_s` to finish. Safe to call from the loop's thread."""
        self._stop.set()
        self.db.topics.notify([f"worker:{self.id}"])
        # Wake the claim loop now rather than at its next poll.
        self.db.topics.notify([f"worker:{self.id}"])

    async def run(self, *, until_idle: bool = False) -> None:
        self._until_idle = until_idle
        await self.db.write(worker_store.register_worker, self.id, self.settings.concurrency)
        await self.reconcile()
        self._side = [
            asyncio.create_task(self._heartbeat_forever(), name="baton-heartbeat"),
            asyncio.create_task(self._reap_forever(), name="baton-reaper"),
        ]
        self._side += [
            asyncio.create_task(service.run_forever(self.db, self.catalog), name=f"baton-{service.name}")
            for service in background.background_services()
        ]
        side = self._side
        try:
            while not await self._claim_until_outage(until_idle):
                # The database is down or restarting (RELIABILITY.md R7): the worker stays, and claims
                # again once it is back; the heartbeat fences in-flight steps if it outlasts the lease.
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.poll_s):
                        await self._stop.wait()
        finally:
            for task in side:
                task.cancel()
            for task in side:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._drain()
            await self.output.close()
            with contextlib.suppress(BatonError):
                await self.db.write(worker_store.mark_stopped, self.id)

    async def reconcile(self) -> None:
        """On start: requeue steps whose worker died, then move on runs left without work."""
        await self.db.write(step_results.reap, self.flows)
        await self.db.write(step_results.repair_running_runs, self.flows)

    # --- the claim loop ---------------------------------------------------------------------

    async def _claim_until_outage(self, until_idle: bool) -> bool:
        """The claim loop; False when it stopped because the database could not be reached."""
        try:
            await self._claim_loop(until_idle)
        except StoreUnavailable as error:
            self.logger.warning("claim loop paused: %s", error, extra={"action": "worker.store_unavailable"})
            return False
        return True

    async def _claim_loop(self, until_idle: bool) -> None:
        names = self._names
        wake_on = ["steps", "cancel", f"worker:{self.id}"]
        cancels_seen = self.db.topics.version(["cancel"])
        last_cancel_check = time.monotonic()
        while not self._stop.is_set():
            self._raise_if_side_task_died()
            # Taken before claiming: whatever is queued or freed while we claim wakes the wait below
            # at once, so a claim that came back short needs no second, empty claim.
            seen = self.db.topics.version(wake_on)
            free = self.settings.concurrency - len(self.in_flight)
            claimed: list[Any] = []
            if free > 0:
                started = time.perf_counter()
                claimed = await self.db.write_short(
                    step_results.claim_with_events, self.id, self.settings.lease_s, free, names
                )
                metrics.CLAIM_SECONDS.observe(time.perf_counter() - started)
                if claimed:
                    failpoint("after_claim_commit")
                self._capped = len(claimed) >= free
                for row in claimed:
                    self._start(row)
                if self._capped and len(self.in_flight) < self.settings.concurrency:
                    continue  # a slot freed while we claimed, and more steps may be ready
            timeout = self.settings.poll_s
            if until_idle and not self.in_flight:
                upcoming = await self.db.read(_seconds_until_next_step)
                if upcoming is None:
                    return
                timeout = min(timeout, max(upcoming, 0.001))
            woken = await self.db.wait(wake_on, timeout, since=seen)
            if not self.in_flight:
                continue
            # Look for cancel requests when told of one, and at least once per poll interval (other
            # SQLite processes cannot tell us); not after every wake-up of a busy worker.
            cancels_now = self.db.topics.version(["cancel"])
            if (
                not woken
                or cancels_now != cancels_seen
                or time.monotonic() - last_cancel_check >= self.settings.poll_s
            ):
                cancels_seen, last_cancel_check = cancels_now, time.monotonic()
                await self._check_cancels()

    def _start(self, row: Any) -> None:
        execution = StepExecution(self.db, self.flows, row, self.flows[row.flow])
        # The step's own slot frees as it ends: it may claim one successor on the way out,
        # unless the worker is stopping by then.
        execution.claim_next = self._claim_next
        execution.handoff = self._adopt
        if self.db.dialect.name == "postgresql":
            execution.output = self.output
        execution.task = asyncio.create_task(execution.run(), name=f"baton-step-{row.key}")
        self.in_flight[row.lease_token] = execution
        token: str = row.lease_token
        execution.task.add_done_callback(lambda _task: self._finished(token))

    def _claim_next(self) -> step_results.ClaimNext | None:
        if self._stop.is_set():
            return None
        return step_results.ClaimNext(self.id, self.settings.lease_s, 1, self._names)

    def _adopt(self, rows: list[Any]) -> None:
        for row in rows:
            self._start(row)

    def _finished(self, token: str) -> None:
        execution = self.in_flight.pop(token, None)
        self.steps_run += 1
        if execution is not None and execution.task is not None and not execution.task.cancelled():
            error = execution.task.exception()
            if error is not None:
                self.logger.error("step task crashed: %r", error, extra={"action": "worker.task_crashed"})
        if self._capped or (self._until_idle and not self.in_flight):
            # A freed slot matters when the last claim was capped by free slots (more work may be
            # waiting), or to a worker that stops when idle; new work wakes the loop via "steps".
            self.db.topics.notify([f"worker:{self.id}"])

    async def _check_cancels(self) -> None:
        runs = [e.claim.run_id for e in self.in_flight.values()]
        cancelled = await self.db.read(step_store.cancel_requested_runs, runs)
        for execution in list(self.in_flight.values()):
            if execution.claim.run_id in cancelled:
                execution.cancel(reason="run cancelled")

    # --- side tasks -------------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        # When the last heartbeat that committed began: every lease it extended runs at least until
        # then + lease on the database clock, and may be reclaimed by another worker after that.
        held_since = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            tokens = list(self.in_flight)
            began = time.monotonic()
            try:
                held = await self._beat_within_lease(tokens, held_since)
                held_since = began
            except BatonError as error:
                self.logger.warning(
                    "heartbeat failed: %s", error, extra={"action": "worker.heartbeat_failed"}
                )
                if time.monotonic() - held_since > self.settings.lease_s:
                    self._fence_all("heartbeat failing")
                continue
            held_tokens, cancelled_runs = held
            for token in tokens:
                current = self.in_flight.get(token)
                if current is None:
                    continue
                if token not in held_tokens:
                    current.cancel(lost=True)
                elif current.claim.run_id in cancelled_runs:
                    current.cancel(reason="run cancelled")

    async def _beat_within_lease(self, tokens: list[str], held_since: float) -> tuple[set[str], set[str]]:
        """One heartbeat; if it has not committed by the time our leases run out, stop every step first.

        A heartbeat stuck behind a network partition or a frozen process raises nothing; without
        this bound the worker would go on running steps the reaper has handed to another worker.
        """
        write = asyncio.ensure_future(self.db.write(_heartbeat, self.id, tokens, self.settings.lease_s))
        left = held_since + self.settings.lease_s - time.monotonic()
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the worker's own stop.
            async with asyncio.timeout(max(left, 0.0)):
                return await asyncio.shield(write)
        except TimeoutError:
            self._fence_all("no heartbeat committed within the lease")
            return await write

    def _fence_all(self, why: str) -> None:
        """Our leases have surely expired: stop the work someone else may own by now."""
        if self.in_flight:
            self.logger.warning(
                "%s: stopping %d in-flight step(s)",
                why,
                len(self.in_flight),
                extra={"action": "worker.fenced"},
            )
        for stale in list(self.in_flight.values()):
            stale.cancel(lost=True)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_s)
            try:
                await self.db.write(step_results.reap, self.flows)
            except BatonError as error:
                self.logger.warning("reaper pass failed: %s", error, extra={"action": "worker.reap_failed"})
            # Agent grandchildren of a SIGKILLed worker on this host outlive its parent-death signal.
            if killed := await asyncio.to_thread(sweep_orphans):
                self.logger.warning(
                    "killed %d orphaned agent processes", killed, extra={"action": "worker.orphans"}
                )

    def _raise_if_side_task_died(self) -> None:
        """A worker whose heartbeat or reaper died must stop loudly, not run steps unguarded."""
        for task in self._side:
            if task.done():
                error = None if task.cancelled() else task.exception()
                raise RuntimeError(f"worker side task {task.get_name()} stopped: {error!r}")

    async def _drain(self) -> None:
        # A step that ends while we drain may hand off a successor it claimed in its own
        # transaction: that one is in flight too, so look again until nothing is left.
        deadline = time.monotonic() + self.settings.drain_s
        while self.in_flight and (left := deadline - time.monotonic()) > 0:
            tasks = [e.task for e in self.in_flight.values() if e.task is not None]
            await asyncio.wait(tasks, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        for _round in range(3):
            pending = [e.task for e in self.in_flight.values() if e.task is not None and not e.task.done()]
            if not pending:
                return
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=5)


def _heartbeat(
    conn: Connection, worker_id: str, tokens: list[str], lease_s: float
) -> tuple[set[str], set[str]]:
    held = step_store.extend_leases(conn, worker_id, tokens, lease_s)
    worker_store.beat(conn, worker_id, len(tokens))
    cancelled = step_store.cancel_requested_runs(conn, [r.run_id for r in held])
    if tokens:
        failpoint("in_heartbeat")
    return {r.lease_token for r in held}, cancelled


def _seconds_until_next_step(conn: Connection) -> float | None:
    from baton.store.clock import db_now

    upcoming = step_store.next_available_at(conn)
    if upcoming is None:
        return None
    return upcoming - db_now(conn)
