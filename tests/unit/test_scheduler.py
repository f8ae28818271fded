"""The pure scheduling decisions: readiness, run outcome, advancing, fork/resume plans, backoff, promotion."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.domain.models import StepView
from baton.domain.status import RunStatus, StepKind, StepStatus
from baton.engine.scheduler import (
    advance,
    descendants,
    fork_plan,
    promotable,
    ready_steps,
    resume_plan,
    retry_delay,
    run_outcome,
)

S = StepStatus


def step(
    key: str,
    status: StepStatus = S.PENDING,
    needs: tuple[str, ...] = (),
    *,
    kind: StepKind = StepKind.CODE,
    position: int = 0,
    error: str | None = None,
    prompt: str | None = None,
) -> StepView:
    return StepView(
        key=key,
        kind=kind,
        status=status,
        needs=needs,
        position=position,
        error=error,
        spec={"prompt": prompt} if prompt else {},
    )


def diamond(**statuses: StepStatus) -> list[StepView]:
    """a -> (b, c) -> d, with the given statuses (pending by default)."""
    shape = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    return [
        step(key, statuses.get(key, S.PENDING), needs, position=i)
        for i, (key, needs) in enumerate(shape.items())
    ]


# --- ready_steps -----------------------------------------------------------------------------


def test_ready_steps_are_pending_steps_whose_needs_all_succeeded() -> None:
    assert ready_steps(diamond()) == ["a"]
    assert ready_steps(diamond(a=S.SUCCEEDED)) == ["b", "c"]
    assert ready_steps(diamond(a=S.SUCCEEDED, b=S.SUCCEEDED)) == ["c"]
    assert ready_steps(diamond(a=S.SUCCEEDED, b=S.SUCCEEDED, c=S.SUCCEEDED)) == ["d"]


def test_ready_steps_wait_on_a_failed_or_running_need() -> None:
    assert ready_steps(diamond(a=S.SUCCEEDED, b=S.FAILED, c=S.SUCCEEDED)) == []
    assert ready_steps(diamond(a=S.SUCCEEDED, b=S.RUNNING, c=S.SUCCEEDED)) == []


def test_ready_steps_come_in_declaration_order_not_list_order() -> None:
    steps = [step("late", position=2), step("early", position=0), step("middle", position=1)]
    assert ready_steps(steps) == ["early", "middle", "late"]


def test_ready_steps_skip_steps_that_are_not_pending() -> None:
    steps = [step("q", S.QUEUED), step("r", S.RUNNING), step("w", S.WAITING), step("s", S.SUCCEEDED)]
    assert ready_steps(steps) == []


# --- run_outcome -----------------------------------------------------------------------------


def test_outcome_succeeded_when_every_step_succeeded() -> None:
    outcome = run_outcome(diamond(a=S.SUCCEEDED, b=S.SUCCEEDED, c=S.SUCCEEDED, d=S.SUCCEEDED))
    assert outcome.status is RunStatus.SUCCEEDED


def test_outcome_failed_names_the_first_failed_step_and_its_error() -> None:
    steps = [
        step("a", S.SUCCEEDED, position=0),
        step("b", S.FAILED, ("a",), position=1, error="model timed out"),
        step("c", S.FAILED, ("a",), position=2, error="other"),
    ]
    outcome = run_outcome(steps)
    assert outcome.status is RunStatus.FAILED
    assert outcome.reason == "step b failed: model timed out"


def test_outcome_failed_wins_over_running_steps() -> None:
    steps = [step("a", S.FAILED, error="x"), step("b", S.RUNNING, position=1)]
    assert run_outcome(steps).status is RunStatus.FAILED


def test_outcome_running_while_work_is_queued_or_running() -> None:
    assert run_outcome(diamond(a=S.QUEUED)).status is RunStatus.RUNNING
    assert run_outcome(diamond(a=S.RUNNING)).status is RunStatus.RUNNING


def test_outcome_waiting_for_input_quotes_the_prompt() -> None:
    steps = [
        step("a", S.SUCCEEDED),
        step("ok", S.WAITING, ("a",), kind=StepKind.INPUT, position=1, prompt="Approve the plan?"),
        step("z", S.PENDING, ("ok",), position=2),
    ]
    outcome = run_outcome(steps)
    assert outcome.status is RunStatus.WAITING_FOR_INPUT
    assert "Approve the plan?" in outcome.reason


def test_outcome_cancelled_lists_cancelled_steps() -> None:
    outcome = run_outcome([step("a", S.SUCCEEDED), step("b", S.CANCELLED, ("a",), position=1)])
    assert outcome.status is RunStatus.CANCELLED
    assert "b" in outcome.reason


def test_outcome_failed_when_pending_steps_can_never_run() -> None:
    outcome = run_outcome([step("a", S.PENDING, ("ghost",))])
    assert outcome.status is RunStatus.FAILED
    assert "a" in outcome.reason


# --- advance ---------------------------------------------------------------------------------


def test_advance_queues_the_first_wave() -> None:
    result = advance(diamond())
    assert result.queue == ("a",)
    assert result.wait == ()
    assert result.outcome.status is RunStatus.RUNNING


def test_advance_opens_input_steps_instead_of_queueing_them() -> None:
    steps = [
        step("a", S.SUCCEEDED),
        step("ask", needs=("a",), kind=StepKind.INPUT, position=1, prompt="Which repo?"),
        step("work", needs=("a",), position=2),
    ]
    result = advance(steps)
    assert result.queue == ("work",)
    assert result.wait == ("ask",)
    assert result.outcome.status is RunStatus.RUNNING


def test_advance_waits_for_input_when_only_a_question_is_open() -> None:
    steps = [step("a", S.SUCCEEDED), step("ask", needs=("a",), kind=StepKind.INPUT, position=1, prompt="?")]
    result = advance(steps)
    assert result.wait == ("ask",)
    assert result.outcome.status is RunStatus.WAITING_FOR_INPUT


def test_advance_judges_a_finished_run() -> None:
    result = advance(diamond(a=S.SUCCEEDED, b=S.SUCCEEDED, c=S.SUCCEEDED, d=S.SUCCEEDED))
    assert result.queue == ()
    assert result.outcome.status is RunStatus.SUCCEEDED


def test_advance_does_not_queue_behind_a_failure() -> None:
    result = advance(diamond(a=S.SUCCEEDED, b=S.FAILED, c=S.SUCCEEDED))
    assert result.queue == ()
    assert result.outcome.status is RunStatus.FAILED


@st.composite
def random_dags(draw: st.DrawFn) -> list[StepView]:
    """n steps whose needs point only at earlier steps, declared at shuffled positions."""
    n = draw(st.integers(min_value=1, max_value=12))
    positions = draw(st.permutations(range(n)))
    steps = []
    for i in range(n):
        needs = draw(st.sets(st.integers(min_value=0, max_value=i - 1), max_size=i)) if i else set()
        steps.append(step(f"s{i}", needs=tuple(f"s{j}" for j in sorted(needs)), position=positions[i]))
    return draw(st.permutations(steps))


@settings(max_examples=200, deadline=None)
@given(steps=random_dags(), data=st.data())
def test_advancing_a_random_dag_runs_every_step_once_after_its_needs(
    steps: list[StepView], data: st.DataObject
) -> None:
    by_key = {s.key: s for s in steps}
    executed: list[str] = []
    queued: list[str] = []
    outcome = None
    for _ in range(len(steps) * 2 + 2):
        result = advance(list(by_key.values()))
        outcome = result.outcome
        for key in result.queue:
            assert by_key[key].status is S.PENDING, f"{key} queued twice"
            by_key[key] = dataclasses.replace(by_key[key], status=S.QUEUED)
        queued.extend(result.queue)
        if not queued:
            break
        # Workers finish the queued steps in any order, some now and some on a later pass.
        chosen = data.draw(st.sets(st.sampled_from(queued), min_size=1))
        for key in data.draw(st.permutations(sorted(chosen))):
            assert all(by_key[need].status is S.SUCCEEDED for need in by_key[key].needs), key
            assert by_key[key].status is S.QUEUED
            executed.append(key)
            by_key[key] = dataclasses.replace(by_key[key], status=S.SUCCEEDED)
            queued.remove(key)

    assert sorted(executed) == sorted(by_key)
    assert len(executed) == len(set(executed))
    assert outcome is not None and outcome.status is RunStatus.SUCCEEDED


# --- descendants, fork and resume --------------------------------------------------------------


def test_descendants_include_the_root_and_everything_downstream() -> None:
    assert descendants(diamond(), "b") == {"b", "d"}
    assert descendants(diamond(), "a") == {"a", "b", "c", "d"}
    assert descendants(diamond(), "d") == {"d"}


def test_fork_copies_succeeded_steps_outside_the_forked_subgraph() -> None:
    steps = diamond(a=S.SUCCEEDED, b=S.SUCCEEDED, c=S.SUCCEEDED, d=S.FAILED)
    copy, rerun = fork_plan(steps, "b")
    assert copy == {"a", "c"}
    assert rerun == {"b", "d"}


def test_fork_reruns_steps_that_had_not_succeeded_even_upstream() -> None:
    steps = diamond(a=S.SUCCEEDED, b=S.SUCCEEDED, c=S.FAILED)
    copy, rerun = fork_plan(steps, "d")
    assert copy == {"a", "b"}
    assert rerun == {"c", "d"}


def test_resume_sends_failed_and_cancelled_steps_back_to_pending_and_keeps_the_rest() -> None:
    steps = diamond(a=S.SUCCEEDED, b=S.FAILED, c=S.CANCELLED)
    assert resume_plan(steps) == {"b": S.PENDING, "c": S.PENDING}


# --- retry_delay -----------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "expected"), [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)])
def test_retry_delay_doubles_up_to_the_cap(attempt: int, expected: float) -> None:
    assert retry_delay(attempt, 2.0, cap_s=60.0) == expected


def test_retry_delay_is_zero_without_a_base() -> None:
    assert retry_delay(5, 0.0) == 0.0
    assert retry_delay(5, -1.0) == 0.0


# --- promotable ------------------------------------------------------------------------------


def test_promotable_fills_each_key_up_to_its_limit_in_order() -> None:
    queued = [("r1", "p:u"), ("r2", "p:u"), ("r3", "p:v"), ("r4", "p:u")]
    assert promotable(queued, {}, {"p:u": 2, "p:v": 1}) == ["r1", "r2", "r3"]


def test_promotable_defaults_to_one_active_run_per_key() -> None:
    assert promotable([("r1", "k"), ("r2", "k")], {}, {}) == ["r1"]
    assert promotable([("r1", "k")], {"k": 1}, {}) == []


def test_promotable_counts_runs_already_active() -> None:
    assert promotable([("r1", "k"), ("r2", "k")], {"k": 2}, {"k": 3}) == ["r1"]
    assert promotable([("r1", "k")], {"k": 5}, {"k": 3}) == []


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.sampled_from("abcd"), max_size=30),
    active=st.dictionaries(st.sampled_from("abcd"), st.integers(0, 4)),
    limits=st.dictionaries(st.sampled_from("abcd"), st.integers(0, 4)),
)
def test_promotable_respects_limits_and_is_fifo_per_key(
    keys: list[str], active: dict[str, int], limits: dict[str, int]
) -> None:
    queued = [(f"r{i}", key) for i, key in enumerate(keys)]
    chosen = promotable(queued, active, limits)

    assert len(chosen) == len(set(chosen))
    for key in set(keys):
        mine = [run_id for run_id, k in queued if k == key]
        picked = [run_id for run_id in chosen if run_id in mine]
        room = max(0, limits.get(key, 1) - active.get(key, 0))
        assert len(picked) == min(room, len(mine))
        # FIFO: the chosen runs of a key are exactly its oldest ones, in order.
        assert picked == mine[: len(picked)]
    assert chosen == [run_id for run_id, _ in queued if run_id in set(chosen)]
