"""Schedules: create, pause, resume and delete them; the background service that fires the due ones.

Every worker (the API server's in-process one included) runs `run_forever`: each tick it fires
the due schedules of the flows it has loaded, one transaction per fire. That transaction locks
the schedule row, creates the run through the lifecycle's own creation path (policy snapshot,
confirmation, events, concurrency admission like any run) with the idempotency key
`schedule:<id>:<fire time>`, and moves the schedule's next fire time on. Several workers on
PostgreSQL never make two runs for one fire: the row lock (SKIP LOCKED) hands each due schedule
to one worker, and the unique idempotency key refuses a second run even if that ever failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row

from baton.domain import schedules as timing
from baton.domain.errors import BatonError, NotFound, UsageError
from baton.domain.ids import new_id
from baton.domain.policy import parse_layer
from baton.engine.lifecycle import Lifecycle, RunRequest
from baton.flows.catalog import Catalog
from baton.flows.inputs import validate_inputs
from baton.store import schedules as schedule_store
from baton.store import tenancy as tenancy_store
from baton.store.clock import db_now
from baton.store.database import Database

logger = logging.getLogger(__name__)

#: seconds between a worker's looks for due schedules (BATON_SCHEDULE_TICK_S)
DEFAULT_TICK_S = 1.0
#: a fire later than this is missed, and its schedule's `missed` policy applies (BATON_SCHEDULE_GRACE_S)
DEFAULT_GRACE_S = 30.0
#: fires made per tick at most, so one worker's catching up cannot starve its other duties
FIRES_PER_TICK = 100


@dataclass(frozen=True)
class ScheduleRequest:
    """Everything a caller may say when creating a schedule."""

    flow: str
    cron: str | None = None
    timezone: str = "UTC"
    interval_s: float | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    project_id: str | None = None
    created_by: str | None = None
    title: str = ""
    band: str | None = None
    policy: Mapping[str, Any] | None = None
    missed: str = "skip"
    auto_confirm: bool = True
    paused: bool = False


def timing_of(row: Row[Any] | Mapping[str, Any]) -> timing.Timing:
    data = row._mapping if isinstance(row, Row) else row
    return timing.Timing(cron=data["cron"], timezone=data["timezone"], interval_s=data["interval_s"])


def schedule_view(row: Row[Any]) -> dict[str, Any]:
    """The row as a dict, with `next_fires`: the next fire times (none while paused)."""
    data = dict(row._mapping)
    nxt = data.get("next_fire_at")
    data["next_fires"] = (
        [] if nxt is None else timing.upcoming(timing_of(data), nxt, anchor=nxt, count=timing.UPCOMING)
    )
    return data


class Schedules:
    """The operations people perform on schedules, over one database and flow catalog."""

    def __init__(self, db: Database, catalog: Catalog) -> None:
        self.db = db
        self.catalog = catalog

    async def create(self, request: ScheduleRequest) -> dict[str, Any]:
        """Validate everything a fire will need, then insert the schedule; its first fire is ahead."""
        flow = self.catalog.get(request.flow)
        inputs = validate_inputs(flow.input_schema, request.inputs, flow=flow.name)
        flow.steps_for_band(request.band)
        when = timing.parse_timing(request.cron, request.timezone, request.interval_s)
        missed = timing.parse_missed(request.missed)
        policy = parse_layer(request.policy, layer="run") if request.policy is not None else None
        schedule_id = new_id("sch")

        def body(conn: Connection) -> dict[str, Any]:
            if request.project_id is not None and tenancy_store.get_project(conn, request.project_id) is None:
                raise NotFound(f"project {request.project_id} not found")
            now = db_now(conn)
            row = schedule_store.insert_schedule(
                conn,
                {
                    "id": schedule_id,
                    "project_id": request.project_id,
                    "created_by": request.created_by,
                    "flow": flow.name,
                    "inputs": inputs,
                    "title": request.title,
                    "band": request.band,
                    "policy": policy,
                    "cron": when.cron,
                    "timezone": when.timezone,
                    "interval_s": when.interval_s,
                    "missed": missed,
                    "auto_confirm": request.auto_confirm,
                    "next_fire_at": None if request.paused else timing.first_fire(when, now),
                    "paused_at": now if request.paused else None,
                },
            )
            logger.info(
                "Schedule %s created (%s)",
                schedule_id,
                when.describe(),
                extra={"action": "schedule.created", "schedule_id": schedule_id, "flow": flow.name},
            )
            return schedule_view(row)

        return await self.db.write(body)

    async def get(self, schedule_id: str) -> dict[str, Any]:
        row = await self.db.read(schedule_store.get_schedule, schedule_id)
        if row is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return schedule_view(row)

    async def list(self, *, project_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        rows = await self.db.read(schedule_store.list_schedules, project_id=project_id, limit=limit)
        return [schedule_view(r) for r in rows]

    async def pause(self, schedule_id: str) -> dict[str, Any]:
        """Stop firing; pausing a paused schedule changes nothing."""

        def body(conn: Connection) -> dict[str, Any]:
            row = self._get(conn, schedule_id)
            if row.paused_at is not None:
                return schedule_view(row)
            paused = schedule_store.update_schedule(
                conn, schedule_id, paused_at=db_now(conn), next_fire_at=None
            )
            assert paused is not None  # the row is ours: it was read in this transaction
            logger.info("Schedule %s paused", schedule_id, extra={"action": "schedule.paused"})
            return schedule_view(paused)

        return await self.db.write(body)

    async def resume(self, schedule_id: str) -> dict[str, Any]:
        """Fire again from now on: the fires that fell while paused are not made up."""

        def body(conn: Connection) -> dict[str, Any]:
            row = self._get(conn, schedule_id)
            if row.paused_at is None:
                return schedule_view(row)
            first = timing.first_fire(timing_of(row), db_now(conn))
            resumed = schedule_store.update_schedule(conn, schedule_id, paused_at=None, next_fire_at=first)
            assert resumed is not None  # the row is ours: it was read in this transaction
            logger.info("Schedule %s resumed", schedule_id, extra={"action": "schedule.resumed"})
            return schedule_view(resumed)

        return await self.db.write(body)

    async def delete(self, schedule_id: str) -> dict[str, Any]:
        """Delete it; the runs it made stay and still name it. Returns the schedule as it was."""

        def body(conn: Connection) -> dict[str, Any]:
            row = self._get(conn, schedule_id)
            schedule_store.delete_schedule(conn, schedule_id)
            logger.info("Schedule %s deleted", schedule_id, extra={"action": "schedule.deleted"})
            view = schedule_view(row)
            view["next_fire_at"], view["next_fires"] = None, []
            return view

        return await self.db.write(body)

    @staticmethod
    def _get(conn: Connection, schedule_id: str) -> Row[Any]:
        row = schedule_store.get_schedule(conn, schedule_id)
        if row is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return row


# --- firing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fired:
    """What one fire transaction did."""

    schedule_id: str
    fire_at: float | None
    run_id: str | None
    next_fire_at: float
    error: str | None = None
    missed_from: float | None = None
    missed_until: float | None = None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ScheduleFirer:
    """Fires due schedules of the flows in its catalog, one transaction per fire."""

    def __init__(self, lifecycle: Lifecycle, *, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.lifecycle = lifecycle
        self.db = lifecycle.db
        self.grace_s = grace_s
        self.names = lifecycle.catalog.names()

    async def fire_due(self, limit: int = FIRES_PER_TICK) -> list[Fired]:
        """Fire until nothing is due (or `limit` fires); returns what each transaction did."""
        done: list[Fired] = []
        if not await self.db.read(schedule_store.any_due, self.names):
            return done
        while len(done) < limit:
            fired = await self.db.write(self._fire_one)
            if fired is None:
                break
            done.append(fired)
            self._log(fired)
        return done

    def _fire_one(self, conn: Connection) -> Fired | None:
        now = db_now(conn)
        row = schedule_store.lock_next_due(conn, now, self.names)
        if row is None:
            return None
        decision = timing.decide_fire(
            timing_of(row),
            row.next_fire_at,
            now,
            missed=timing.parse_missed(row.missed),
            grace_s=self.grace_s,
        )
        assert decision is not None  # the query only returns due schedules
        fields: dict[str, Any] = {"next_fire_at": decision.next_fire_at}
        run_id = error = None
        if decision.fire_at is not None:
            source: dict[str, Any] = {
                "kind": "schedule",
                "schedule_id": row.id,
                "fire_at": _iso(decision.fire_at),
            }
            if decision.missed_from is not None and decision.missed_until is not None:
                source["missed_from"] = _iso(decision.missed_from)
                source["missed_until"] = _iso(decision.missed_until)
            request = RunRequest(
                flow=row.flow,
                inputs=row.inputs or {},
                project_id=row.project_id,
                created_by=row.created_by,
                title=row.title or "",
                band=row.band,
                source=source,
                idempotency_key=timing.fire_key(row.id, decision.fire_at),
                confirm=bool(row.auto_confirm),
                policy=row.policy,
                schedule_id=row.id,
            )
            try:
                # A savepoint: a fire refused half-way (by policy, say) leaves no trace but its error.
                with conn.begin_nested():
                    snapshot = self.lifecycle.run_creation(request)(conn)
                run_id = str(snapshot["id"])
                fields.update(last_run_id=run_id, last_error=None, fires=row.fires + 1)
            except UsageError as refused:
                # The fire is spent, not retried every tick: the error stays on the schedule.
                error = f"the fire at {_iso(decision.fire_at)} made no run: {refused.message}"
                fields["last_error"] = error
            fields["last_fire_at"] = decision.fire_at
        schedule_store.update_schedule(conn, row.id, **fields)
        return Fired(
            schedule_id=row.id,
            fire_at=decision.fire_at,
            run_id=run_id,
            next_fire_at=decision.next_fire_at,
            error=error,
            missed_from=decision.missed_from,
            missed_until=decision.missed_until,
        )

    @staticmethod
    def _log(fired: Fired) -> None:
        extra = {"schedule_id": fired.schedule_id, "run_id": fired.run_id}
        if fired.missed_from is not None:
            logger.warning(
                "Schedule %s missed its fires from %s to %s (%s)",
                fired.schedule_id,
                _iso(fired.missed_from),
                _iso(fired.missed_until or fired.missed_from),
                "one run made for them" if fired.run_id else "skipped",
                extra={"action": "schedule.missed", **extra},
            )
        if fired.error is not None:
            logger.warning(
                "Schedule %s: %s",
                fired.schedule_id,
                fired.error,
                extra={"action": "schedule.failed", **extra},
            )
        elif fired.run_id is not None:
            logger.info(
                "Schedule %s fired run %s",
                fired.schedule_id,
                fired.run_id,
                extra={"action": "schedule.fired", **extra},
            )


def _seconds_from_env(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value >= minimum:
        raise UsageError(f"{name} must be at least {minimum:g} s, got {raw!r}")
    return value


def _server_policy_from_env() -> dict[str, Any] | None:
    """The server layer of the policy, as `baton serve` reads it (BATON_SERVER_POLICY)."""
    raw = os.environ.get("BATON_SERVER_POLICY")
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise UsageError(f"BATON_SERVER_POLICY is not valid JSON: {error}") from error
    return dict(value) if isinstance(value, dict) else None


async def run_forever(db: Database, catalog: Catalog) -> None:
    """The background service: every tick, fire the due schedules; errors are logged, never fatal.

    A bad BATON_SCHEDULE_TICK_S, BATON_SCHEDULE_GRACE_S or BATON_SERVER_POLICY stops the worker at
    start (with the variable named), rather than firing schedules under the wrong settings.
    """
    tick_s = _seconds_from_env("BATON_SCHEDULE_TICK_S", DEFAULT_TICK_S, 0.01)
    grace_s = _seconds_from_env("BATON_SCHEDULE_GRACE_S", DEFAULT_GRACE_S, 0.0)
    firer = ScheduleFirer(Lifecycle(db, catalog, _server_policy_from_env()), grace_s=grace_s)
    while True:
        try:
            await firer.fire_due()
        except BatonError as error:
            logger.warning("schedule pass failed: %s", error, extra={"action": "schedule.pass_failed"})
        except Exception:
            logger.exception("schedule pass crashed", extra={"action": "schedule.pass_failed"})
        await asyncio.sleep(tick_s)
