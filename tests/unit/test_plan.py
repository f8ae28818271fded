"""Planned flows, pure: the envelope, the registry, planners, plan validation, structuring, expand."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from baton.domain.errors import InvalidFlow, InvalidInputs, StepFailed
from baton.domain.models import RunView, StepView
from baton.domain.status import RunStatus, StepKind, StepStatus
from baton.examples.post_variants import capabilities, envelope, output_contract, post_variants
from baton.flows.plan import (
    PLAN_SCHEMA,
    AgentImpl,
    AgentPlanner,
    Capability,
    CapabilityRegistry,
    CodeImpl,
    InvalidPlan,
    Rule,
    TaskEnvelope,
    UnknownCapability,
    checked_engine,
    compiled,
    covers,
    final_node,
    parse_envelope,
    plan_by_rules,
    plan_flow,
    plan_problems,
    schema_errors,
    structuring_needed,
    validate_plan,
)
from baton.flows.spec import Expansion, Flow

S = StepStatus

OBJ = {"type": "object"}


def cap(
    cap_id: str, needs: Sequence[str] = (), gives: Sequence[str] = (), *, code: bool = False
) -> Capability:
    """A capability requiring `needs` fields and producing `gives` fields."""
    impl: AgentImpl | CodeImpl = CodeImpl(lambda call: {}) if code else AgentImpl(engine="offline")
    return Capability(
        id=cap_id,
        description=f"does {cap_id}",
        input_schema={"type": "object", "properties": {n: {} for n in needs}, "required": list(needs)},
        output_schema={
            "type": "object",
            "properties": {g: {"type": "string"} for g in gives},
            "required": list(gives),
        },
        implementation=impl,
    )


REGISTRY = CapabilityRegistry(
    [
        cap("research", ["topic"], ["facts"]),
        cap("write", ["facts"], ["text"]),
        cap("tag", ["topic"], ["tags"]),
    ]
)
CONTRACT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
ENVELOPE = TaskEnvelope(objective="write about a topic", inputs={"topic": "tea"}, output_contract=CONTRACT)


def node(
    node_id: str, capability: str | None = None, needs: Sequence[str] = (), **context: Any
) -> dict[str, Any]:
    return {"id": node_id, "capability": capability or node_id, "needs": list(needs), "context": context}


# --- envelope -------------------------------------------------------------------------------------


def test_a_valid_envelope_is_parsed_into_frozen_values() -> None:
    parsed = parse_envelope(
        {
            "objective": " summarise ",
            "inputs": {"topic": "tea"},
            "constraints": "no emojis",
            "policies": {"denied_capabilities": ["tag"]},
            "output_contract": CONTRACT,
        }
    )
    assert parsed.objective == "summarise"
    assert parsed.constraints == ("no emojis",)
    assert parsed.policies == {"denied_capabilities": ["tag"]}
    assert parse_envelope(parsed) == parsed  # an envelope round-trips through its JSON


def test_envelope_errors_name_every_failing_field() -> None:
    with pytest.raises(InvalidInputs) as caught:
        parse_envelope(
            {
                "objective": "",
                "inputs": [],
                "constraints": ["ok", 3],
                "policies": {"allowed_capabilities": "write"},
                "output_contract": {"type": "object", "properties": {"x": {"type": "strng"}}},
                "extra": 1,
            }
        )
    fields = {p["field"] for p in caught.value.problems}
    assert fields == {
        "extra",
        "objective",
        "inputs",
        "constraints[1]",
        "policies.allowed_capabilities",
        "output_contract.properties.x.type",
    }
    assert "the task envelope is not valid" in caught.value.message
    assert "not a valid JSON Schema" in caught.value.message


def test_an_envelope_needs_an_output_contract() -> None:
    with pytest.raises(InvalidInputs, match="output_contract: required"):
        parse_envelope({"objective": "x"})


# --- registry -------------------------------------------------------------------------------------


def test_registry_lookup_names_the_known_capabilities() -> None:
    assert REGISTRY.get("write").id == "write"
    with pytest.raises(
        UnknownCapability, match=r"unknown capability 'nope': the registry has research, tag, write"
    ):
        REGISTRY.get("nope")


def test_registry_refuses_duplicates_and_bad_schemas() -> None:
    with pytest.raises(InvalidFlow, match="registered twice"):
        CapabilityRegistry([cap("a"), cap("a")])
    bad = Capability("b", "", {"type": "nope"}, OBJ, AgentImpl())
    with pytest.raises(InvalidFlow, match="capability b: input_schema is not a valid JSON Schema"):
        CapabilityRegistry([bad])
    with pytest.raises(InvalidFlow, match="not valid"):
        CapabilityRegistry([cap("has space")])


# --- planners -------------------------------------------------------------------------------------


def pv_envelope(**inputs: Any) -> TaskEnvelope:
    base = {"product": "Kettle", "brief": "Boils water quietly", "n": 2, "platform": "x", "constraints": []}
    return envelope({**base, **inputs})


def test_post_variants_rule_planner_infers_needs_and_context() -> None:
    plan = post_variants.functions["plan"]  # the code step: envelope in, plan out
    out = plan(SimpleNamespace(inputs={"product": "Kettle", "brief": "Boils", "n": 2, "platform": "x"}))
    assert out["planner"] == "rules"
    assert [(n["id"], n["needs"]) for n in out["nodes"]] == [
        ("audience-research", []),
        ("draft-copy", ["audience-research"]),
        ("hashtag-suggest", []),
    ]
    draft = out["nodes"][1]["context"]
    assert (
        draft["n"] == 2
        and draft["platform"] == "x"
        and "at most 280 characters per post" in draft["constraints"]
    )
    assert "n" not in out["nodes"][0]["context"]  # only the inputs its capability takes
    graph = validate_plan(out, capabilities, pv_envelope())
    assert graph.structuring and graph.final == "structure"
    assert graph.nodes[-1].needs == ("draft-copy", "hashtag-suggest")


def test_constraints_and_policies_drop_rules() -> None:
    rules = [
        Rule("audience-research", unless=("no research",)),
        Rule("draft-copy"),
        Rule("hashtag-suggest", keywords=("hashtag",)),
    ]
    plan = plan_by_rules(pv_envelope(constraints=["No research please"]), capabilities, rules)
    assert [(n["id"], n["needs"]) for n in plan["nodes"]] == [("draft-copy", []), ("hashtag-suggest", [])]
    denied = replace_policies(pv_envelope(), {"denied_capabilities": ["hashtag-suggest"]})
    assert [n["id"] for n in plan_by_rules(denied, capabilities, rules)["nodes"]] == [
        "audience-research",
        "draft-copy",
    ]
    quiet = TaskEnvelope(objective="posts", inputs=pv_envelope().inputs, output_contract=CONTRACT)
    assert "hashtag-suggest" not in [n["id"] for n in plan_by_rules(quiet, capabilities, rules)["nodes"]]


def replace_policies(env: TaskEnvelope, policies: Mapping[str, Any]) -> TaskEnvelope:
    return TaskEnvelope(env.objective, env.output_contract, env.inputs, env.constraints, policies)


# --- validate_plan --------------------------------------------------------------------------------


def test_a_valid_plan_whose_sink_covers_the_contract_has_no_structuring_node() -> None:
    graph = validate_plan(
        {"nodes": [node("research"), node("write", needs=["research"])]}, REGISTRY, ENVELOPE
    )
    assert not graph.structuring and graph.final == "write"
    assert [n.kind for n in graph.nodes] == ["agent", "agent"]


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        (
            {"nodes": [node("x", "nope")]},
            "node 'x' uses unknown capability 'nope' (the registry has research, tag, write)",
        ),
        (
            {"nodes": [node("research", needs=["write"]), node("write", needs=["research"])]},
            "the plan's needs form a cycle: research -> write -> research",
        ),
        (
            {"nodes": [node("write")]},
            "node 'write' (write) needs input 'facts', which neither the envelope inputs, its context nor "
            "the outputs of its needs (none) provide",
        ),
        ({"nodes": [node("research"), node("research")]}, "node id 'research' is used twice"),
        ({"nodes": [node("plan", "research")]}, "node id 'plan' is reserved"),
        (
            {"nodes": [node("write", needs=["ghost"])]},
            "node 'write' needs 'ghost', which is not a node of the plan",
        ),
        ({"nodes": []}, "the plan does not have the plan shape: nodes: [] should be non-empty"),
        ({"steps": []}, "the plan does not have the plan shape: nodes: 'nodes' is a required property"),
        ([], "the plan must be an object with a `nodes` list, got list"),
    ],
)
def test_invalid_plans_are_refused_with_the_reason(plan: Any, expected: str) -> None:
    problems = plan_problems(plan, REGISTRY, ENVELOPE)
    assert any(expected in p for p in problems), problems
    with pytest.raises(InvalidPlan) as caught:
        validate_plan(plan, REGISTRY, ENVELOPE)
    assert expected in caught.value.message


def test_context_and_policies_count_in_validation() -> None:
    # A context bundle may provide what a capability needs.
    assert plan_problems({"nodes": [node("write", facts="given")]}, REGISTRY, ENVELOPE) == []
    strict = replace_policies(ENVELOPE, {"allowed_capabilities": ["research"]})
    problems = plan_problems({"nodes": [node("tag")]}, REGISTRY, strict)
    assert problems == ["node 'tag' uses capability 'tag', which the policies forbid"]


# --- structuring decision -------------------------------------------------------------------------


def test_structuring_is_needed_unless_one_sink_has_the_contract_shape() -> None:
    text = REGISTRY.get("write").output_schema
    tags = REGISTRY.get("tag").output_schema
    assert not structuring_needed(CONTRACT, [text])
    assert structuring_needed(CONTRACT, [tags])  # required `text` is not produced
    assert structuring_needed(CONTRACT, [text, tags])  # two sinks must be combined
    assert structuring_needed({"type": "array"}, [text])  # another top-level type
    number = {"type": "object", "properties": {"text": {"type": "number"}}, "required": ["text"]}
    assert structuring_needed(CONTRACT, [number])  # same name, other type
    closed = {**CONTRACT, "additionalProperties": False}
    both = {"type": "object", "properties": {"text": {"type": "string"}, "x": {}}, "required": ["text"]}
    assert covers(closed, text)
    assert not covers(closed, both)  # `x` is a property the closed contract forbids
    assert covers({}, tags)


def test_the_contract_validator_is_compiled_once_per_schema() -> None:
    assert compiled(dict(CONTRACT)) is compiled({"required": ["text"], **CONTRACT})
    assert schema_errors(CONTRACT, {"text": 1}) == ["text: 1 is not of type 'string'"]
    assert schema_errors(CONTRACT, {}) == ["text: 'text' is a required property"]
    assert schema_errors(output_contract(2, "x"), {"variants": []}) == ["variants: [] is too short"]


def test_checked_engine_fails_the_attempt_with_the_errors() -> None:
    request = SimpleNamespace(output_schema=CONTRACT)
    engine = checked_engine(lambda request, ctx: {"text": 3})
    with pytest.raises(StepFailed) as caught:
        asyncio.run(engine(request, None))
    assert caught.value.retryable
    assert "text: 3 is not of type 'string'" in caught.value.message
    good = checked_engine(lambda request, ctx: SimpleNamespace(output={"text": "ok"}, engine="python"))
    assert asyncio.run(good(request, None)).output == {"text": "ok"}


# --- the expand hook ------------------------------------------------------------------------------


def view(
    key: str, status: StepStatus, *, output: Any = None, needs: Sequence[str] = (), **kw: Any
) -> StepView:
    return StepView(
        key=key, kind=kw.pop("kind", StepKind.AGENT), status=status, needs=tuple(needs), output=output, **kw
    )


def run_of(steps: Sequence[StepView], inputs: Mapping[str, Any] | None = None) -> RunView:
    envelope_inputs = inputs or {
        "objective": ENVELOPE.objective,
        "inputs": dict(ENVELOPE.inputs),
        "output_contract": CONTRACT,
    }
    return RunView(id="run_1", flow="f", status=RunStatus.RUNNING, inputs=envelope_inputs, steps=tuple(steps))


def flow_with(planner: Any = None, **options: Any) -> Flow:
    return plan_flow("planned", registry=REGISTRY, planner=planner, **options)


def expand(flow: Flow, steps: Sequence[StepView]) -> Expansion:
    return flow.expand(run_of(steps), steps[-1])


def test_a_valid_plan_inserts_its_nodes_and_the_plan_generated_event() -> None:
    plan = {"nodes": [node("research"), node("write", needs=["research"]), node("tag")]}
    flow = flow_with()
    out = expand(flow, [view("plan", S.SUCCEEDED, output=plan, kind=StepKind.CODE)])
    assert [s.key for s in out.new_steps] == ["research", "write", "tag", "structure"]
    structure = out.new_steps[-1]
    assert structure.needs == ("write", "tag") and structure.agent is not None
    assert structure.agent["output_schema"] == CONTRACT and structure.max_attempts == 3
    ((kind, payload),) = out.events
    assert kind == "plan.generated" and payload["planner"] == "rules"
    assert [n["id"] for n in payload["graph"]["nodes"]] == ["research", "write", "tag", "structure"]
    assert out.progress == {"stage": "executing", "completed": 0, "total": 4}
    assert out.finish is None


def test_code_nodes_need_the_planner_step_for_their_context() -> None:
    registry = CapabilityRegistry([cap("count", gives=["text"], code=True)])
    flow = plan_flow("coded", registry=registry)
    planned = view("plan", S.SUCCEEDED, output={"nodes": [node("count")]})
    out = flow.expand(run_of([planned]), planned)
    (step,) = out.new_steps
    assert step.kind is StepKind.CODE and step.needs == ("plan",) and step.handler == "cap.count"
    assert "cap.count" in flow.functions


def test_an_invalid_rule_plan_fails_the_run_with_the_reason() -> None:
    out = expand(flow_with(), [view("plan", S.SUCCEEDED, output={"nodes": [node("x", "nope")]})])
    assert out.finish is not None and not out.finish.succeeded
    assert "unknown capability 'nope'" in out.finish.reason
    assert out.new_steps == ()


def test_an_invalid_agent_plan_is_planned_again_once() -> None:
    flow = flow_with(AgentPlanner(engine="offline"))
    assert flow.steps[0].key == "plan" and flow.steps[0].kind is StepKind.AGENT
    assert flow.steps[0].agent is not None and flow.steps[0].agent["output_schema"] == PLAN_SCHEMA
    bad = {"nodes": [node("x", "nope")]}
    out = expand(flow, [view("plan", S.SUCCEEDED, output=bad)])
    (replan,) = out.new_steps
    assert replan.key == "replan" and "unknown capability 'nope'" in (replan.prompt or "")
    assert out.finish is None
    again = expand(flow, [view("plan", S.SUCCEEDED, output=bad), view("replan", S.SUCCEEDED, output=bad)])
    assert again.finish is not None and not again.finish.succeeded and again.new_steps == ()


def test_a_failed_planner_fails_the_run() -> None:
    out = expand(flow_with(), [view("plan", S.FAILED, error="boom")])
    assert out.finish is not None and out.finish.reason == "planning failed: boom"


def test_an_invalid_envelope_fails_the_run_instead_of_raising() -> None:
    flow = flow_with()
    steps = [view("plan", S.SUCCEEDED, output={"nodes": [node("research")]})]
    out = flow.expand(run_of(steps, {"objective": ""}), steps[0])
    assert out.finish is not None and "the task envelope is not valid" in out.finish.reason


def nodes_done(final_status: StepStatus = S.SUCCEEDED, final_output: Any = None, **kw: Any) -> list[StepView]:
    return [
        view("plan", S.SUCCEEDED, kind=StepKind.CODE),
        view("research", S.SUCCEEDED, output={"facts": "f"}),
        view("tag", S.SUCCEEDED, output={"tags": "t"}),
        view("structure", final_status, output=final_output, needs=["research", "tag"], **kw),
    ]


def test_a_valid_final_output_finishes_the_run_with_it() -> None:
    out = expand(flow_with(), nodes_done(final_output={"text": "done"}))
    assert out.finish is not None and out.finish.succeeded and out.finish.result == {"text": "done"}
    assert out.finish.reason == "output matches the contract"


def test_a_node_finishing_reports_progress_only() -> None:
    steps = nodes_done(S.PENDING)
    out = flow_with().expand(run_of(steps), steps[1])
    assert out == Expansion(progress={"stage": "executing", "completed": 2, "total": 3})
    failed = view("research", S.FAILED, error="x")
    assert flow_with().expand(run_of([*steps, failed]), failed) == Expansion()


def test_a_structuring_node_that_failed_for_good_is_escalated_to_a_person() -> None:
    error = "the output does not match the output schema: text: 'text' is a required property"
    out = expand(flow_with(), nodes_done(S.FAILED, error=error, attempt=2))
    assert out.skip == ("structure",)
    (review,) = out.new_steps
    assert review.key == "review-output" and review.kind is StepKind.INPUT and review.needs == ()
    assert review.schema == CONTRACT
    assert review.prompt is not None and review.prompt.startswith("fix or approve this output")
    assert "after 2 attempt(s)" in review.prompt and "'text' is a required property" in review.prompt
    assert out.finish is None and out.progress == {"stage": "review"}


def test_a_sink_whose_output_fails_the_contract_is_escalated_without_skipping() -> None:
    steps = [view("plan", S.SUCCEEDED), view("write", S.SUCCEEDED, output={"text": 5})]
    out = expand(flow_with(), steps)
    assert out.skip == () and [s.key for s in out.new_steps] == ["review-output"]
    assert "text: 5 is not of type 'string'" in (out.new_steps[0].prompt or "")


def test_the_answer_to_the_review_finishes_the_run_without_replanning() -> None:
    steps = [
        *nodes_done(S.SKIPPED),
        view("review-output", S.SUCCEEDED, output={"text": "by hand"}, kind=StepKind.INPUT),
    ]
    out = expand(flow_with(), steps)
    assert out.new_steps == () and out.finish is not None and out.finish.succeeded
    assert out.finish.result == {"text": "by hand"}


def test_final_node_is_structure_or_the_single_sink() -> None:
    assert final_node([view("plan", S.SUCCEEDED)]) is None
    assert final_node(nodes_done()) == "structure"
    assert (
        final_node([view("plan", S.SUCCEEDED), view("a", S.PENDING), view("b", S.PENDING, needs=["a"])])
        == "b"
    )


def test_plan_flow_refuses_a_code_capability_without_its_function() -> None:
    registry = CapabilityRegistry([Capability("c", "", OBJ, OBJ, CodeImpl("missing"))])
    with pytest.raises(InvalidFlow, match="names function 'missing'"):
        plan_flow("broken", registry=registry)
    assert "cap.c" in plan_flow("ok", registry=registry, functions={"missing": lambda call: {}}).functions


def test_post_variants_contract_and_envelope() -> None:
    env = pv_envelope(n=3, platform="linkedin")
    assert env.objective.startswith("3 social post variants")
    assert parse_envelope(env) == env
    variant = {"text": "hi", "platform": "linkedin", "hashtags": ["#a"]}
    assert schema_errors(env.output_contract, {"variants": [variant] * 3}) == []
    (error,) = schema_errors(env.output_contract, {"variants": [variant] * 2})
    assert error.startswith("variants: ") and error.endswith("is too short")
