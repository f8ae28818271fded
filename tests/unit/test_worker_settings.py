"""Worker settings: the heartbeat leaves room for lost beats before a lease expires (lease >= 4 x beat)."""

from __future__ import annotations

import pytest

from baton.engine.worker import WorkerSettings


def test_the_default_heartbeat_is_a_quarter_of_the_lease() -> None:
    assert WorkerSettings(lease_s=30).heartbeat_s == 7.5


def test_an_explicit_heartbeat_within_the_bound_is_kept() -> None:
    assert WorkerSettings(lease_s=3, heartbeat=0.5).heartbeat_s == 0.5
    assert WorkerSettings(lease_s=2, heartbeat=0.5).heartbeat_s == 0.5


@pytest.mark.parametrize("heartbeat", [1.0, 0.0, -1.0])
def test_a_heartbeat_too_slow_for_the_lease_is_refused_at_startup(heartbeat: float) -> None:
    with pytest.raises(ValueError, match=r"at least 4 x the heartbeat"):
        WorkerSettings(lease_s=3, heartbeat=heartbeat)
