"""Schedule timing, pure: check a cron expression + IANA zone or an interval, list fires, decide a fire.

Times are UTC epoch seconds (floats), like every timestamp in the store. A cron expression is
read in its schedule's time zone by cronsim, which handles daylight-saving changes the way Debian
cron does (a 02:30 job on a spring-forward day runs at 03:00; on a fall-back day it runs once).
An interval schedule fires on a grid: its first fire time plus whole multiples of the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from baton.domain.errors import InvalidInputs

MissedPolicy = Literal["skip", "run_once"]
MISSED_POLICIES: tuple[MissedPolicy, ...] = ("skip", "run_once")
#: the shortest interval a schedule may have, in seconds
MIN_INTERVAL_S = 1.0
#: the longest interval, a year: past it a cron expression says what is meant better
MAX_INTERVAL_S = 366 * 86400.0
#: how many fire times an API answer lists
UPCOMING = 5

#: the usual shorthands, as their five fields
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class InvalidSchedule(InvalidInputs):
    """The schedule's timing or settings are not valid."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", [{"field": field, "message": message}])
        self.field = field


@dataclass(frozen=True, kw_only=True, slots=True)
class Timing:
    """When a schedule fires: a cron expression in a time zone, or a fixed interval."""

    cron: str | None = None
    timezone: str = "UTC"
    interval_s: float | None = None

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.timezone})"
        return f"every {self.interval_s:g} s"


def parse_timing(cron: str | None, timezone: str | None, interval_s: float | None) -> Timing:
    """Check the timing of a schedule: exactly one of `cron` and `interval_s`; a known time zone.

    Raises InvalidSchedule naming the field, what is wrong and how to write it instead.
    """
    if (cron is None) == (interval_s is None):
        field = "cron" if cron is None else "cron, interval_s"
        raise InvalidSchedule(
            field,
            "give exactly one of cron (a five-field expression such as '0 9 * * MON-FRI') "
            "or interval_s (seconds between fires)",
        )
    zone = (timezone or "UTC").strip()
    _zone(zone)
    if interval_s is not None:
        if not math.isfinite(interval_s) or interval_s < MIN_INTERVAL_S:
            raise InvalidSchedule(
                "interval_s", f"must be at least {MIN_INTERVAL_S:g} second, got {interval_s}"
            )
        if interval_s > MAX_INTERVAL_S:
            raise InvalidSchedule(
                "interval_s", f"must be at most {MAX_INTERVAL_S:g} s (a year); use cron for rarer schedules"
            )
        return Timing(interval_s=float(interval_s), timezone=zone)
    assert cron is not None
    expression = " ".join(cron.split())
    expression = ALIASES.get(expression.lower(), expression)
    if len(expression.split()) != 5:
        raise InvalidSchedule(
            "cron",
            f"{cron!r} is not a five-field cron expression (minute hour day-of-month month day-of-week, "
            "for example '*/15 * * * *'); for sub-minute schedules use interval_s",
        )
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except (CronSimError, ValueError) as error:
        raise InvalidSchedule(
            "cron", f"{cron!r} is not a valid cron expression ({error}); for example '0 9 * * MON-FRI'"
        ) from None
    timing = Timing(cron=expression, timezone=zone)
    if next_after(timing, 0.0, anchor=0.0) is None:
        raise InvalidSchedule("cron", f"{cron!r} never fires")
    return timing


def _zone(name: str) -> ZoneInfo:
    try:
        if len(name) > 64:  # no IANA name is that long, and the column holds 64
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name the file system refuses
        raise InvalidSchedule(
            "timezone", f"{name!r} is not a known IANA time zone; use a name such as 'UTC' or 'Europe/Paris'"
        ) from None


def next_after(timing: Timing, instant: float, *, anchor: float) -> float | None:
    """The first fire time strictly after `instant`.

    An interval fires at `anchor + k * interval_s` for whole k; a cron expression at its matching
    minutes in its time zone. None only for a cron expression that never matches again.
    """
    if timing.interval_s is not None:
        step = timing.interval_s
        k = math.floor((instant - anchor) / step) + 1
        fire = anchor + k * step
        # Float rounding may land a hair on the wrong side of `instant`.
        while fire <= instant:
            k += 1
            fire = anchor + k * step
        while anchor + (k - 1) * step > instant:
            k -= 1
            fire = anchor + k * step
        return fire
    assert timing.cron is not None
    start = datetime.fromtimestamp(instant, UTC).astimezone(_zone(timing.timezone))
    try:
        return next(iter(CronSim(timing.cron, start))).timestamp()
    except (StopIteration, OverflowError, ValueError):
        return None


