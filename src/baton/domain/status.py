"""The statuses a run and a step can be in, and which of them are final."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    NEEDS_CONFIRMATION = "needs_confirmation"  #: waiting for a person to confirm the plan
    QUEUED = "queued"  #: confirmed, waiting for a concurrency slot
    RUNNING = "running"  #: promoted: its ready steps are claimable
    WAITING_FOR_INPUT = "waiting_for_input"  #: blocked on an input request, nothing else to do
    SUCCEEDED = "succeeded"  #: every step succeeded
    FAILED = "failed"  #: a step failed for good, a timeout hit, or the flow finished as failed
    CANCELLED = "cancelled"  #: cancelled by a person or a concurrency strategy


class StepStatus(StrEnum):
    PENDING = "pending"  #: some step in its `needs` has not succeeded yet
    QUEUED = "queued"  #: ready: claimable by a worker once `available_at` has passed
    RUNNING = "running"  #: claimed by a worker under a lease
    WAITING = "waiting"  #: an input step whose request awaits an answer
    SUCCEEDED = "succeeded"  #: its result is recorded; never runs again
    FAILED = "failed"  #: attempts spent, or a permanent error
    CANCELLED = "cancelled"  #: stopped because its run was cancelled or failed
    SKIPPED = "skipped"  #: not needed any more: the flow handled its failure another way


class StepKind(StrEnum):
    CODE = "code"  #: a Python function of the flow
    AGENT = "agent"  #: an agent persona run by an engine
    INPUT = "input"  #: a human answer


TERMINAL_RUN_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
ACTIVE_RUN_STATUSES = frozenset({RunStatus.RUNNING, RunStatus.WAITING_FOR_INPUT})
FINISHED_STEP_STATUSES = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.SKIPPED}
)
