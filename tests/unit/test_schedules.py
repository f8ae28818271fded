"""Schedule timing: validation, next fire times (intervals, cron in time zones, DST), fire decisions."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.domain.schedules import (
    InvalidSchedule,
    Timing,
    decide_fire,
    fire_key,
    first_fire,
    next_after,
    parse_missed,
    parse_timing,
    upcoming,
)

T0 = datetime(2026, 3, 27, 12, 0, tzinfo=UTC).timestamp()
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"]
CRONS = [
    "* * * * *",
    "*/15 * * * *",
    "30 2 * * *",
    "0 9 * * MON-FRI",
    "0 0 1 * *",
    "45 23 * * SUN",
    "@hourly",
]

instants = st.floats(min_value=T0 - 5 * 366 * 86400, max_value=T0 + 5 * 366 * 86400, allow_nan=False)
intervals = st.floats(min_value=1.0, max_value=7 * 86400.0, allow_nan=False)


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "zone", "interval", "field", "words"),
    [
        (None, None, None, "cron", "exactly one of cron"),
        ("* * * * *", None, 60.0, "cron, interval_s", "exactly one of cron"),
        (None, None, 0.5, "interval_s", "at least 1 second"),
        (None, None, float("inf"), "interval_s", "at least 1 second"),
        (None, None, 400 * 86400.0, "interval_s", "at most"),
        ("* * *", None, None, "cron", "five-field"),
        ("* * * * * *", None, None, "cron", "five-field"),
        ("61 * * * *", None, None, "cron", "not a valid cron expression"),
        ("0 0 30 2 *", None, None, "cron", "not a valid cron expression"),
        ("* * * * *", "Mars/Olympus", None, "timezone", "IANA time zone"),
        ("* * * * *", "../../etc/passwd", None, "timezone", "IANA time zone"),
        ("* * * * *", "Europe/" + "x" * 300, None, "timezone", "IANA time zone"),
    ],
)
def test_bad_timing_is_refused_naming_the_field(
    cron: str | None, zone: str | None, interval: float | None, field: str, words: str
) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse_timing(cron, zone, interval)
    assert caught.value.field == field
    assert words in caught.value.message
    assert caught.value.problems == [{"field": field, "message": caught.value.message.split(": ", 1)[1]}]


def test_aliases_and_spacing_are_normalised() -> None:
    assert parse_timing("@daily", None, None) == Timing(cron="0 0 * * *", timezone="UTC")
    assert parse_timing("  0   9 * * MON-FRI ", "Europe/Paris", None).cron == "0 9 * * MON-FRI"
    assert parse_timing(None, None, 5).interval_s == 5.0


def test_missed_policy_is_checked() -> None:
    assert parse_missed("run_once") == "run_once"
    with pytest.raises(InvalidSchedule, match="skip, run_once"):
        parse_missed("catch_up")


# --- next fire times ----------------------------------------------------------------------------


def test_cron_is_read_in_its_time_zone_across_daylight_saving() -> None:
    timing = parse_timing("30 2 * * *", "Europe/Paris", None)
    fires = upcoming(timing, utc("2026-03-27T12:00:00"), anchor=0.0, count=4)
    # 02:30 does not exist on 29 March in Paris (clocks go 02:00 -> 03:00): it runs at 03:00 local.
    assert fires == [
        utc("2026-03-28T01:30:00"),
        utc("2026-03-29T01:00:00"),
        utc("2026-03-30T00:30:00"),
        utc("2026-03-31T00:30:00"),
    ]


def test_weekday_cron_skips_the_weekend() -> None:
    timing = parse_timing("0 9 * * MON-FRI", "America/New_York", None)
    fires = upcoming(timing, utc("2026-03-27T12:00:00"), anchor=0.0, count=2)  # a Friday, 08:00 in NY
    local = [datetime.fromtimestamp(f, ZoneInfo("America/New_York")) for f in fires]
    assert [(d.strftime("%a"), d.hour, d.minute) for d in local] == [("Fri", 9, 0), ("Mon", 9, 0)]


@settings(max_examples=200, deadline=None)
@given(instant=instants, anchor=instants, interval=intervals)
def test_interval_fires_on_its_grid_right_after_the_instant(
    instant: float, anchor: float, interval: float
) -> None:
    fire = next_after(Timing(interval_s=interval), instant, anchor=anchor)
    assert fire is not None
    assert instant < fire <= instant + interval * (1 + 1e-9) + 1e-6
    steps = (fire - anchor) / interval
    assert abs(steps - round(steps)) < 1e-6


@settings(max_examples=60, deadline=None)
@given(instant=instants, cron=st.sampled_from(CRONS), zone=st.sampled_from(ZONES))
def test_cron_fires_are_increasing_whole_minutes_that_match(instant: float, cron: str, zone: str) -> None:
    timing = parse_timing(cron, zone, None)
    fires = upcoming(timing, instant, anchor=0.0, count=5)
    assert len(fires) == 5
    assert fires[0] >= instant - 1e-6
    assert all(a < b for a, b in itertools.pairwise(fires))
    for fire in fires:
        assert fire % 60 == 0  # every zone here is offset by whole minutes
    if cron == "*/15 * * * *":
        assert all(b - a <= 15 * 60 for a, b in itertools.pairwise(fires))


def test_a_new_schedule_starts_ahead() -> None:
    assert first_fire(Timing(interval_s=10), T0) == T0 + 10
    assert first_fire(parse_timing("@hourly", None, None), T0 + 1) == T0 + 3600


# --- fire decisions -----------------------------------------------------------------------------


def test_nothing_is_due_before_the_fire_time() -> None:
    assert decide_fire(Timing(interval_s=60), T0 + 1, T0, missed="skip", grace_s=30) is None


def test_an_on_time_fire_makes_its_run_and_moves_one_step() -> None:
    decision = decide_fire(Timing(interval_s=60), T0 - 2, T0, missed="skip", grace_s=30)
    assert decision is not None
    assert (decision.fire_at, decision.next_fire_at, decision.missed_from) == (T0 - 2, T0 + 58, None)


@pytest.mark.parametrize("missed", ["skip", "run_once"])
def test_missed_fires_follow_the_policy(missed: str) -> None:
    # Fires at T0-9000, -5400, -1800 came and went with no worker; the next is T0+1800.
    decision = decide_fire(Timing(interval_s=3600), T0 - 9000, T0, missed=missed, grace_s=30)  # type: ignore[arg-type]
    assert decision is not None
    assert decision.next_fire_at == T0 + 1800
    assert (decision.missed_from, decision.missed_until) == (T0 - 9000, T0 - 1800)
    assert decision.fire_at == (T0 - 9000 if missed == "run_once" else None)


def test_a_cron_outage_resumes_at_the_first_fire_still_on_time() -> None:
    timing = parse_timing("*/15 * * * *", "UTC", None)
    decision = decide_fire(
        timing, utc("2026-03-27T09:00:00"), utc("2026-03-27T12:05:00"), missed="skip", grace_s=30
    )
    assert decision is not None
    assert decision.next_fire_at == utc("2026-03-27T12:15:00")
    assert decision.missed_until == utc("2026-03-27T12:00:00")


@settings(max_examples=300, deadline=None)
@given(
    interval=st.floats(min_value=1.0, max_value=600.0),
    behind=st.floats(min_value=0.0, max_value=50_000.0),
    grace=st.floats(min_value=0.0, max_value=120.0),
    missed=st.sampled_from(["skip", "run_once"]),
)
def test_firing_until_nothing_is_due_makes_each_fire_at_most_once(
    interval: float, behind: float, grace: float, missed: str
) -> None:
    """Decide again and again as the service does: fires strictly increase, none is late but one
    `run_once` run, none is in the future, and the schedule ends up ahead of now."""
    now = T0
    state = now - behind
    timing = Timing(interval_s=interval)
    fires: list[float] = []
    missed_runs = 0
    for _ in range(10_000):
        decision = decide_fire(timing, state, now, missed=missed, grace_s=grace)  # type: ignore[arg-type]
        if decision is None:
            break
        assert decision.next_fire_at > state
        if decision.fire_at is not None:
            assert decision.fire_at <= now
            if decision.missed_from is not None:
                missed_runs += 1
            else:
                assert decision.fire_at >= now - grace
            fires.append(decision.fire_at)
        state = decision.next_fire_at
    else:
        raise AssertionError("the decisions never caught up with now")
    assert state > now
    assert fires == sorted(set(fires))
    assert missed_runs <= (1 if missed == "run_once" else 0)
    on_time = [f for f in fires if f >= now - grace]
    # (+2, not +1: at epoch magnitudes, `now - grace` rounds to a neighbouring fire time.)
    assert len(on_time) <= grace / interval + 2


def test_fire_keys_name_the_schedule_and_the_instant() -> None:
    assert fire_key("sch_1", utc("2026-03-27T09:00:00")) == "schedule:sch_1:2026-03-27T09:00:00.000Z"
    assert fire_key("sch_1", T0) != fire_key("sch_1", T0 + 1)
    assert fire_key("sch_1", T0) != fire_key("sch_2", T0)