def upcoming(timing: Timing, instant: float, *, anchor: float, count: int = UPCOMING) -> list[float]:
    """The next `count` fire times at or after `instant`, in order."""
    found: list[float] = []
    at = instant - 1e-6
    while len(found) < count:
        fire = next_after(timing, at, anchor=anchor)
        if fire is None:
            break
        found.append(fire)
        at = fire
    return found


def first_fire(timing: Timing, now: float) -> float:
    """Where a new (or resumed) schedule starts: an interval one `interval_s` from now."""
    if timing.interval_s is not None:
        return now + timing.interval_s
    fire = next_after(timing, now, anchor=now)
    if fire is None:  # parse_timing refuses expressions that never fire
        raise InvalidSchedule("cron", f"{timing.cron!r} never fires again")
    return fire


@dataclass(frozen=True, kw_only=True, slots=True)
class FireDecision:
    """What a due schedule does now: fire one run (or not) and where its next fire time moves."""

    #: the fire time the run is made for (its idempotency key), None to make no run
    fire_at: float | None
    #: the schedule's next fire time after this decision
    next_fire_at: float
    #: the first and last fire time that came and went with no worker to fire them (late by over the grace)
    missed_from: float | None = None
    missed_until: float | None = None


def decide_fire(
    timing: Timing, next_fire_at: float, now: float, *, missed: MissedPolicy, grace_s: float
) -> FireDecision | None:
    """Decide one fire of a schedule whose stored next fire time is `next_fire_at`; None if not due.

    A fire at most `grace_s` late is on time and fires its own run (fires that fall due while a
    worker was briefly busy are caught up one by one). Fires later than that were missed, as when
    no worker ran; the schedule's policy decides: `skip` drops them all and fires only what is
    still on time or in the future, `run_once` makes one run for all of them, keyed by the first.
    Either way the next fire time moves past every missed fire, so a decision is never repeated.
    """
    if next_fire_at > now:
        return None
    horizon = now - grace_s
    if next_fire_at >= horizon:
        following = next_after(timing, next_fire_at, anchor=next_fire_at)
        return FireDecision(fire_at=next_fire_at, next_fire_at=_or_far(following, now))
    # The first fire that is still on time (or in the future) is where the schedule resumes.
    # (Never the missed fire itself, however close to the horizon rounding puts it.)
    resume = next_after(timing, max(horizon - 1e-6, next_fire_at), anchor=next_fire_at)
    resume = _or_far(resume, now)
    last_missed = _last_before(timing, next_fire_at, resume)
    return FireDecision(
        fire_at=next_fire_at if missed == "run_once" else None,
        next_fire_at=resume,
        missed_from=next_fire_at,
        missed_until=last_missed,
    )


def _last_before(timing: Timing, first: float, bound: float) -> float:
    """The last fire time before `bound`, starting from `first` (which is before it)."""
    if timing.interval_s is not None:
        k = max(0, math.ceil((bound - first) / timing.interval_s) - 1)
        return first + k * timing.interval_s
    # A cron schedule is walked forward; a long outage of a per-minute schedule is capped, and
    # the answer is then only "at least this late" - it is shown, never acted on.
    last = first
    for _ in range(10_000):
        fire = next_after(timing, last, anchor=first)
        if fire is None or fire >= bound:
            break
        last = fire
    return last


def _or_far(fire: float | None, now: float) -> float:
    """A cron that never matches again parks the schedule a century away rather than firing."""
    return fire if fire is not None else now + 100 * 366 * 86400.0


def fire_key(schedule_id: str, fire_at: float) -> str:
    """The idempotency key of the run made for one fire: two workers firing it make one run."""
    stamp = datetime.fromtimestamp(fire_at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"schedule:{schedule_id}:{stamp}"


def parse_missed(value: str) -> MissedPolicy:
    if value not in MISSED_POLICIES:
        raise InvalidSchedule("missed", f"{value!r} is not one of {', '.join(MISSED_POLICIES)}")
    return cast(MissedPolicy, value)
