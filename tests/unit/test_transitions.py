"""The transition tables: what may move where, and the error when it may not."""

from __future__ import annotations

import pickle

import pytest

from baton.domain.errors import IllegalTransition
from baton.domain.status import RunStatus, StepStatus
from baton.domain.transitions import (
    RUN_TRANSITIONS,
    STEP_TRANSITIONS,
    check_run_transition,
    run_sources,
    step_sources,
)

R = RunStatus
S = StepStatus


def test_every_status_has_a_row() -> None:
    assert set(RUN_TRANSITIONS) == set(RunStatus)
    assert set(STEP_TRANSITIONS) == set(StepStatus)


@pytest.mark.parametrize("status", [R.SUCCEEDED, R.CANCELLED])
def test_final_run_statuses_have_no_exits(status: RunStatus) -> None:
    assert RUN_TRANSITIONS[status] == frozenset()


def test_a_failed_run_leaves_only_by_resume() -> None:
    assert RUN_TRANSITIONS[R.FAILED] == {R.QUEUED, R.RUNNING}


def test_a_succeeded_step_never_moves_again() -> None:
    assert STEP_TRANSITIONS[S.SUCCEEDED] == frozenset()
    assert S.SUCCEEDED not in step_sources(S.QUEUED)


@pytest.mark.parametrize("status", [S.FAILED, S.CANCELLED])
def test_failed_and_cancelled_steps_leave_only_to_be_run_again(status: StepStatus) -> None:
    # ...or, for a failure the flow handled another way (asking a person), to be skipped.
    assert STEP_TRANSITIONS[status] <= {S.QUEUED, S.PENDING, S.SKIPPED}


def test_no_status_moves_to_itself() -> None:
    assert all(status not in targets for status, targets in RUN_TRANSITIONS.items())
    assert all(status not in targets for status, targets in STEP_TRANSITIONS.items())


def test_check_run_transition_allows_what_the_table_allows() -> None:
    for current, targets in RUN_TRANSITIONS.items():
        for target in targets:
            check_run_transition("run_1", current, target)


def test_check_run_transition_names_the_current_status() -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_run_transition("run_1", R.SUCCEEDED, R.CANCELLED)
    error = caught.value
    assert error.message == "cannot move to cancelled run_1: it is succeeded"
    assert (error.current, error.target, error.status_code) == (R.SUCCEEDED, R.CANCELLED, 409)


def test_check_run_transition_uses_the_action_in_the_message() -> None:
    with pytest.raises(IllegalTransition, match="cannot confirm run_1: it is running"):
        check_run_transition("run_1", R.RUNNING, R.QUEUED, action="confirm")


def test_illegal_transition_survives_pickling() -> None:
    error = IllegalTransition("run_1", R.RUNNING, R.QUEUED)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.object_id, copy.current, copy.target, copy.message) == (
        "run_1",
        R.RUNNING,
        R.QUEUED,
        error.message,
    )


def test_run_sources_invert_the_table() -> None:
    assert run_sources(R.CANCELLED) == {R.NEEDS_CONFIRMATION, R.QUEUED, R.RUNNING, R.WAITING_FOR_INPUT}
    assert run_sources(R.QUEUED) == {R.NEEDS_CONFIRMATION, R.FAILED}
    assert run_sources(R.NEEDS_CONFIRMATION) == frozenset()
    for target in RunStatus:
        assert run_sources(target) == {s for s, targets in RUN_TRANSITIONS.items() if target in targets}


def test_step_sources_invert_the_table() -> None:
    assert step_sources(S.RUNNING) == {S.QUEUED}
    assert step_sources(S.WAITING) == {S.PENDING}
    for target in StepStatus:
        assert step_sources(target) == {s for s, targets in STEP_TRANSITIONS.items() if target in targets}
