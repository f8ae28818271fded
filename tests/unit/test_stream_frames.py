"""The run stream's fast frame encoder writes exactly the bytes of the EventOut model's frame."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sse_starlette import ServerSentEvent

from baton.api.convert import event_out
from baton.api.stream import _encode

_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text()
_json = st.recursive(
    _scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)

rows = st.builds(
    SimpleNamespace,
    payload=st.none() | st.dictionaries(st.text(max_size=8), _json, max_size=4),
    step_key=st.none() | st.text(min_size=1, max_size=10),
    attempt=st.none() | st.integers(0, 10),
    type=st.sampled_from(["log", "step.delta", "run.succeeded"]),
    seq=st.integers(1, 2**40),
    created_at=st.floats(0, 4_000_000_000, allow_nan=False),
    run_id=st.text(min_size=1, max_size=30),
)


@given(rows)
def test_fast_frame_equals_the_model_frame(row: Any) -> None:
    expected = ServerSentEvent(event_out(row).model_dump_json(), id=str(row.seq)).encode()
    assert _encode(row) == expected
