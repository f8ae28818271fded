"""Prepare an agent step: pick its engine, enforce the read-only policy fail-closed, offer allowed tools."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from baton.agents.base import Engine, PolicyRefused, StepRequest, ToolSpec
from baton.agents.personas import AgentCatalog, default_agent_sources, load_agent_sources, resolve_engine_spec
from baton.agents.registry import resolve_engine
from baton.domain.events import EventDraft
from baton.domain.policy import Policy
from baton.flows.spec import Flow


def effective_engine_spec(declared: str | None) -> str:
    """`default` (or nothing) means BATON_DEFAULT_ENGINE, else the offline engine."""
    return resolve_engine_spec(declared)


@dataclass(frozen=True)
class AgentPlan:
    engine: Engine
    request: StepRequest
    #: policy.denied and step.engine events to record before the engine starts
    events: list[EventDraft] = field(default_factory=list)


def policy_of(snapshot: Mapping[str, Any] | None) -> Policy:
    effective = (snapshot or {}).get("effective") or {}
    engines = effective.get("allowed_engines")
    return Policy(
        read_only=bool(effective.get("read_only")),
        require_confirmation=bool(effective.get("require_confirmation")),
        allowed_engines=tuple(engines) if engines is not None else None,
        max_steps=effective.get("max_steps"),
        max_tokens=effective.get("max_tokens"),
        step_timeout_s=effective.get("step_timeout_s"),
    )


def agent_fields(row: Any) -> Mapping[str, Any]:
    """The step's agent fields, over those of the declared agent it names (the step's win)."""
    spec: Mapping[str, Any] = row.spec or {}
    agent: Mapping[str, Any] = spec.get("agent") or {}
    if agent.get("ref"):
        declared = declared_agents().get(str(agent["ref"])).to_json()
        agent = {**declared, **{k: v for k, v in agent.items() if k != "ref"}}
    return agent


def engine_spec_of(row: Any, agent: Mapping[str, Any] | None = None) -> str:
    """The engine an agent step will run on (before the policy is asked); `agent`: its agent_fields."""
    spec: Mapping[str, Any] = row.spec or {}
    fields = agent_fields(row) if agent is None else agent
    return effective_engine_spec(str(fields.get("engine") or spec.get("engine") or "default"))


def plan_agent_step(
    row: Any,
    flow: Flow,
    inputs: Mapping[str, Any],
    upstream: Mapping[str, Any],
    policy: Policy,
    run_id: str,
) -> AgentPlan:
    """Everything an agent step needs, or PolicyRefused before any engine starts."""
    spec: Mapping[str, Any] = row.spec or {}
    agent = agent_fields(row)
    engine_spec = engine_spec_of(row, agent)
    if not engine_spec.startswith("function:") and not policy.allows_engine(engine_spec):
        raise PolicyRefused(
            f"engine {engine_spec!r} is not in the policy's allowed_engines "
            f"({', '.join(policy.allowed_engines or ()) or 'none'}); no other engine is used instead",
            rule="allowed_engines",
        )
    engine = resolve_engine(engine_spec, flow.functions)
    if policy.read_only and not engine.supports_read_only():
        raise PolicyRefused(
            f"the run's policy is read-only and engine {engine_spec!r} cannot prove a read-only mode; "
            "the step is refused rather than run with write access (declare read_only_args for a cli engine)",
            rule="read_only",
        )
    workspace = _workspace(inputs)
    offered, denied = _tools(tuple(agent.get("tools") or ()), workspace, policy.read_only)
    events = [
        EventDraft(
            "policy.denied",
            {"rule": denial.rule, "tool": denial.name, "reason": denial.message},
            step_key=row.key,
            attempt=row.attempt,
        )
        for denial in denied
    ]
    mode = "read-only" if policy.read_only else "read-write"
    events.append(
        EventDraft(
            "step.engine",
            {
                "engine": engine_spec,
                "mode": mode,
                "offline": engine_spec == "offline",
                "tools": [t.name for t in offered],
            },
            step_key=row.key,
            attempt=row.attempt,
        )
    )
    request = StepRequest(
        agent=str(agent.get("name") or row.key),
        prompt=str(spec.get("prompt") or ""),
        inputs=inputs,
        upstream=upstream,
        engine=engine_spec,
        persona=str(agent.get("persona") or ""),
        settings=dict(agent.get("model_settings") or {}),
        output_schema=agent.get("output_schema") or spec.get("output_schema"),
        tools=offered,
        read_only=policy.read_only,
        workspace=workspace,
        attempt=row.attempt,
        feedback=row.error if row.attempt > 1 else None,
        idempotency_key=f"{run_id}:{row.key}",
    )
    return AgentPlan(engine=engine, request=request, events=events)


@lru_cache(maxsize=1)
def declared_agents() -> AgentCatalog:
    """The agents of BATON_AGENTS (agents.yaml files and persona folders), loaded once per process."""
    return load_agent_sources(default_agent_sources())


def _workspace(inputs: Mapping[str, Any]) -> str | None:
    for key in ("workspace", "path"):
        value = inputs.get(key)
        if isinstance(value, str) and value:
            return os.path.abspath(os.path.expanduser(value))
    return os.environ.get("BATON_WORKSPACE") or None


def _tools(
    names: tuple[str, ...], workspace: str | None, read_only: bool
) -> tuple[tuple[ToolSpec, ...], list[Any]]:
    """Deny by default: only named tools exist for the step; a read-only policy drops writers."""
    if not names:
        return (), []
    from baton.agents import tools as tool_registry

    specs = tool_registry.get_tools(names, workspace=workspace)
    offered, denied = tool_registry.allowed_tools(specs, read_only_policy=read_only)
    return tuple(offered), list(denied)
