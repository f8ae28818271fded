"""Which status changes are allowed, as data; every guarded write takes its `from` set here."""

from __future__ import annotations

from baton.domain.errors import IllegalTransition
from baton.domain.status import RunStatus, StepStatus

R = RunStatus
S = StepStatus

#: run status -> the statuses it may move to
RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    R.NEEDS_CONFIRMATION: frozenset({R.QUEUED, R.RUNNING, R.CANCELLED, R.FAILED}),
    R.QUEUED: frozenset({R.RUNNING, R.CANCELLED, R.FAILED}),
    R.RUNNING: frozenset({R.WAITING_FOR_INPUT, R.SUCCEEDED, R.FAILED, R.CANCELLED}),
    R.WAITING_FOR_INPUT: frozenset({R.RUNNING, R.SUCCEEDED, R.FAILED, R.CANCELLED}),
    R.FAILED: frozenset({R.QUEUED, R.RUNNING}),  # resume
    R.SUCCEEDED: frozenset(),
    R.CANCELLED: frozenset(),
}

#: step status -> the statuses it may move to
STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    S.PENDING: frozenset({S.QUEUED, S.WAITING, S.CANCELLED, S.SKIPPED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.PENDING, S.SKIPPED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.QUEUED, S.CANCELLED}),
    S.WAITING: frozenset({S.SUCCEEDED, S.CANCELLED, S.FAILED}),
    S.FAILED: frozenset({S.QUEUED, S.PENDING, S.SKIPPED}),  # resume; or the flow handled it
    S.CANCELLED: frozenset({S.QUEUED, S.PENDING}),  # resume
    S.SUCCEEDED: frozenset(),
    S.SKIPPED: frozenset(),
}


def run_sources(target: RunStatus) -> frozenset[RunStatus]:
    """The statuses a run may be in for a move to `target` to be legal."""
    return frozenset(src for src, targets in RUN_TRANSITIONS.items() if target in targets)


def step_sources(target: StepStatus) -> frozenset[StepStatus]:
    """The statuses a step may be in for a move to `target` to be legal."""
    return frozenset(src for src, targets in STEP_TRANSITIONS.items() if target in targets)


def check_run_transition(run_id: str, current: RunStatus, target: RunStatus, action: str = "") -> None:
    """Raise IllegalTransition unless `current -> target` is in the table."""
    if target not in RUN_TRANSITIONS[current]:
        raise IllegalTransition(run_id, current, target, action)
