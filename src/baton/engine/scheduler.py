"""Pure scheduling decisions: what is ready, how a run stands, who gets promoted, when to retry."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from baton.domain.models import StepView
from baton.domain.status import RunStatus, StepKind, StepStatus

S = StepStatus


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a run stands once its steps are as given."""

    status: RunStatus
    reason: str


@dataclass(frozen=True, slots=True)
class Advance:
    """What to do with a run's steps after a change: which to queue, which await a human."""

    queue: tuple[str, ...] = ()
    wait: tuple[str, ...] = ()
    outcome: Outcome = field(default_factory=lambda: Outcome(RunStatus.RUNNING, "running"))


def ready_steps(steps: Iterable[StepView]) -> list[str]:
    """Pending steps whose every `needs` entry has succeeded, in declaration order."""
    steps = list(steps)
    done = {s.key for s in steps if s.status == S.SUCCEEDED}
    ready = [s for s in steps if s.status == S.PENDING and all(n in done for n in s.needs)]
    return [s.key for s in sorted(ready, key=lambda s: s.position)]


def run_outcome(steps: Sequence[StepView], blocked: Sequence[str] = ()) -> Outcome:
    """How a running run stands, judged from its steps alone.

    `steps` may leave out steps that are done (succeeded, skipped) and pending steps still
    waiting on a need; `blocked` names the latter when they were left out.
    """
    failed = [s for s in steps if s.status == S.FAILED]
    if failed:
        first = min(failed, key=lambda s: s.position)
        return Outcome(RunStatus.FAILED, f"step {first.key} failed: {first.error or 'no reason given'}")
    if not blocked and all(s.status in (S.SUCCEEDED, S.SKIPPED) for s in steps):
        return Outcome(RunStatus.SUCCEEDED, "all steps succeeded")
    if any(s.status in (S.QUEUED, S.RUNNING) for s in steps):
        return Outcome(RunStatus.RUNNING, "running")
    waiting = [s for s in steps if s.status == S.WAITING]
    if waiting:
        first = min(waiting, key=lambda s: s.position)
        prompt = str(first.spec.get("prompt") or first.key)
        return Outcome(RunStatus.WAITING_FOR_INPUT, f"waiting for input: {prompt}")
    cancelled = [s.key for s in steps if s.status == S.CANCELLED]
    if cancelled:
        return Outcome(RunStatus.CANCELLED, f"steps cancelled: {', '.join(cancelled)}")
    stuck = [s.key for s in steps if s.status == S.PENDING] + list(blocked)
    return Outcome(RunStatus.FAILED, f"no step can run: {', '.join(stuck)} wait on steps that cannot finish")


def advance(steps: Sequence[StepView]) -> Advance:
    """The next moves of a run: queue ready work steps, open input requests, then judge the run."""
    ready = ready_steps(steps)
    kinds = {s.key: s.kind for s in steps}
    queue = tuple(k for k in ready if kinds[k] != StepKind.INPUT)
    wait = tuple(k for k in ready if kinds[k] == StepKind.INPUT)
    moved = {**{k: S.QUEUED for k in queue}, **{k: S.WAITING for k in wait}}
    after = [_with_status(s, moved[s.key]) if s.key in moved else s for s in steps]
    return Advance(queue=queue, wait=wait, outcome=run_outcome(after))


def _with_status(step: StepView, status: StepStatus) -> StepView:
    return StepView(
        key=step.key,
        kind=step.kind,
        status=status,
        needs=step.needs,
        attempt=step.attempt,
        max_attempts=step.max_attempts,
        position=step.position,
        output=step.output,
        error=step.error,
        spec=step.spec,
    )


def descendants(steps: Iterable[StepView], root: str) -> set[str]:
    """`root` and every step that depends on it, directly or not."""
    children: dict[str, list[str]] = {}
    for s in steps:
        for need in s.needs:
            children.setdefault(need, []).append(s.key)
    seen = {root}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def resume_plan(steps: Sequence[StepView]) -> dict[str, StepStatus]:
    """For resuming a failed run: failed and cancelled steps go back to pending; succeeded stay.

    Returning them to pending (not queued) lets `advance` re-queue only those whose needs hold.
    """
    return {s.key: S.PENDING for s in steps if s.status in (S.FAILED, S.CANCELLED)}


def fork_plan(steps: Sequence[StepView], from_step: str) -> tuple[set[str], set[str]]:
    """For a fork from `from_step`: (keys to copy with their results, keys to run again)."""
    rerun = descendants(steps, from_step)
    copy = {s.key for s in steps if s.key not in rerun and s.status == S.SUCCEEDED}
    return copy, {s.key for s in steps if s.key not in copy}


def retry_delay(attempt: int, base_s: float, cap_s: float = 300.0) -> float:
    """Exponential backoff before attempt `attempt + 1`: base, 2 x base, 4 x base… capped."""
    if base_s <= 0:
        return 0.0
    return float(min(cap_s, base_s * (2 ** max(0, attempt - 1))))


def promotable(
    queued: Sequence[tuple[str, str]], active: Mapping[str, int], limits: Mapping[str, int]
) -> list[str]:
    """Which queued runs may start now.

    `queued` is (run_id, concurrency_key) in promotion order (priority, then age); `active` counts
    the running runs per key; `limits` gives each key's limit. FIFO within a key: a run never
    overtakes an older one of the same key.
    """
    room = {key: limits.get(key, 1) - active.get(key, 0) for _, key in queued}
    chosen = []
    for run_id, key in queued:
        if room[key] > 0:
            chosen.append(run_id)
            room[key] -= 1
    return chosen


#: A running run with no sign of life from any of its steps for this long is shown as stalled.
STALL_AFTER_S = 120.0


def is_stalled(
    status: RunStatus,
    last_signs_of_life: Sequence[float | None],
    now: float,
    stall_after_s: float = STALL_AFTER_S,
) -> bool:
    """Running, and neither a step heartbeat nor a start within `stall_after_s` of `now`."""
    if status != RunStatus.RUNNING:
        return False
    seen = [t for t in last_signs_of_life if t is not None]
    return not seen or now - max(seen) > stall_after_s
