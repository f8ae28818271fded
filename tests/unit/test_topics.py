"""In-process wake-ups: a wait ends on a notify or its timeout, and never swallows a cancellation."""

from __future__ import annotations

import asyncio

import pytest

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
