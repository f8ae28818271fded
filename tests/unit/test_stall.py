"""Stalled-run detection is a pure judgement over the latest signs of life."""

from __future__ import annotations

from baton.domain.status import RunStatus
from baton.engine.scheduler import is_stalled


def test_a_running_run_with_a_recent_heartbeat_is_not_stalled() -> None:
    assert not is_stalled(RunStatus.RUNNING, [100.0, None, 150.0], now=200.0, stall_after_s=120)


def test_a_running_run_silent_past_the_threshold_is_stalled() -> None:
    assert is_stalled(RunStatus.RUNNING, [10.0, None], now=200.0, stall_after_s=120)
    assert is_stalled(RunStatus.RUNNING, [None], now=200.0)


def test_only_running_runs_stall() -> None:
    for status in RunStatus:
        if status is not RunStatus.RUNNING:
            assert not is_stalled(status, [], now=1e9)
