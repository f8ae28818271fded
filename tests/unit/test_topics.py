"""In-process wake-ups: a wait ends on a notify or its timeout, and never swallows a cancellation."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.store.database import Topics


async def test_a_notify_wakes_the_waiter_and_a_quiet_topic_times_out() -> None:
    topics = Topics()
    waiting = asyncio.create_task(topics.wait(["runs"], 30))
    await asyncio.sleep(0)
    topics.notify(["runs"])
    assert await waiting is True
    assert await topics.wait(["runs"], 0.01) is False
    assert topics._waiters == {}, "a finished wait leaves nothing registered"


async def test_a_notify_between_look_and_wait_returns_at_once() -> None:
    topics = Topics()
    seen = topics.version(["steps"])
    topics.notify(["steps"])
    assert await asyncio.wait_for(topics.wait(["steps"], 30, since=seen), 1) is True


async def test_a_cancellation_landing_with_a_notify_is_not_lost() -> None:
    """Python 3.11's wait_for returned the result here and dropped the cancel: a worker's service
    loop then never stopped, and neither did the worker waiting for it."""
    topics = Topics()
    waiting = asyncio.create_task(topics.wait(["runs"], 30))
    await asyncio.sleep(0)
    topics.notify(["runs"])
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


def test_topics_stay_bounded_and_a_forgotten_topic_never_hides_a_change() -> None:
    topics = Topics(keep=100)
    seen = topics.version(["run:watched"])
    topics.notify(["run:watched"])
    for i in range(1_000):  # a thousand runs come and go
        topics.notify([f"run:{i}"])
    assert len(topics._changed) <= 200
    assert "run:watched" not in topics._changed
    assert topics.version(["run:watched"]) != seen, "the change before the topic was forgotten is seen"
    quiet = topics.version(["run:watched"])
    topics.notify(["run:other"])
    assert topics.version(["run:watched"]) == quiet, "another topic's change is not this one's"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["look", "notify"]), st.sets(st.sampled_from("abcdefgh*"), min_size=1)),
        max_size=60,
    )
)
def test_a_change_after_a_look_is_always_seen(script: list[tuple[str, set[str]]]) -> None:
    """Whatever is forgotten meanwhile, a notify of a looked-at topic after the look changes its version."""
    topics = Topics(keep=2)
    looks: list[tuple[set[str], int, bool]] = []  # topics looked at, version seen, changed since
    for action, names in script:
        if action == "look":
            looks.append((names, topics.version(names), False))
        else:
            topics.notify(names)
            looks = [(ts, v, changed or bool(ts & names) or "*" in names) for ts, v, changed in looks]
        assert len(topics._changed) <= 4
    for names, seen, changed in looks:
        if changed:
            assert topics.version(names) != seen
