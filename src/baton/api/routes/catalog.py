"""/v1/flows and /v1/agents: what can be launched, with input schemas, categories and bands."""

from __future__ import annotations

from fastapi import APIRouter

from baton.api.dependencies import Caller, Rt
from baton.api.schemas import AgentOut, FlowOut, FlowStepOut
from baton.domain.errors import NotFound, UnknownFlow
from baton.engine.agent_step import declared_agents, effective_engine_spec
from baton.flows.spec import Flow

router = APIRouter(prefix="/v1", tags=["catalog"])


def flow_out(flow: Flow) -> FlowOut:
    return FlowOut(
        name=flow.name,
        title=flow.title or flow.name,
        description=flow.description,
        category=flow.category,
        version=flow.version,
        bands=list(flow.bands or ["small", "medium", "large"]),
        band_details={name: dict(band or {}) for name, band in flow.bands.items()},
        input_schema=dict(flow.input_schema),
        require_confirmation=flow.require_confirmation,
        steps=[
            FlowStepOut(
                key=s.key, kind=s.kind.value, needs=list(s.needs), engine=s.engine, label=s.label or s.key
            )
            for s in flow.steps
        ],
    )


@router.get("/flows", response_model=list[FlowOut], operation_id="list_flows")
async def list_flows(_who: Caller, rt: Rt) -> list[FlowOut]:
    return [flow_out(flow) for flow in rt.catalog]


@router.get("/flows/{name}", response_model=FlowOut, operation_id="get_flow")
async def get_flow(name: str, _who: Caller, rt: Rt) -> FlowOut:
    try:
        return flow_out(rt.catalog.get(name))
    except UnknownFlow as error:
        raise NotFound(error.message) from None


@router.get("/agents", response_model=list[AgentOut], operation_id="list_agents")
async def list_agents(_who: Caller, rt: Rt) -> list[AgentOut]:
    """Declared agents (BATON_AGENTS), then every agent step of the loaded flows, with its engine."""
    declared = [
        AgentOut(
            name=spec.name,
            flow=None,
            engine=effective_engine_spec(spec.engine),
            prompt="",
            description=spec.description,
            tools=list(spec.tools),
            output_schema=dict(spec.output_schema) if spec.output_schema else None,
        )
        for spec in declared_agents()
    ]
    steps = []
    for flow in rt.catalog:
        for step in flow.steps:
            if step.kind.value != "agent":
                continue
            agent = dict(step.agent or {})
            steps.append(
                AgentOut(
                    name=step.key,
                    flow=flow.name,
                    engine=effective_engine_spec(str(agent.get("engine") or step.engine or "default")),
                    prompt=step.prompt or "",
                    tools=list(agent.get("tools") or []),
                    output_schema=agent.get("output_schema"),
                )
            )
    return declared + steps
