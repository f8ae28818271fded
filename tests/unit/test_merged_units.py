"""Which queued writes a group commits as one call (`database._merged_units`)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from baton.store.database import _Batch, _merged_units


def _fn(conn: Any, items: list[Any]) -> list[Any]:
    return items


def _other(conn: Any, items: list[Any]) -> list[Any]:
    return items


def _batch(run: str, fn: Any = _fn) -> _Batch:
    return _Batch((run, fn), fn, run)


def test_writes_of_one_key_form_one_unit_at_the_first_ones_place() -> None:
    writes = [None, _batch("r1"), _batch("r2"), None, _batch("r1"), _batch("r1", _other), _batch("r2")]
    assert _merged_units(writes) == [[0], [1, 4], [2, 6], [3], [5]]


def test_a_group_without_batched_writes_is_one_unit_per_write() -> None:
    assert _merged_units([None, None, None]) == [[0], [1], [2]]


@given(st.lists(st.one_of(st.none(), st.sampled_from(["r1", "r2", "r3"])), max_size=30))
def test_every_write_is_in_exactly_one_unit_of_writes_alike(runs: list[str | None]) -> None:
    writes = [None if run is None else _batch(run) for run in runs]
    units = _merged_units(writes)
    assert sorted(index for unit in units for index in unit) == list(range(len(writes)))
    for unit in units:
        assert unit == sorted(unit)
        keys = {None if writes[i] is None else writes[i].key for i in unit}  # type: ignore[union-attr]
        assert len(keys) == 1
        assert len(unit) == 1 or None not in keys
    # Units are in the order of their first write; writes alike are all in one unit.
    assert [unit[0] for unit in units] == sorted(unit[0] for unit in units)
    assert len({writes[unit[0]].key for unit in units if writes[unit[0]] is not None}) == len(  # type: ignore[union-attr]
        [unit for unit in units if writes[unit[0]] is not None]
    )
