"""The pure rules of transition idempotency keys: which key a request carries, and what replays."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.api.routes.runs import one_key
from baton.domain.errors import InvalidInputs
from baton.engine.lifecycle import keyed, replays

keys = st.text(min_size=1, max_size=20)


@given(keys)
def test_a_key_given_once_or_twice_alike_is_that_key(key: str) -> None:
    assert one_key(key, None) == one_key(None, key) == one_key(key, key) == key
    assert one_key(None, None) is None


def test_two_different_keys_are_refused_naming_both() -> None:
    with pytest.raises(InvalidInputs, match=r"'a'.*'b'.*differ"):
        one_key("a", "b")


@given(keys, st.lists(st.one_of(st.none(), keys), max_size=4))
def test_a_transition_replays_only_for_a_key_recorded_in_its_events(
    key: str, recorded: list[str | None]
) -> None:
    payloads = [{"by": "x"} | keyed(k) for k in recorded]
    assert replays(payloads, key) == (key in recorded)
    assert not replays(payloads, None) and not replays(payloads, "")
    assert keyed(None) == keyed("") == {}
