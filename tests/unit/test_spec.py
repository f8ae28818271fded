"""Declaring flows: the graph is checked as it grows, and errors name the culprit."""

from __future__ import annotations

from typing import Any

import pytest

from baton.domain.errors import InvalidFlow
from baton.domain.models import RunView, StepView
from baton.domain.status import RunStatus, StepKind, StepStatus
from baton.flows.spec import Expansion, Finish, Flow, StepSpec, find_cycle, validate_new_steps


def noop(ctx: Any) -> None:
    return None


def code(key: str, *needs: str) -> StepSpec:
    return StepSpec(key=key, kind=StepKind.CODE, needs=needs, handler=key)


def test_declaring_steps_builds_the_graph_in_order() -> None:
    flow = Flow("demo")

    @flow.step()
    def gather(ctx: Any) -> dict[str, int]:
        return {"n": 1}

    flow.agent("write", needs=["gather"], prompt="Write it up")
    flow.input("approve", prompt="Publish?", needs=["write"])

    assert [s.key for s in flow.steps] == ["gather", "write", "approve"]
    assert flow.steps[1].needs == ("gather",)
    assert flow.steps[1].engine == "default"  # BATON_DEFAULT_ENGINE, else offline
    assert flow.steps[2].kind is StepKind.INPUT
    assert flow.steps[2].max_attempts == 1
    assert flow.handler_for("gather") is gather


def test_an_unknown_need_is_refused_and_named() -> None:
    flow = Flow("demo")
    flow.step("a")(noop)
    with pytest.raises(InvalidFlow) as caught:
        flow.agent("b", needs=["a", "missing"])
    assert "'b' needs 'missing'" in caught.value.message
    assert "known steps: a, b" in caught.value.message
    assert [s.key for s in flow.steps] == ["a"]


def test_a_cycle_is_refused_with_the_cycle_named() -> None:
    with pytest.raises(InvalidFlow) as caught:
        validate_new_steps(
            [code("start")], [code("a", "c", "start"), code("b", "a"), code("c", "b")], flow="demo"
        )
    message = caught.value.message
    assert "flow demo: the needs form a cycle:" in message
    cycle = message.rsplit(": ", 1)[1].split(" -> ")
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}


def test_a_step_that_needs_itself_is_a_cycle() -> None:
    flow = Flow("demo")
    with pytest.raises(InvalidFlow, match="cycle: a -> a"):
        flow.agent("a", needs=["a"])


def test_find_cycle_is_none_for_a_dag() -> None:
    assert find_cycle([code("a"), code("b", "a"), code("c", "a"), code("d", "b", "c")]) is None


def test_a_duplicate_key_is_refused() -> None:
    flow = Flow("demo")
    flow.agent("a")
    with pytest.raises(InvalidFlow, match="step 'a' is declared twice"):
        flow.agent("a")


def test_a_duplicate_within_one_batch_is_refused() -> None:
    with pytest.raises(InvalidFlow, match="declared twice"):
        validate_new_steps([], [code("x"), code("x")], flow="demo")


@pytest.mark.parametrize("key", ["", "1abc", "has space", "a/b", "x" * 101])
def test_a_bad_step_key_is_refused(key: str) -> None:
    with pytest.raises(InvalidFlow, match="is not valid"):
        Flow("demo").agent(key)


@pytest.mark.parametrize("name", ["", "has space", "-x"])
def test_a_bad_flow_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidFlow, match="flow name"):
        Flow(name)


def test_a_bad_category_is_refused_with_the_choices() -> None:
    with pytest.raises(InvalidFlow) as caught:
        Flow("demo", category="Chitchat")
    assert "'Chitchat'" in caught.value.message
    assert "Analysis, Discovery, Planning, Authoring, Review" in caught.value.message


def test_max_attempts_below_one_is_refused() -> None:
    with pytest.raises(InvalidFlow, match="max_attempts"):
        Flow("demo").agent("a", max_attempts=0)


def test_a_code_step_needs_a_registered_handler() -> None:
    with pytest.raises(InvalidFlow, match="handler 'nothing'"):
        Flow("demo").add(StepSpec(key="a", kind=StepKind.CODE, handler="nothing"))


def test_a_callable_engine_is_registered_as_a_function() -> None:
    flow = Flow("demo")
    flow.agent("a", engine=noop)
    assert flow.steps[0].engine == "function:a"
    assert flow.handler_for("a") is noop
    with pytest.raises(InvalidFlow, match="no function 'b'"):
        flow.handler_for("b")


def _run_and_step() -> tuple[RunView, StepView]:
    finished = StepView(key="a", kind=StepKind.AGENT, status=StepStatus.SUCCEEDED)
    run = RunView(id="run_1", flow="demo", status=RunStatus.RUNNING, inputs={}, steps=(finished,))
    return run, finished


def test_expand_adds_nothing_by_default() -> None:
    run, finished = _run_and_step()
    assert Flow("demo").expand(run, finished) == Expansion()


def test_expand_treats_a_hook_returning_none_as_nothing_to_add() -> None:
    run, finished = _run_and_step()
    flow = Flow("demo", expand_hook=lambda run, step: None)
    assert flow.expand(run, finished) == Expansion()


def test_expand_returns_what_the_hook_decided() -> None:
    run, finished = _run_and_step()
    verdict = Expansion(finish=Finish(succeeded=False, reason="score below threshold"))
    flow = Flow("demo", expand_hook=lambda run, step: verdict)
    assert flow.expand(run, finished) is verdict


def test_step_spec_json_labels_a_step_by_its_key_by_default() -> None:
    assert code("a").to_json()["label"] == "a"
    assert StepSpec(key="a", kind=StepKind.AGENT, label="Alpha").to_json()["label"] == "Alpha"
