"""Policy layers: server < project < flow < run; runs may only tighten unless an admin overrides."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.domain.errors import InvalidInputs, PolicyDenied
from baton.domain.policy import Policy, effective_policy, tighten


def test_an_empty_policy_still_gives_a_complete_snapshot() -> None:
    snapshot = effective_policy(None, None, None, None, run_may_loosen=False).to_json()
    assert set(snapshot) == {"effective", "layers", "overrides"}
    assert snapshot["effective"] == Policy().to_json()
    assert set(snapshot["layers"]) == {"server", "project", "flow", "run"}


def test_layers_tighten_in_order() -> None:
    snapshot = effective_policy(
        {"max_steps": 50, "allowed_engines": ["offline", "openai"]},
        {"read_only": True, "max_steps": 20},
        {"step_timeout_s": 60},
        {"max_steps": 10, "allowed_engines": ["offline"]},
        run_may_loosen=False,
    )
    effective = snapshot.effective
    assert effective.read_only and effective.max_steps == 10
    assert effective.allowed_engines == ("offline",)
    assert effective.step_timeout_s == 60


def test_a_run_request_may_not_loosen() -> None:
    with pytest.raises(PolicyDenied, match=r"read_only: true -> false"):
        effective_policy(None, {"read_only": True}, None, {"read_only": False}, run_may_loosen=False)


def test_an_admin_may_loosen_and_it_is_recorded() -> None:
    snapshot = effective_policy(None, {"read_only": True}, None, {"read_only": False}, run_may_loosen=True)
    assert snapshot.effective.read_only is False
    assert snapshot.overrides == ("admin override: read_only: true -> false",)


def test_bad_fields_are_named() -> None:
    with pytest.raises(InvalidInputs, match=r"'colour' is not a policy field.*max_steps must be a positive"):
        effective_policy(None, None, None, {"colour": "red", "max_steps": 0}, run_may_loosen=False)


def test_engine_families_are_allowed_by_prefix() -> None:
    policy = Policy(allowed_engines=("openai", "offline"))
    assert policy.allows_engine("openai:gpt-4o") and policy.allows_engine("offline")
    assert not policy.allows_engine("anthropic:claude")


layers = st.fixed_dictionaries(
    {},
    optional={
        "read_only": st.booleans(),
        "require_confirmation": st.booleans(),
        "max_steps": st.integers(1, 100),
        "step_timeout_s": st.floats(1, 1000),
    },
)


@given(layers, layers)
def test_tightening_never_loosens(first: dict[str, object], second: dict[str, object]) -> None:
    base = tighten(Policy(), first)
    after = tighten(base, second)
    assert after.read_only >= base.read_only
    assert after.require_confirmation >= base.require_confirmation
    if base.max_steps is not None:
        assert after.max_steps is not None and after.max_steps <= base.max_steps
