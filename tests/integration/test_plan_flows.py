"""Planned flows end to end on SQLite and PostgreSQL: plan, nodes, contract, escalation, bad plans."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from baton.domain.errors import InvalidInputs
from baton.engine.lifecycle import RunRequest
from baton.engine.worker import WorkerSettings
from baton.examples.post_variants import output_contract, post_variants
from baton.flows.catalog import Catalog
from baton.flows.plan import (
    AgentImpl,
    AgentPlanner,
    Capability,
    CapabilityRegistry,
    CodeImpl,
    NodeCall,
    TaskEnvelope,
    plan_flow,
    schema_errors,
)
from baton.runtime import Runtime, open_runtime
from baton.store.events import events_after

#: executions of each node callable, per test
CALLS: Counter[str] = Counter()
#: the `feedback` each structuring attempt received
FEEDBACK: list[str | None] = []

CONTRACT = {
    "type": "object",
    "properties": {"summary": {"type": "string", "minLength": 1}},
    "required": ["summary"],
    "additionalProperties": False,
}


def research(call: NodeCall) -> dict[str, Any]:
    CALLS["research"] += 1
    return {"facts": [f"{call.inputs['topic']} is brewed", f"context says {call.context.get('depth')}"]}


def draft(request: Any, ctx: Any) -> dict[str, Any]:
    CALLS["draft"] += 1
    assert "research" in request.upstream  # the node's needs reach the agent
    return {"text": "tea, drafted from " + ", ".join(request.upstream["research"]["facts"])}


def stubborn_structurer(request: Any, ctx: Any) -> dict[str, Any]:
    """Answers with the wrong shape every time, whatever the feedback says."""
    CALLS["structure"] += 1
    FEEDBACK.append(request.feedback)
    return {"headline": "not what the contract wants"}


def planner_agent(request: Any, ctx: Any) -> dict[str, Any]:
    """A planner that gets it wrong, then right once its problems are sent back."""
    CALLS["planner"] += 1
    if "previous plan was refused" in request.prompt:
        return {"nodes": [{"id": "research", "capability": "research", "context": {"depth": "deep"}}]}
    return {"nodes": [{"id": "research", "capability": "researhc"}]}


REGISTRY = CapabilityRegistry(
    [
        Capability(
            id="research",
            description="facts about the topic",
            input_schema={
                "type": "object",
                "properties": {"topic": {"type": "string"}},
                "required": ["topic"],
            },
            output_schema={
                "type": "object",
                "properties": {"facts": {"type": "array"}},
                "required": ["facts"],
            },
            implementation=CodeImpl(research),
        ),
        Capability(
            id="draft",
            description="a draft from the facts",
            input_schema={
                "type": "object",
                "properties": {"facts": {"type": "array"}},
                "required": ["facts"],
            },
            output_schema={
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
            implementation=AgentImpl(engine=draft, max_attempts=1),
        ),
    ]
)


def fixed_planner(*nodes: Mapping[str, Any]) -> Any:
    def planner(envelope: TaskEnvelope, registry: CapabilityRegistry) -> dict[str, Any]:
        return {"nodes": [dict(n) for n in nodes]}

    return planner


escalating = plan_flow(
    "escalating",
    registry=REGISTRY,
    planner=fixed_planner(
        {"id": "research", "capability": "research", "context": {"depth": "shallow"}},
        {"id": "draft", "capability": "draft", "needs": ["research"]},
    ),
    structuring_engine=stubborn_structurer,
    structuring_attempts=2,
    structuring_backoff_s=0,
)
unknown_capability = plan_flow(
    "unknown-capability",
    registry=REGISTRY,
    planner=fixed_planner({"id": "spell", "capability": "magic"}),
)
cyclic = plan_flow(
    "cyclic",
    registry=REGISTRY,
    planner=fixed_planner(
        {"id": "research", "capability": "research", "needs": ["draft"]},
        {"id": "draft", "capability": "draft", "needs": ["research"]},
    ),
)
replanned = plan_flow("replanned", registry=REGISTRY, planner=AgentPlanner(engine=planner_agent, backoff_s=0))

ENVELOPE = {"objective": "summarise tea", "inputs": {"topic": "tea"}, "output_contract": CONTRACT}
WORKER = WorkerSettings(lease_s=5, poll_s=0.05)


def catalog() -> Catalog:
    return Catalog([post_variants, escalating, unknown_capability, cyclic, replanned])


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    FEEDBACK.clear()


async def drive(rt: Runtime, flow: str, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    run = await rt.lifecycle.create_run(RunRequest(flow=flow, inputs=inputs))
    await rt.worker(WORKER).run(until_idle=True)
    return await snapshot(rt, run["id"])


async def snapshot(rt: Runtime, run_id: str) -> tuple[dict[str, Any], list[Any]]:
    return await rt.lifecycle.get_run(run_id), await rt.db.read(events_after, run_id, 0, 10_000)


def seq_of(events: list[Any], kind: str, step_key: str | None = None) -> int:
    return next(e.seq for e in events if e.type == kind and (step_key is None or e.step_key == step_key))


async def test_post_variants_plans_then_runs_its_nodes_to_a_valid_result(database_url: str) -> None:
    async with open_runtime(database_url, catalog=catalog(), upgrade=False) as rt:
        run, events = await drive(rt, "post-variants", {"n": 2, "platform": "x", "product": "Kettle"})
    assert run["status"] == "succeeded", run["status_reason"]
    assert run["status_reason"] == "output matches the contract"
    assert schema_errors(output_contract(2, "x"), run["result"]) == []
    assert len(run["result"]["variants"]) == 2
    assert {v["platform"] for v in run["result"]["variants"]} == {"x"}

    generated = [e for e in events if e.type == "plan.generated"]
    assert len(generated) == 1
    graph = generated[0].payload["graph"]
    assert [n["id"] for n in graph["nodes"]] == [
        "audience-research",
        "draft-copy",
        "hashtag-suggest",
        "structure",
    ]
    assert graph["final"] == "structure" and graph["structuring"] is True
    node_keys = {n["id"] for n in graph["nodes"]}
    first_node_start = min(e.seq for e in events if e.type == "step.started" and e.step_key in node_keys)
    assert seq_of(events, "step.succeeded", "plan") < generated[0].seq < first_node_start
    assert events[-1].type == "run.succeeded"

    steps = {s["key"]: s for s in run["steps"]}
    assert steps["hashtag-suggest"]["output"]["hashtags"][0] == "#Kettle"
    assert steps["draft-copy"]["needs"] == ["audience-research"]
    assert run["progress"]["stage"] == "done"
    assert "## Variant 2" in run["report"]


async def test_contract_failure_retries_then_escalates_and_the_answer_finishes_the_run(
    database_url: str,
) -> None:
    async with open_runtime(database_url, catalog=catalog(), upgrade=False) as rt:
        run, events = await drive(rt, "escalating", ENVELOPE)
        assert run["status"] == "waiting_for_input", run["status_reason"]
        steps = {s["key"]: s for s in run["steps"]}
        assert steps["structure"]["status"] == "skipped"
        assert steps["review-output"]["status"] == "waiting"

        # Two attempts; the second was told why the first failed.
        assert CALLS["structure"] == 2
        assert FEEDBACK[0] is None
        assert FEEDBACK[1] is not None
        assert "summary: 'summary' is a required property" in FEEDBACK[1]
        assert "additional properties are not allowed" in FEEDBACK[1].lower()
        assert [e.payload["next_attempt"] for e in events if e.type == "step.retrying"] == [2]

        (request,) = run["pending_inputs"]
        assert request["schema"] == CONTRACT
        assert request["prompt"].startswith("fix or approve this output")
        assert "'summary' is a required property" in request["prompt"]
        assert seq_of(events, "plan.generated") < seq_of(events, "input.requested")

        with pytest.raises(InvalidInputs, match="does not match its schema"):
            await rt.lifecycle.answer(request["id"], {"headline": "still wrong"})
        await rt.lifecycle.answer(request["id"], {"summary": "Tea, fixed by a person."})
        await rt.worker(WORKER).run(until_idle=True)
        run, events = await snapshot(rt, run["id"])

    assert run["status"] == "succeeded", run["status_reason"]
    assert run["result"] == {"summary": "Tea, fixed by a person."}
    assert "approved by a person" in run["status_reason"]
    # Nothing planned again, no finished node run again.
    assert CALLS == Counter({"research": 1, "draft": 1, "structure": 2})
    assert [e.type for e in events].count("plan.generated") == 1
    assert [e.type for e in events].count("step.started") == 5  # plan, research, draft, structure x2
    assert (
        seq_of(events, "input.requested") < seq_of(events, "input.answered") < seq_of(events, "run.succeeded")
    )
    research_out = next(s for s in run["steps"] if s["key"] == "research")["output"]
    assert research_out["facts"][1] == "context says shallow"  # the node's context bundle reached it


@pytest.mark.parametrize(
    ("flow", "reason"),
    [
        (
            "unknown-capability",
            "node 'spell' uses unknown capability 'magic' (the registry has draft, research)",
        ),
        ("cyclic", "the plan's needs form a cycle: research -> draft -> research"),
    ],
)
async def test_an_invalid_plan_fails_the_run_naming_the_problem(
    database_url: str, flow: str, reason: str
) -> None:
    async with open_runtime(database_url, catalog=catalog(), upgrade=False) as rt:
        run, events = await drive(rt, flow, ENVELOPE)
    assert run["status"] == "failed"
    assert reason in run["status_reason"]
    assert [s["key"] for s in run["steps"]] == ["plan"]  # no node was inserted
    assert "plan.generated" not in [e.type for e in events]
    assert sum(CALLS.values()) == 0


async def test_an_agent_plan_that_is_refused_is_planned_again_once(database_url: str) -> None:
    async with open_runtime(database_url, catalog=catalog(), upgrade=False) as rt:
        run, events = await drive(rt, "replanned", ENVELOPE)
    assert run["status"] == "succeeded", run["status_reason"]
    assert CALLS["planner"] == 2
    steps = {s["key"]: s for s in run["steps"]}
    assert steps["plan"]["status"] == "succeeded" and steps["replan"]["status"] == "succeeded"
    assert "unknown capability 'researhc'" in steps["replan"]["spec"]["prompt"]
    (generated,) = [e for e in events if e.type == "plan.generated"]
    assert generated.payload["planner"] == "agent" and generated.payload["planned_by"] == "replan"
    assert steps["research"]["needs"] == ["replan"]
    assert steps["research"]["output"]["facts"][1] == "context says deep"


async def test_an_envelope_with_a_broken_contract_is_refused_at_creation(database_url: str) -> None:
    async with open_runtime(database_url, catalog=catalog(), upgrade=False) as rt:
        with pytest.raises(InvalidInputs, match=r"output_contract\.type"):
            await rt.lifecycle.create_run(
                RunRequest(flow="escalating", inputs={**ENVELOPE, "output_contract": {"type": "text"}})
            )
