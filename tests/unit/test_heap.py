"""baton.heap: start-up's objects leave the collector's scans; full collections become rarer."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from baton import heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_startup_objects_are_frozen_and_full_collections_spaced_out() -> None:
    built_at_startup = [{"n": i} for i in range(1000)]
    young, middle, _ = gc.get_threshold()
    heap.freeze_startup_objects()
    assert gc.get_freeze_count() >= len(built_at_startup)
    assert not any(gc.is_tracked(o) and o is built_at_startup for o in gc.get_objects(2))
    assert gc.get_threshold() == (young, middle, heap.FULL_COLLECTION_EVERY)
