"""The in-memory window of recent events never serves a range it does not hold contiguously."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.store.recent_events import (
    NOTIFY_PAYLOAD_MAX,
    RecentEvent,
    RecentEvents,
    decode_from_notify,
    encode_for_notify,
)


def _event(run: str, seq: int) -> RecentEvent:
    return RecentEvent(run, seq, "log", None, None, {"n": seq}, float(seq))


def _seqs(found: list[RecentEvent] | None) -> list[int] | None:
    return None if found is None else [e.seq for e in found]


def test_a_contiguous_run_is_served_from_any_point_inside_it() -> None:
    recent = RecentEvents()
    recent.publish([_event("r", 1), _event("r", 2)])
    recent.publish([_event("r", 3)])
    assert _seqs(recent.after("r", 0, 10)) == [1, 2, 3]
    assert _seqs(recent.after("r", 1, 1)) == [2]
    assert recent.after("r", 3, 10) is None  # nothing newer here: the store may have more
    assert recent.after("other", 0, 10) is None


def test_a_gap_starts_the_window_again() -> None:
    recent = RecentEvents()
    recent.publish([_event("r", 1), _event("r", 2)])
    recent.publish([_event("r", 4)])  # seq 3 was written by another process
    assert recent.after("r", 2, 10) is None
    assert _seqs(recent.after("r", 3, 10)) == [4]
    assert recent.after("r", 0, 10) is None


def test_out_of_order_commits_never_serve_a_hole() -> None:
    recent = RecentEvents()
    recent.publish([_event("r", 1)])
    recent.publish([_event("r", 3)])
    recent.publish([_event("r", 2)])
    assert recent.after("r", 0, 10) is None
    assert _seqs(recent.after("r", 1, 10)) == [2]


def test_the_window_and_the_total_are_bounded() -> None:
    recent = RecentEvents(per_run=10, total=25)
    recent.publish([_event("a", s) for s in range(1, 31)])
    assert recent.after("a", 0, 100) is None
    assert _seqs(recent.after("a", 29, 100)) == [30]
    kept = _seqs(recent.after("a", 30 - 5, 100))
    assert kept == [26, 27, 28, 29, 30]
    recent.publish([_event("b", s) for s in range(1, 11)])
    recent.publish([_event("c", s) for s in range(1, 11)])
    recent.publish([_event("d", s) for s in range(1, 11)])
    assert recent.after("a", 29, 10) is None  # the least recent run went first
    assert _seqs(recent.after("d", 9, 10)) == [10]


publishes = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 40), st.integers(1, 4)), max_size=30
)


@given(publishes, st.sampled_from(["a", "b"]), st.integers(0, 45), st.integers(1, 10))
def test_whatever_is_served_is_contiguous_and_was_published(
    batches: list[tuple[str, int, int]], run: str, after: int, limit: int
) -> None:
    recent = RecentEvents(per_run=8, total=12)
    published: set[tuple[str, int]] = set()
    for run_id, start, count in batches:
        recent.publish([_event(run_id, s) for s in range(start, start + count)])
        published.update((run_id, s) for s in range(start, start + count))
    found = recent.after(run, after, limit)
    if found is None:
        return
    assert [e.seq for e in found] == list(range(after + 1, after + 1 + len(found)))
    assert 1 <= len(found) <= limit
    assert all((run, e.seq) in published and e.run_id == run for e in found)


def test_an_event_heard_back_from_a_notification_is_not_a_gap() -> None:
    recent = RecentEvents()
    recent.publish([_event("r", 1), _event("r", 2)])
    recent.publish([_event("r", 2)])  # this process's own commit, heard again by NOTIFY
    recent.publish([_event("r", 3)])
    assert _seqs(recent.after("r", 0, 10)) == [1, 2, 3]


def test_events_survive_the_notification_payload_unchanged() -> None:
    sent = [
        RecentEvent(
            "r", 7, "log", "speak", 2, {"message": 'é «q» "x" \\ ✓\n', "n": [1, 2.5, None]}, 1.7e9 + 0.123456
        ),
        RecentEvent("r", 8, "run.succeeded", None, None, {}, 1.7e9 + 0.5),
        RecentEvent("other", 3, "log", None, None, {}, 1.7e9),
    ]
    payloads = encode_for_notify(sent)
    assert len(payloads) == 1 and payloads[0].isascii()
    assert decode_from_notify(payloads[0]) == (sent, {"r": 8, "other": 3})


def test_what_does_not_fit_a_notification_is_sent_as_its_extent_only() -> None:
    big = RecentEvent("r", 1, "step.delta", "s", 1, {"text": "x" * NOTIFY_PAYLOAD_MAX}, 1.0)
    odd = RecentEvent("r", 2, "log", None, None, {"bad": object()}, 1.0)
    assert [decode_from_notify(p) for p in encode_for_notify([big, odd])] == [([], {"r": 2})]
    assert encode_for_notify([]) == []
    with pytest.raises(ValueError, match="not an events notification"):
        decode_from_notify("run:r runs")


_runs = st.sampled_from(["r", "run_01a21ec4f02d925422a1a7", "x" * 40])


# At most 6 bytes of JSON a character (BMP escapes): every event fits a notification alone.
@given(st.lists(st.tuples(_runs, st.text(st.characters(max_codepoint=0xFFFF), max_size=1200)), max_size=40))
def test_a_transaction_is_split_into_notifications_that_fit_and_lose_nothing(
    made: list[tuple[str, str]],
) -> None:
    sent = [
        RecentEvent(run, i + 1, "log", None, None, {"message": t}, float(i))
        for i, (run, t) in enumerate(made)
    ]
    payloads = encode_for_notify(sent)
    assert all(len(p.encode()) <= NOTIFY_PAYLOAD_MAX for p in payloads)
    heard: list[RecentEvent] = []
    through: dict[str, int] = {}
    for payload in payloads:
        events, extent = decode_from_notify(payload)
        heard += events
        for run, seq in extent.items():
            through[run] = max(through.get(run, 0), seq)
    assert heard == sent, "events of this size always fit one notification each"
    expected: dict[str, int] = {}
    for event in sent:
        expected[event.run_id] = event.seq
    assert through == expected


def test_a_stream_caught_up_with_a_known_frontier_is_told_nothing_is_newer() -> None:
    recent = RecentEvents()
    recent.publish([_event("r", 1), _event("r", 2)])
    assert recent.after("r", 2, 10) is None, "without a frontier, caught up means: read the store"
    recent.track_frontier = True
    recent.publish([_event("r", 3)])
    assert recent.after("r", 3, 10) == []
    assert recent.after("r", 3, 10, frontier=False) is None  # a caller not woken checks the store
    recent.heard_through("r", 5)  # another process committed up to 5; those events are not here
    assert recent.after("r", 3, 10) is None
    recent.publish([_event("r", 4), _event("r", 5)])
    assert _seqs(recent.after("r", 3, 10)) == [4, 5]
    assert recent.after("r", 5, 10) == []
    recent.frontier_unknown("r")
    assert recent.after("r", 5, 10) is None
    recent.publish([_event("r", 6)])
    assert recent.after("r", 6, 10) == []
    recent.forget_frontiers()
    assert recent.after("r", 6, 10) is None


def test_a_frontier_goes_with_its_window() -> None:
    """Frontiers are kept only for runs with a window: they are bounded as the windows are."""
    recent = RecentEvents(per_run=10, total=5)
    recent.track_frontier = True
    recent.publish([_event("a", 1)])
    recent.publish([_event("b", s) for s in range(1, 7)])  # over the total: "a" is dropped
    recent.heard_through("a", 9)
    recent.heard_through("never-seen", 3)
    assert set(recent._through) == {"b"}
    assert recent.after("a", 1, 10) is None
