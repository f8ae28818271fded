"""The loop flow's pure expand hook: pass, revise, fail with the final score, invalid evaluations, bands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.domain.errors import InvalidFlow
from baton.domain.models import RunView, StepView
from baton.domain.status import RunStatus, StepKind, StepStatus
from baton.flows.loop import EVALUATION_SCHEMA, loop_flow, loop_settings, read_evaluation
from baton.flows.report import render_report
from baton.flows.spec import Expansion, Finish, Flow, StepSpec

S = StepStatus


def make_flow(**overrides: Any) -> Flow:
    fields: dict[str, Any] = {
        "producer": {"engine": "offline", "prompt": "Write a haiku."},
        "evaluator": {"engine": "offline", "prompt": "Judge it."},
        "reviser": {"engine": "offline", "prompt": "Make it better."},
        "max_attempts": 3,
        "pass_threshold": 0.8,
        "title": "Haiku loop",
        **overrides,
    }
    return loop_flow("haiku", **fields)


def view(spec: StepSpec, status: StepStatus = S.PENDING, output: Any = None) -> StepView:
    return StepView(key=spec.key, kind=spec.kind, status=status, needs=spec.needs, output=output)


@dataclass
class Simulation:
    """A loop run driven the way the engine drives it: one ready step at a time, hook after each."""

    flow: Flow
    band: str | None = None
    steps: dict[str, StepView] = field(default_factory=dict)
    specs: dict[str, StepSpec] = field(default_factory=dict)
    events: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)
    finish: Finish | None = None

    def __post_init__(self) -> None:
        for spec in self.flow.steps:
            self.add(spec)

    def add(self, spec: StepSpec) -> None:
        assert spec.key not in self.steps, f"{spec.key} added twice"
        for need in spec.needs:
            assert need in self.steps, f"{spec.key} needs unknown {need}"
        self.specs[spec.key] = spec
        self.steps[spec.key] = view(spec)

    def run_view(self) -> RunView:
        return RunView(
            id="run_1",
            flow=self.flow.name,
            status=RunStatus.RUNNING,
            inputs={},
            steps=tuple(self.steps.values()),
            band=self.band,
        )

    def complete(self, key: str, output: Any, status: StepStatus = S.SUCCEEDED) -> Expansion:
        self.steps[key] = replace(self.steps[key], status=status, output=output)
        expansion = self.flow.expand(self.run_view(), self.steps[key])
        for spec in expansion.new_steps:
            self.add(spec)
        self.events += list(expansion.events)
        if expansion.progress:
            self.progress.update(expansion.progress)
            self.stages.append(self.progress["stage"])
        if expansion.finish is not None:
            self.finish = expansion.finish
        return expansion

    def ready(self) -> str | None:
        for key, step in self.steps.items():
            if step.status is S.PENDING and all(self.steps[n].status is S.SUCCEEDED for n in step.needs):
                return key
        return None

    def run(self, scores: Sequence[Any]) -> Finish:
        """Steps succeed in order; evaluate-N returns scores[N-1] (a number or a whole output)."""
        while self.finish is None:
            key = self.ready()
            assert key is not None, "the loop stopped without finishing the run"
            role, _, number = key.rpartition("-")
            if role == "evaluate":
                score = scores[int(number) - 1]
                output = score if isinstance(score, Mapping) else {"score": score, "feedback": f"fb {number}"}
            elif role in ("produce", "revise"):
                output = f"draft {number}"
            else:
                output = "loop started"
            self.complete(key, output)
        return self.finish

    @property
    def attempts(self) -> int:
        return sum(1 for key in self.steps if key.startswith("evaluate-"))


# --- declaration ---------------------------------------------------------------------------------


def test_a_loop_starts_with_produce_then_evaluate_and_a_start_step_beside_them() -> None:
    flow = make_flow()
    by_key = {s.key: s for s in flow.steps}
    assert list(by_key) == ["start", "produce-1", "evaluate-1"]
    assert by_key["start"].kind is StepKind.CODE and by_key["start"].needs == ()
    assert by_key["produce-1"].needs == ()
    assert by_key["evaluate-1"].needs == ("produce-1",)
    assert by_key["produce-1"].artifact == "attempt-1.md"
    assert by_key["evaluate-1"].artifact == "attempt-1.eval.json"
    assert by_key["evaluate-1"].agent is not None
    assert by_key["evaluate-1"].agent["output_schema"] == EVALUATION_SCHEMA
    assert by_key["evaluate-1"].prompt is not None and by_key["evaluate-1"].prompt.startswith("Judge it.")
    assert "`produce-1`" in by_key["evaluate-1"].prompt
    assert flow.category == "Authoring" and flow.title == "Haiku loop"
    assert loop_settings(flow).max_attempts == 3


def test_roles_accept_callables_declared_agents_and_agent_names() -> None:
    def scorer(request: Any, ctx: Any) -> dict[str, Any]:
        return {"score": 1.0, "feedback": "fine"}

    class Writer:
        name = "writer"
        persona = "You write."
        engine = "offline"
        output_schema = None

    flow = make_flow(producer=Writer(), evaluator=scorer, reviser="editor")
    by_key = {s.key: s for s in flow.steps}
    assert by_key["produce-1"].agent == {"name": "writer", "persona": "You write.", "engine": "offline"}
    assert by_key["evaluate-1"].engine == "function:evaluator"
    assert flow.functions["evaluator"] is scorer
    expansion = Simulation(flow).complete("evaluate-1", {"score": 0.1, "feedback": "no"})
    revise = expansion.new_steps[0]
    assert revise.agent == {"ref": "editor", "name": "reviser"}  # keeps the declared agent's engine


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be a whole number of at least 1"),
        ({"pass_threshold": 1.5}, "pass_threshold must be a number from 0 to 1"),
        ({"producer": {"prompt": "x", "needs": ["a"]}}, "the producer has unknown field(s) needs"),
        ({"bands": {"small": 0}}, "band 'small' must give max_attempts"),
    ],
)
def test_a_bad_declaration_is_refused_with_the_reason(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidFlow, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_flow(**overrides)


# --- the hook ------------------------------------------------------------------------------------


def test_a_score_at_the_threshold_passes_the_run() -> None:
    sim = Simulation(make_flow())
    finish = sim.run([0.8])
    assert finish.succeeded
    assert finish.reason == "passed with score 0.8 at attempt 1"
    assert finish.result["output"] == "draft 1"
    assert finish.result["score"] == 0.8 and finish.result["attempt"] == 1
    assert finish.result["passed"] is True
    assert sim.events == [
        (
            "score.updated",
            {
                "attempt": 1,
                "score": 0.8,
                "feedback": "fb 1",
                "threshold": 0.8,
                "max_attempts": 3,
                "passed": True,
            },
        )
    ]
    assert sim.progress["stage"] == "done" and sim.progress["score"] == 0.8


def test_a_score_below_the_threshold_appends_revise_and_evaluate() -> None:
    sim = Simulation(make_flow())
    sim.complete("start", "loop started")
    sim.complete("produce-1", "draft 1")
    expansion = sim.complete("evaluate-1", {"score": 0.5, "feedback": "too long"})
    assert expansion.finish is None
    revise, evaluate = expansion.new_steps
    assert revise.key == "revise-2" and revise.needs == ("evaluate-1", "produce-1")
    assert revise.artifact == "attempt-2.md" and revise.kind is StepKind.AGENT
    assert revise.prompt is not None and revise.prompt.startswith("Make it better.")
    assert "scored 0.5" in revise.prompt and "`evaluate-1`" in revise.prompt
    assert evaluate.key == "evaluate-2" and evaluate.needs == ("revise-2",)
    assert evaluate.artifact == "attempt-2.eval.json"
    assert expansion.progress == {
        "stage": "revising",
        "current_attempt": 2,
        "max_attempts": 3,
        "score": 0.5,
        "scores": [{"attempt": 1, "score": 0.5}],
        "pass_threshold": 0.8,
    }
    assert [kind for kind, _ in expansion.events] == ["score.updated"]
    # The stages the run shows, in order.
    assert sim.stages == ["producing", "evaluating", "revising"]
    sim.complete("revise-2", "draft 2")
    assert sim.progress["stage"] == "evaluating" and sim.progress["current_attempt"] == 2


def test_the_run_fails_after_max_attempts_with_the_final_score() -> None:
    sim = Simulation(make_flow())
    finish = sim.run([0.1, 0.3, 0.55])
    assert not finish.succeeded
    assert finish.reason == "score below threshold after 3 attempts (final score 0.55)"
    assert finish.result["score"] == 0.55 and finish.result["attempt"] == 3
    assert finish.result["output"] == "draft 3" and finish.result["passed"] is False
    assert finish.result["scores"] == [
        {"attempt": 1, "score": 0.1},
        {"attempt": 2, "score": 0.3},
        {"attempt": 3, "score": 0.55},
    ]
    assert [p["attempt"] for _, p in sim.events] == [1, 2, 3]
    assert sim.attempts == 3
    assert sim.stages == [
        "producing",
        "evaluating",
        "revising",
        "evaluating",
        "revising",
        "evaluating",
        "done",
    ]


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ({"feedback": "no score"}, "'score' is a required property"),
        ({"score": 1.5, "feedback": "x"}, "score: 1.5 is greater than the maximum of 1"),
        ({"score": "high", "feedback": "x"}, "score: 'high' is not of type 'number'"),
        ({"score": 0.9}, "'feedback' is a required property"),
        ("a great draft", "expected a JSON object, got text"),
        (None, "expected a JSON object, got NoneType"),
    ],
)
def test_an_invalid_evaluation_fails_the_run_clearly(output: Any, problem: str) -> None:
    sim = Simulation(make_flow())
    sim.complete("produce-1", "draft 1")
    expansion = sim.complete("evaluate-1", output)
    assert expansion.finish is not None and not expansion.finish.succeeded
    assert expansion.finish.reason.startswith("evaluate-1 returned an invalid evaluation: ")
    assert problem in expansion.finish.reason
    assert '{"score": 0..1, "feedback": "..."}' in expansion.finish.reason
    assert expansion.events == () and expansion.new_steps == ()


def test_an_evaluation_given_as_json_text_is_read() -> None:
    assert read_evaluation('{"score": 1, "feedback": "ok"}') == ({"score": 1.0, "feedback": "ok"}, "")


def test_a_failed_step_is_left_to_the_engine() -> None:
    sim = Simulation(make_flow())
    expansion = sim.complete("produce-1", None, status=S.FAILED)
    assert expansion == Expansion()


def test_start_never_overwrites_a_later_stage() -> None:
    sim = Simulation(make_flow())
    sim.complete("produce-1", "draft 1")
    assert sim.complete("start", "loop started").progress == {
        "stage": "evaluating",
        "current_attempt": 1,
        "max_attempts": 3,
        "pass_threshold": 0.8,
        "score": None,
        "scores": [],
    }
    sim = Simulation(make_flow())
    sim.complete("produce-1", "draft 1")
    sim.complete("evaluate-1", {"score": 0.2, "feedback": "x"})
    assert sim.complete("start", "loop started") == Expansion()
    assert sim.progress["stage"] == "revising"


def test_steps_a_forked_run_already_has_are_not_added_again() -> None:
    sim = Simulation(make_flow())
    sim.complete("produce-1", "draft 1")
    first = sim.complete("evaluate-1", {"score": 0.2, "feedback": "x"})
    assert [s.key for s in first.new_steps] == ["revise-2", "evaluate-2"]
    # As in a fork from evaluate-1: the later steps exist, pending; evaluate-1 runs again.
    again = sim.complete("evaluate-1", {"score": 0.3, "feedback": "y"})
    assert again.new_steps == () and again.progress is not None
    assert again.progress["stage"] == "revising"


@pytest.mark.parametrize(
    ("band", "attempts"), [("small", 2), ("medium", 3), ("large", 5), (None, 4), ("unknown", 4)]
)
def test_the_band_of_a_run_picks_max_attempts(band: str | None, attempts: int) -> None:
    flow = make_flow(max_attempts=4, bands={"small": 2, "medium": {"max_attempts": 3}, "large": 5})
    assert flow.bands == {
        "small": {"max_attempts": 2},
        "medium": {"max_attempts": 3},
        "large": {"max_attempts": 5},
    }
    sim = Simulation(flow, band=band)
    finish = sim.run([0.1] * 10)
    assert sim.attempts == attempts
    assert finish.reason == f"score below threshold after {attempts} attempts (final score 0.1)"
    assert sim.progress["max_attempts"] == attempts


def test_the_default_report_lists_scores_and_the_final_output() -> None:
    sim = Simulation(make_flow())
    finish = sim.run([0.4, 0.9])
    steps = [
        {"key": s.key, "status": s.status.value, "output": s.output, "error": None}
        for s in sim.steps.values()
    ]
    report = render_report(
        make_flow().report_template,
        run={
            "id": "run_1",
            "flow": "haiku",
            "status": "succeeded",
            "status_reason": finish.reason,
            "result": finish.result,
            "title": "Haiku loop",
        },
        steps=steps,
    )
    assert "- attempt 1: **0.4** — fb 1" in report
    assert "- attempt 2: **0.9** — fb 2" in report
    assert "## Final output (attempt 2, score 0.9)" in report and "draft 2" in report
    assert "The report template failed" not in report


# --- properties ----------------------------------------------------------------------------------

scores = st.floats(min_value=0, max_value=1, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    sequence=st.lists(scores, min_size=8, max_size=8),
    max_attempts=st.integers(min_value=1, max_value=6),
    threshold=st.floats(min_value=0, max_value=1, allow_nan=False),
)
def test_attempts_never_exceed_the_limit_and_the_first_passing_score_decides(
    sequence: list[float], max_attempts: int, threshold: float
) -> None:
    sim = Simulation(make_flow(max_attempts=max_attempts, pass_threshold=threshold))
    finish = sim.run(sequence)
    assert sim.attempts <= max_attempts
    first_pass = next((i for i, s in enumerate(sequence[:max_attempts]) if s >= threshold), None)
    if first_pass is None:
        assert not finish.succeeded
        assert sim.attempts == max_attempts
        assert finish.reason.startswith(f"score below threshold after {max_attempts} attempts")
        assert finish.result["score"] == sequence[max_attempts - 1]
    else:
        assert finish.succeeded
        assert sim.attempts == first_pass + 1
        assert finish.result["attempt"] == first_pass + 1
        assert finish.result["score"] == sequence[first_pass]
    # One score.updated per attempt, in order.
    assert [p["attempt"] for kind, p in sim.events if kind == "score.updated"] == list(
        range(1, sim.attempts + 1)
    )
