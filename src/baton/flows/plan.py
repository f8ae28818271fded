"""Planned flows: a task envelope becomes a validated plan graph over a capability registry.

A plan flow's first step, `plan`, turns the run's task envelope (objective, inputs, constraints,
policies, output contract) into a plan: nodes `{id, capability, needs, context}`. The flow's pure
`expand` hook then validates the plan (unknown capability, duplicate id, cycle, unmet input),
inserts its nodes as steps with a `plan.generated` event, and, when no capability produces the
contract's shape, a final `structure` agent step whose output schema is the contract. The final
output is checked against the contract (compiled once per schema); a structuring step that keeps
failing it is escalated to a person (`review-output`), whose answer finishes the run without
re-planning and without running a finished node again. See DESIGN.md "One engine for every kind
of flow".

The planner is either a pure function (the rule-based planner is the offline default) run as a
code step, or an agent (`AgentPlanner`) whose output is the plan JSON; a plan an agent produced
gets one re-plan (`replan`) with the problems fed back, a rule-based plan fails the run at once.

Past the 800-line budget on purpose, for now: the envelope, the capability registry, the plan
checks and the hook were written together as one owned file; split them by noun (envelope,
capabilities, plan hook) when the file next grows.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from baton.domain.errors import BatonError, InvalidFlow, InvalidInputs, StepFailed, UsageError
from baton.domain.models import RunView, StepView
from baton.domain.status import StepKind, StepStatus
from baton.flows.spec import Expansion, Finish, Flow, StepFunction, StepSpec, find_cycle

S = StepStatus

#: The step keys a plan flow uses itself; plan nodes may not take them.
PLAN, REPLAN, STRUCTURE, REVIEW = "plan", "replan", "structure", "review-output"
RESERVED = frozenset({PLAN, REPLAN, STRUCTURE, REVIEW})
_NODE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")

_METASCHEMA = "https://json-schema.org/draft/2020-12/schema"

#: The input schema of a plan flow whose run inputs are the task envelope itself.
ENVELOPE_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "objective": {"type": "string", "minLength": 1, "description": "what the run must achieve"},
        "inputs": {"type": "object", "default": {}, "description": "values the plan's nodes work from"},
        "constraints": {"type": "array", "items": {"type": "string"}, "default": []},
        "policies": {"type": "object", "default": {}},
        "output_contract": {"$ref": _METASCHEMA, "description": "JSON Schema of the run's result"},
    },
    "required": ["objective", "output_contract"],
    "additionalProperties": False,
}

#: What a planner (an agent's output, or a planner function's return) must look like.
PLAN_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "nodes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "capability": {"type": "string"},
                    "needs": {"type": "array", "items": {"type": "string"}},
                    "context": {"type": "object"},
                    "reason": {"type": "string"},
                },
                "required": ["id", "capability"],
            },
        },
    },
    "required": ["nodes"],
}


class UnknownCapability(UsageError):
    """No capability with that id is registered."""

    status_code = 422


class InvalidPlan(UsageError):
    """The plan cannot be run as given; `problems` lists every reason."""

    status_code = 422

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.problems))


# --- JSON Schema, compiled once per schema ----------------------------------------------------

_VALIDATORS: dict[str, Validator] = {}
_CACHE_LIMIT = 256


def compiled(schema: Mapping[str, Any] | bool) -> Validator:
    """A checked, compiled validator for `schema`, cached by a hash of its canonical JSON.

    Pure from the caller's view: the cache only saves recompiling one contract for every node of
    a run (and every run of a flow). Raises SchemaError when `schema` is not a JSON Schema.
    """
    plain = _plain(schema)
    key = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()
    found = _VALIDATORS.get(key)
    if found is None:
        cls = validator_for(plain, default=Draft202012Validator)
        cls.check_schema(plain)
        found = cls(plain, format_checker=cls.FORMAT_CHECKER)
        if len(_VALIDATORS) >= _CACHE_LIMIT:
            _VALIDATORS.pop(next(iter(_VALIDATORS)))
        _VALIDATORS[key] = found
    return found


def schema_errors(schema: Mapping[str, Any] | bool, value: Any, limit: int = 10) -> list[str]:
    """Why `value` fails `schema`, one `field: message` per error (empty when it is valid)."""
    errors = sorted(compiled(schema).iter_errors(_plain(value)), key=lambda e: [str(p) for p in e.path])
    shown = [f"{_field(e)}: {_short(e.message)}" for e in errors[:limit]]
    if len(errors) > limit:
        shown.append(f"(and {len(errors) - limit} more)")
    return shown


# --- the task envelope ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskEnvelope:
    """What a caller asks of a planned run. Build it with `parse_envelope` to have it checked."""

    objective: str
    #: JSON Schema the run's result must satisfy
    output_contract: Mapping[str, Any]
    inputs: Mapping[str, Any] = field(default_factory=dict)
    #: free-text constraints the planner and the agents must respect ("no emojis", "no research")
    constraints: tuple[str, ...] = ()
    #: governance of the plan: `allowed_capabilities` / `denied_capabilities` (lists of ids), …
    policies: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "inputs": _plain(self.inputs),
            "constraints": list(self.constraints),
            "policies": _plain(self.policies),
            "output_contract": _plain(self.output_contract),
        }


_ENVELOPE_FIELDS = ("objective", "inputs", "constraints", "policies", "output_contract")


def parse_envelope(data: TaskEnvelope | Mapping[str, Any]) -> TaskEnvelope:
    """The envelope, checked; InvalidInputs names every failing field otherwise."""
    raw = data.to_json() if isinstance(data, TaskEnvelope) else data
    if not isinstance(raw, Mapping):
        raise InvalidInputs(f"the task envelope must be an object, got {type(raw).__name__}")
    problems: list[dict[str, Any]] = []

    def problem(where: str, message: str) -> None:
        problems.append({"field": where, "message": message})

    for name in raw:
        if name not in _ENVELOPE_FIELDS:
            problem(str(name), f"unexpected field (allowed: {', '.join(_ENVELOPE_FIELDS)})")
    objective = raw.get("objective")
    if not isinstance(objective, str) or not objective.strip():
        problem("objective", "required: a non-empty string saying what the run must achieve")
    inputs = _or(raw.get("inputs"), {})
    if not isinstance(inputs, Mapping):
        problem("inputs", f"must be an object, got {type(inputs).__name__}")
    constraints = _or(raw.get("constraints"), ())
    if isinstance(constraints, str):
        constraints = (constraints,)
    if not isinstance(constraints, list | tuple):
        problem("constraints", f"must be a list of strings, got {type(constraints).__name__}")
        constraints = ()
    for index, item in enumerate(constraints):
        if not isinstance(item, str):
            problem(f"constraints[{index}]", f"must be a string, got {type(item).__name__}")
    policies = _or(raw.get("policies"), {})
    if not isinstance(policies, Mapping):
        problem("policies", f"must be an object, got {type(policies).__name__}")
        policies = {}
    for name in ("allowed_capabilities", "denied_capabilities"):
        listed = policies.get(name)
        if listed is not None and (
            not isinstance(listed, list | tuple) or not all(isinstance(i, str) for i in listed)
        ):
            problem(f"policies.{name}", "must be a list of capability ids")
    contract = raw.get("output_contract")
    if contract is None:
        problem("output_contract", "required: a JSON Schema the run's result must satisfy")
    elif not isinstance(contract, Mapping):
        problem("output_contract", f"must be a JSON Schema object, got {type(contract).__name__}")
    else:
        try:
            compiled(contract)
        except SchemaError as error:
            where = _path(["output_contract", *error.path])
            problem(where, f"not a valid JSON Schema: {_short(error.message)}")
    if problems:
        shown = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise InvalidInputs(f"the task envelope is not valid: {shown}", problems)
    return TaskEnvelope(
        objective=str(objective).strip(),
        output_contract=_plain(contract),
        inputs=_plain(inputs),
        constraints=tuple(str(c) for c in constraints),
        policies=_plain(policies),
    )


# --- capabilities -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentImpl:
    """A capability an agent performs. `engine` is a spec string or a callable `fn(request, ctx)`."""

    engine: str | StepFunction = "default"
    prompt: str = ""
    persona: str = ""
    tools: tuple[str, ...] = ()
    settings: Mapping[str, Any] | None = None
    max_attempts: int = 3
    backoff_s: float = 1.0
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class CodeImpl:
    """A capability a Python function performs: `fn(call: NodeCall)` returns the node's output.

    `function` is the callable, or the name of one given to `plan_flow(functions=...)`.
    """

    function: str | StepFunction
    max_attempts: int = 1
    backoff_s: float = 1.0
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class NodeCall:
    """What a code capability receives when its node runs."""

    node: str
    capability: str
    #: the envelope's inputs, then the node's context bundle, then its upstream outputs' fields
    inputs: Mapping[str, Any]
    context: Mapping[str, Any]
    #: outputs of the node's needs, by node id
    upstream: Mapping[str, Any]
    envelope: TaskEnvelope
    #: the running step (emit, log, artifact, cancelled; see baton.agents.base.StepContext)
    step: Any


@dataclass(frozen=True, slots=True)
class Capability:
    """Something a plan node can do: its id, what it needs and produces, and who does it."""

    id: str
    description: str
    input_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any]
    implementation: AgentImpl | CodeImpl

    @property
    def kind(self) -> str:
        return "agent" if isinstance(self.implementation, AgentImpl) else "code"

    def describe(self) -> dict[str, Any]:
        """The capability as a planner (or a person) reads it."""
        return {
            "id": self.id,
            "description": self.description,
            "kind": self.kind,
            "input_schema": _plain(self.input_schema),
            "output_schema": _plain(self.output_schema),
        }


class CapabilityRegistry:
    """Capabilities by id; schemas are checked and ids are unique."""

    def __init__(self, capabilities: Iterable[Capability] = ()) -> None:
        self._by_id: dict[str, Capability] = {}
        for capability in capabilities:
            self.add(capability)

    def add(self, capability: Capability) -> Capability:
        if not _NODE_ID.match(capability.id):
            raise InvalidFlow(
                f"capability id {capability.id!r} is not valid: use letters, digits, '_', '.', '-'"
            )
        if capability.id in self._by_id:
            raise InvalidFlow(f"capability {capability.id!r} is registered twice")
        for what in ("input_schema", "output_schema"):
            try:
                compiled(getattr(capability, what))
            except SchemaError as error:
                where = _path(error.path)
                raise InvalidFlow(
                    f"capability {capability.id}: {what} is not a valid JSON Schema"
                    f"{' at ' + where if where else ''}: {_short(error.message)}"
                ) from None
        self._by_id[capability.id] = capability
        return capability

    def get(self, capability_id: str) -> Capability:
        try:
            return self._by_id[capability_id]
        except KeyError:
            raise UnknownCapability(
                f"unknown capability {capability_id!r}: the registry has {', '.join(self.ids()) or 'none'}"
            ) from None

    def ids(self) -> list[str]:
        return sorted(self._by_id)

    def describe(self) -> list[dict[str, Any]]:
        return [self._by_id[i].describe() for i in self.ids()]

    def __contains__(self, capability_id: object) -> bool:
        return capability_id in self._by_id

    def __iter__(self) -> Iterator[Capability]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)


# --- plans ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanNode:
    id: str
    capability: str
    needs: tuple[str, ...] = ()
    #: the bundle of values this node works from (a subset of the envelope's inputs, hints, …)
    context: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    #: "agent", "code" or "structuring"
    kind: str = ""

    def to_json(self) -> dict[str, Any]:
        data = {
            "id": self.id,
            "capability": self.capability,
            "needs": list(self.needs),
            "context": _plain(self.context),
            "kind": self.kind,
        }
        if self.reason:
            data["reason"] = self.reason
        return data


@dataclass(frozen=True, slots=True)
class PlanGraph:
    """A validated plan, with the structuring node when the contract needs one."""

    nodes: tuple[PlanNode, ...]
    #: the node whose output is the run's result
    final: str
    structuring: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [n.to_json() for n in self.nodes],
            "final": self.final,
            "structuring": self.structuring,
        }


def plan_problems(plan: Any, registry: CapabilityRegistry, envelope: TaskEnvelope) -> list[str]:
    """Every reason the plan cannot run: shape, duplicate or reserved ids, unknown or denied
    capabilities, needs naming no node, cycles, and inputs nobody provides. Pure."""
    if not isinstance(plan, Mapping):
        return [f"the plan must be an object with a `nodes` list, got {type(plan).__name__}"]
    shape = schema_errors(PLAN_SCHEMA, plan)
    if shape:
        return [f"the plan does not have the plan shape: {e}" for e in shape]
    nodes = [_node_of(n) for n in plan["nodes"]]
    problems: list[str] = []
    seen: set[str] = set()
    for node in nodes:
        if node.id in seen:
            problems.append(f"node id {node.id!r} is used twice")
        seen.add(node.id)
        if not _NODE_ID.match(node.id):
            problems.append(f"node id {node.id!r} is not valid: use letters, digits, '_', '.', '-'")
        elif node.id in RESERVED:
            problems.append(f"node id {node.id!r} is reserved (reserved: {', '.join(sorted(RESERVED))})")
    allowed, denied = (
        envelope.policies.get("allowed_capabilities"),
        envelope.policies.get("denied_capabilities"),
    )
    for node in nodes:
        if node.capability not in registry:
            problems.append(
                f"node {node.id!r} uses unknown capability {node.capability!r} "
                f"(the registry has {', '.join(registry.ids()) or 'none'})"
            )
        elif (allowed is not None and node.capability not in allowed) or node.capability in (denied or ()):
            problems.append(
                f"node {node.id!r} uses capability {node.capability!r}, which the policies forbid"
            )
        for need in node.needs:
            if need not in seen:
                problems.append(f"node {node.id!r} needs {need!r}, which is not a node of the plan")
    cycle = find_cycle([StepSpec(key=n.id, kind=StepKind.CODE, needs=n.needs) for n in nodes])
    if cycle:
        problems.append(f"the plan's needs form a cycle: {' -> '.join(cycle)}")
    if problems:
        return problems
    by_id = {n.id: n for n in nodes}
    for node in nodes:
        capability = registry.get(node.capability)
        available = set(envelope.inputs) | set(node.context)
        for need in node.needs:
            available |= _properties(registry.get(by_id[need].capability).output_schema)
        for name in _required(capability.input_schema):
            if name not in available:
                problems.append(
                    f"node {node.id!r} ({node.capability}) needs input {name!r}, which neither the "
                    f"envelope inputs, its context nor the outputs of its needs "
                    f"({', '.join(node.needs) or 'none'}) provide"
                )
    return problems


def validate_plan(plan: Any, registry: CapabilityRegistry, envelope: TaskEnvelope) -> PlanGraph:
    """The plan as a graph ready to run, with a structuring node when the contract needs one.

    Raises InvalidPlan naming every problem. Pure.
    """
    problems = plan_problems(plan, registry, envelope)
    if problems:
        raise InvalidPlan(f"the plan is not valid: {'; '.join(problems)}", problems)
    nodes = [_node_of(n) for n in plan["nodes"]]
    nodes = [replace(n, kind=registry.get(n.capability).kind) for n in nodes]
    sinks = _sinks(nodes)
    produced = [registry.get(n.capability).output_schema for n in nodes if n.id in sinks]
    if not structuring_needed(envelope.output_contract, produced):
        return PlanGraph(nodes=tuple(nodes), final=sinks[0])
    structuring = PlanNode(
        id=STRUCTURE,
        capability=STRUCTURE,
        needs=tuple(sinks),
        context={"objective": envelope.objective, "constraints": list(envelope.constraints)},
        reason="no capability produces the output contract's shape",
        kind="structuring",
    )
    return PlanGraph(nodes=(*nodes, structuring), final=STRUCTURE, structuring=True)


def structuring_needed(contract: Mapping[str, Any], sink_outputs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a structuring node must compose the result: unless exactly one sink's output schema
    covers the contract's top-level type and required properties (a structural check)."""
    return len(sink_outputs) != 1 or not covers(contract, sink_outputs[0])


def covers(contract: Mapping[str, Any], produced: Mapping[str, Any]) -> bool:
    """Whether output of schema `produced` has the contract's top-level shape: the same type, every
    required property required with the same type, no property the contract forbids."""
    if not contract:
        return True
    wanted, made = _type_of(contract), _type_of(produced)
    if wanted is not None and wanted != made:
        return False
    contract_props, produced_props = (
        _as_mapping(contract.get("properties")),
        _as_mapping(produced.get("properties")),
    )
    produced_required = set(_required(produced))
    for name in _required(contract):
        if name not in produced_required:
            return False
        want = _type_of(_as_mapping(contract_props.get(name)))
        if want is not None and want != _type_of(_as_mapping(produced_props.get(name))):
            return False
    if contract.get("additionalProperties") is False and not set(produced_props) <= set(contract_props):
        return False
    return True


# --- planners ---------------------------------------------------------------------------------

#: A pure planner: the envelope and the registry in, the plan JSON (`{"nodes": [...]}`) out.
Planner = Callable[[TaskEnvelope, CapabilityRegistry], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Rule:
    """Put `capability` in the plan when the objective mentions one of `keywords` (always when
    there are none), unless a constraint mentions one of `unless` or the policies forbid it.

    `needs` names the nodes it builds on (those in the plan); None infers them: the earlier nodes
    whose outputs provide an input of this capability that the envelope does not.
    """

    capability: str
    keywords: tuple[str, ...] = ()
    needs: tuple[str, ...] | None = None
    unless: tuple[str, ...] = ()
    node: str | None = None


def plan_by_rules(
    envelope: TaskEnvelope, registry: CapabilityRegistry, rules: Sequence[Rule]
) -> dict[str, Any]:
    """The rule-based plan (pure): nodes in rule order, each with its context bundle."""
    objective = envelope.objective.lower()
    constraints = [c.lower() for c in envelope.constraints]
    allowed = envelope.policies.get("allowed_capabilities")
    denied = set(envelope.policies.get("denied_capabilities") or ())
    chosen: list[tuple[Rule, str, str]] = []
    for rule in rules:
        if (allowed is not None and rule.capability not in allowed) or rule.capability in denied:
            continue
        if any(phrase.lower() in c for phrase in rule.unless for c in constraints):
            continue
        hits = [k for k in rule.keywords if re.search(rf"\b{re.escape(k.lower())}", objective)]
        if rule.keywords and not hits:
            continue
        reason = f"the objective mentions {hits[0]!r}" if hits else "always part of this plan"
        chosen.append((rule, rule.node or rule.capability, reason))
    nodes: list[dict[str, Any]] = []
    for rule, node_id, reason in chosen:
        capability = registry.get(rule.capability)
        if rule.needs is not None:
            needs = [n for n in rule.needs if any(n == other for _, other, _ in chosen)]
        else:
            wanted = _properties(capability.input_schema) - set(envelope.inputs)
            needs = [
                n["id"] for n in nodes if wanted & _properties(registry.get(n["capability"]).output_schema)
            ]
        context: dict[str, Any] = {"objective": envelope.objective}
        context.update(
            {k: v for k, v in envelope.inputs.items() if k in _properties(capability.input_schema)}
        )
        if envelope.constraints:
            context["constraints"] = list(envelope.constraints)
        nodes.append(
            {
                "id": node_id,
                "capability": rule.capability,
                "needs": needs,
                "context": context,
                "reason": reason,
            }
        )
    return {"planner": "rules", "nodes": nodes}


def rule_planner(rules: Sequence[Rule]) -> Planner:
    """A pure planner over `rules` (see `plan_by_rules`)."""
    frozen = tuple(rules)

    def planner(envelope: TaskEnvelope, registry: CapabilityRegistry) -> Mapping[str, Any]:
        return plan_by_rules(envelope, registry, frozen)

    return planner


@dataclass(frozen=True, slots=True)
class AgentPlanner:
    """Plan with an agent: its output (schema PLAN_SCHEMA) is the plan; an invalid plan is sent
    back once, with its problems, as the `replan` step. Needs a model: the offline engine's
    sample plan names no real capability."""

    engine: str | StepFunction = "default"
    prompt: str = ""
    persona: str = ""
    max_attempts: int = 2
    backoff_s: float = 1.0
    timeout_s: float | None = None
    replan: bool = True


def planner_prompt(registry: CapabilityRegistry, extra: str = "") -> str:
    """What an agent planner is asked: the capabilities, the plan shape, the rules of a valid plan."""
    return (
        (extra.strip() + "\n\n" if extra.strip() else "")
        + "Plan the task given as the inputs (its objective, inputs, constraints, policies and output "
        "contract) as a graph of capability nodes. Answer with JSON: "
        '{"nodes": [{"id": ..., "capability": ..., "needs": [node ids], "context": {...}}]}. '
        "Use only these capabilities; every input a capability requires must come from the task's "
        "inputs, the node's context or the outputs of the nodes it needs; no cycles; ids are unique "
        f"and none of {', '.join(sorted(RESERVED))}.\n\nCapabilities:\n"
        + json.dumps(registry.describe(), indent=2)
    )


# --- the flow ---------------------------------------------------------------------------------

EnvelopeFromInputs = Callable[[Mapping[str, Any]], TaskEnvelope | Mapping[str, Any]]

PLAN_REPORT = """# {{ run.title or run.flow }}

Flow **{{ run.flow }}** (planned) · run `{{ run.id }}` · {{ run.status }}
{%- if run.status_reason %} ({{ run.status_reason }}){% endif %}

## Output

{% if run.result %}{{ run.result | output_text }}{% else %}_No validated output._{% endif %}

## Evidence

{% for step in steps %}### {{ step.key }} — {{ step.status }}

{% if step.output_text %}{{ step.output_text }}
{% elif step.error %}Error: {{ step.error }}
{% endif %}
{% endfor %}"""


@dataclass(frozen=True)
class PlanHook:
    """The expand hook of a plan flow: pure decisions on what the finished step means."""

    registry: CapabilityRegistry
    envelope_of: Callable[[Mapping[str, Any]], TaskEnvelope]
    planner_step: StepSpec
    #: "rules" (a planner function) or "agent"
    planner_kind: str
    replan: bool
    structuring: Mapping[str, Any]

    def __call__(self, run: RunView, finished: StepView) -> Expansion | None:
        try:
            return self._decide(run, finished)
        except BatonError as error:  # never let a bad plan or envelope take the transaction down
            return Expansion(finish=Finish(False, error.message), progress={"stage": "failed"})
        except Exception as error:  # a bug in envelope_from_inputs: fail the run, keep the step's end
            reason = f"the plan flow could not decide what comes next: {type(error).__name__}: {error}"
            return Expansion(finish=Finish(False, reason), progress={"stage": "failed"})

    def _decide(self, run: RunView, finished: StepView) -> Expansion | None:
        if finished.key in (PLAN, REPLAN):
            return self._planned(run, finished)
        if finished.key == REVIEW:
            if finished.status is not S.SUCCEEDED:
                return None  # an expired request: the run fails with the step's reason
            return Expansion(
                finish=Finish(True, "output approved by a person (review-output)", finished.output),
                progress={"stage": "done"},
            )
        final = final_node(run.steps)
        if finished.key != final:
            if finished.status is S.SUCCEEDED and final is not None:
                nodes = [s for s in run.steps if s.key not in RESERVED or s.key == STRUCTURE]
                done = sum(1 for s in nodes if s.status is S.SUCCEEDED)
                return Expansion(progress={"stage": "executing", "completed": done, "total": len(nodes)})
            return None
        contract = self.envelope_of(run.inputs).output_contract
        if finished.status is S.SUCCEEDED:
            errors = schema_errors(contract, finished.output)
            if not errors:
                total = len([s for s in run.steps if s.key not in RESERVED or s.key == STRUCTURE])
                return Expansion(
                    finish=Finish(True, "output matches the contract", finished.output),
                    progress={"stage": "done", "completed": total, "total": total},
                )
            shown = json.dumps(finished.output, default=str)[:1500]
            return self._escalate(
                f"step {finished.key}'s output fails the contract: {'; '.join(errors)}. Output: {shown}",
                contract,
            )
        if finished.status is S.FAILED and finished.key == STRUCTURE:
            error = finished.error or "no reason given"
            why = f"step {STRUCTURE} failed after {finished.attempt} attempt(s): {error}"
            return replace(self._escalate(why, contract), skip=(STRUCTURE,))
        return None

    def _planned(self, run: RunView, finished: StepView) -> Expansion | None:
        if finished.status is not S.SUCCEEDED:
            return Expansion(
                finish=Finish(False, f"planning failed: {finished.error or 'no reason given'}"),
                progress={"stage": "failed"},
            )
        envelope = self.envelope_of(run.inputs)
        try:
            graph = validate_plan(finished.output, self.registry, envelope)
        except InvalidPlan as error:
            if self.replan and finished.key == PLAN:
                listed = "\n".join(f"- {p}" for p in error.problems)
                prompt = (
                    f"{self.planner_step.prompt}\n\nYour previous plan was refused:\n{listed}\n"
                    "Answer with a corrected plan."
                )
                return Expansion(
                    new_steps=(replace(self.planner_step, key=REPLAN, prompt=prompt, label="re-plan"),),
                    progress={"stage": "replanning"},
                    events=(("log", {"message": f"plan refused, planning again: {error.message}"[:4000]}),),
                )
            return Expansion(finish=Finish(False, error.message), progress={"stage": "failed"})
        steps = tuple(self._step_of(node, envelope, finished.key) for node in graph.nodes)
        payload = {
            "graph": graph.to_json(),
            "planner": self.planner_kind,
            "planned_by": finished.key,
            "objective": envelope.objective,
        }
        return Expansion(
            new_steps=steps,
            events=(("plan.generated", payload),),
            progress={"stage": "executing", "completed": 0, "total": len(steps)},
        )

    def _step_of(self, node: PlanNode, envelope: TaskEnvelope, planned_by: str) -> StepSpec:
        if node.kind == "structuring":
            options = self.structuring
            prompt = (
                f"Compose the final output of this task: {envelope.objective}\n"
                "Build it from the upstream outputs. It must match the output schema (the task's output "
                "contract) exactly."
                + (
                    "\nConstraints:\n" + "\n".join(f"- {c}" for c in envelope.constraints)
                    if envelope.constraints
                    else ""
                )
            )
            return StepSpec(
                key=STRUCTURE,
                kind=StepKind.AGENT,
                needs=node.needs,
                engine=options["engine"],
                prompt=prompt,
                max_attempts=options["max_attempts"],
                backoff_s=options["backoff_s"],
                timeout_s=options["timeout_s"],
                label="structure the output",
                agent={
                    "name": STRUCTURE,
                    "engine": options["engine"],
                    "persona": options["persona"],
                    "output_schema": _plain(envelope.output_contract),
                },
            )
        capability = self.registry.get(node.capability)
        label = capability.id if node.id == capability.id else f"{node.id} ({capability.id})"
        impl = capability.implementation
        if isinstance(impl, CodeImpl):
            # The planner step is a need so the code runner can read this node's context bundle.
            return StepSpec(
                key=node.id,
                kind=StepKind.CODE,
                needs=(*node.needs, planned_by),
                handler=_handler(capability),
                max_attempts=impl.max_attempts,
                backoff_s=impl.backoff_s,
                timeout_s=impl.timeout_s,
                label=label,
            )
        engine = f"function:{_handler(capability)}" if callable(impl.engine) else impl.engine
        prompt = impl.prompt or capability.description
        if node.context:
            prompt += "\n\nContext for this step (JSON):\n" + json.dumps(_plain(node.context), indent=2)
        agent: dict[str, Any] = {
            "name": capability.id,
            "description": capability.description,
            "engine": engine,
            "persona": impl.persona,
            "output_schema": _plain(capability.output_schema),
        }
        if impl.tools:
            agent["tools"] = list(impl.tools)
        if impl.settings:
            agent["model_settings"] = dict(impl.settings)
        return StepSpec(
            key=node.id,
            kind=StepKind.AGENT,
            needs=node.needs,
            engine=engine,
            prompt=prompt,
            max_attempts=impl.max_attempts,
            backoff_s=impl.backoff_s,
            timeout_s=impl.timeout_s,
            label=label,
            agent=agent,
        )

    def _escalate(self, why: str, contract: Mapping[str, Any]) -> Expansion:
        prompt = (
            f"fix or approve this output: {why[:3000]}\n"
            "Answer with the output itself; it must match the output contract (this request's schema)."
        )
        review = StepSpec(
            key=REVIEW,
            kind=StepKind.INPUT,
            prompt=prompt,
            schema=_plain(contract),
            max_attempts=1,
            label="review the output",
            timeout_s=self.structuring.get("review_timeout_s"),
        )
        return Expansion(
            new_steps=(review,),
            progress={"stage": "review"},
            events=(("log", {"message": f"escalated to a person: {why}"[:4000]}),),
        )


def final_node(steps: Sequence[StepView]) -> str | None:
    """The step whose output is the run's result: `structure` when there is one, else the plan's
    single sink. None before the plan's nodes are inserted."""
    keys = {s.key for s in steps}
    if STRUCTURE in keys:
        return STRUCTURE
    nodes = [s for s in steps if s.key not in RESERVED]
    if not nodes:
        return None
    needed = {n for s in nodes for n in s.needs}
    sinks = [s.key for s in nodes if s.key not in needed]
    return sinks[0] if len(sinks) == 1 else None


def plan_flow(
    name: str,
    *,
    registry: CapabilityRegistry,
    planner: Planner | AgentPlanner | None = None,
    envelope_from_inputs: EnvelopeFromInputs | None = None,
    title: str = "",
    description: str = "",
    category: str = "Planning",
    input_schema: Mapping[str, Any] | None = None,
    functions: Mapping[str, StepFunction] | None = None,
    structuring_engine: str | StepFunction = "default",
    structuring_persona: str = "",
    structuring_attempts: int = 3,
    structuring_backoff_s: float = 1.0,
    structuring_timeout_s: float | None = None,
    review_timeout_s: float | None = None,
    **flow_options: Any,
) -> Flow:
    """A flow that plans its own steps from a task envelope (see the module docstring).

    `planner` is a pure function (default: every capability, in registry order, with needs
    inferred from their schemas) or an `AgentPlanner`. `envelope_from_inputs` maps a run's inputs
    to its envelope; without it the inputs are the envelope (`ENVELOPE_SCHEMA`). A callable
    `structuring_engine` (or agent capability engine) `fn(request, ctx)` has its output checked
    against the step's output schema, so a failure is retried with the errors as `feedback`.
    Other keyword arguments (version, policy, report_template, …) go to `Flow`.
    """
    if structuring_attempts < 1:
        raise InvalidFlow(f"flow {name}: structuring_attempts must be at least 1")
    to_envelope = envelope_from_inputs or (lambda inputs: inputs)

    def envelope_of(inputs: Mapping[str, Any]) -> TaskEnvelope:
        return parse_envelope(to_envelope(inputs))

    flow_options.setdefault("report_template", PLAN_REPORT)
    flow = Flow(
        name=name,
        title=title,
        description=description,
        category=category,
        input_schema=input_schema
        or (ENVELOPE_SCHEMA if envelope_from_inputs is None else {"type": "object"}),
        **flow_options,
    )
    given = dict(functions or {})
    for capability in registry:
        impl = capability.implementation
        if isinstance(impl, CodeImpl):
            fn = impl.function if callable(impl.function) else given.get(impl.function)
            if fn is None:
                raise InvalidFlow(
                    f"flow {name}: capability {capability.id} names function {impl.function!r}, which is "
                    f"not in functions= (given: {', '.join(sorted(given)) or 'none'})"
                )
            flow.functions[_handler(capability)] = _code_runner(capability, fn, envelope_of)
        elif callable(impl.engine):
            flow.functions[_handler(capability)] = checked_engine(impl.engine)

    if isinstance(planner, AgentPlanner):
        engine = checked_engine(planner.engine) if callable(planner.engine) else planner.engine
        planner_step = flow.agent(
            PLAN,
            engine=engine,
            prompt=planner_prompt(registry, planner.prompt),
            persona=planner.persona or None,
            output_schema=PLAN_SCHEMA,
            max_attempts=planner.max_attempts,
            backoff_s=planner.backoff_s,
            timeout_s=planner.timeout_s,
            label="plan (agent)",
        )
        replan = planner.replan
    else:
        plan_with: Planner = planner or rule_planner([Rule(c.id) for c in registry])

        def plan(ctx: Any) -> dict[str, Any]:
            envelope = envelope_of(ctx.inputs)
            return _plain(plan_with(envelope, registry))

        flow.step(PLAN, max_attempts=1, label="plan (rules)")(plan)
        planner_step = flow.steps[-1]
        replan = False
    if callable(structuring_engine):
        flow.functions[STRUCTURE] = checked_engine(structuring_engine)
        structuring_spec = f"function:{STRUCTURE}"
    else:
        structuring_spec = structuring_engine
    flow.expand_hook = PlanHook(
        registry=registry,
        envelope_of=envelope_of,
        planner_step=planner_step,
        planner_kind="agent" if isinstance(planner, AgentPlanner) else "rules",
        replan=replan,
        structuring={
            "engine": structuring_spec,
            "persona": structuring_persona,
            "max_attempts": structuring_attempts,
            "backoff_s": structuring_backoff_s,
            "timeout_s": structuring_timeout_s,
            "review_timeout_s": review_timeout_s,
        },
    )
    return flow


def checked_engine(fn: StepFunction) -> StepFunction:
    """Wrap an agent callable `fn(request, ctx)` so output failing the request's output schema
    fails the attempt (retryable): the next attempt gets the errors back as `request.feedback`."""

    async def engine(request: Any, ctx: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            value = await fn(request, ctx)
        else:
            value = await asyncio.to_thread(fn, request, ctx)
        schema = getattr(request, "output_schema", None)
        if schema is not None:
            output = value.output if hasattr(value, "output") and hasattr(value, "engine") else value
            errors = schema_errors(schema, output)
            if errors:
                shown = json.dumps(output, default=str)[:500]
                raise StepFailed(
                    f"the output does not match the output schema: {'; '.join(errors)}. Output was: {shown}",
                    retryable=True,
                )
        return value

    engine.__name__ = getattr(fn, "__name__", "engine")
    return engine


def _code_runner(
    capability: Capability, fn: StepFunction, envelope_of: Callable[[Mapping[str, Any]], TaskEnvelope]
) -> StepFunction:
    """The flow function of a code capability: builds its NodeCall, checks its output."""

    async def run(ctx: Any) -> Any:
        plan_output = ctx.upstream.get(REPLAN) or ctx.upstream.get(PLAN) or {}
        nodes: list[Mapping[str, Any]] = list(plan_output.get("nodes") or ())
        node = next((n for n in nodes if n.get("id") == ctx.step_key), {})
        context = dict(node.get("context") or {})
        upstream = {k: v for k, v in ctx.upstream.items() if k not in (PLAN, REPLAN)}
        envelope = envelope_of(ctx.inputs)
        merged: dict[str, Any] = {**envelope.inputs, **context}
        for output in upstream.values():
            if isinstance(output, Mapping):
                merged.update(output)
        call = NodeCall(
            node=ctx.step_key,
            capability=capability.id,
            inputs=merged,
            context=context,
            upstream=upstream,
            envelope=envelope,
            step=ctx,
        )
        if inspect.iscoroutinefunction(fn):
            output = await fn(call)
        else:
            output = await asyncio.to_thread(fn, call)
        errors = schema_errors(capability.output_schema, output)
        if errors:
            raise StepFailed(
                f"capability {capability.id} returned output that does not match its output schema: "
                + "; ".join(errors),
                retryable=False,
            )
        return output

    run.__name__ = f"capability_{capability.id}"
    return run


# --- helpers ----------------------------------------------------------------------------------


def _handler(capability: Capability) -> str:
    return f"cap.{capability.id}"


def _node_of(data: Mapping[str, Any]) -> PlanNode:
    return PlanNode(
        id=str(data["id"]),
        capability=str(data["capability"]),
        needs=tuple(str(n) for n in data.get("needs") or ()),
        context=dict(data.get("context") or {}),
        reason=str(data.get("reason") or ""),
    )


def _sinks(nodes: Sequence[PlanNode]) -> list[str]:
    needed = {n for node in nodes for n in node.needs}
    return [n.id for n in nodes if n.id not in needed]


def _properties(schema: Mapping[str, Any]) -> set[str]:
    return set(_as_mapping(schema.get("properties")))


def _required(schema: Mapping[str, Any]) -> list[str]:
    required = schema.get("required")
    return [str(r) for r in required] if isinstance(required, list | tuple) else []


def _type_of(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, str):
        return kind
    return "object" if "properties" in schema or "required" in schema else None


def _field(error: ValidationError) -> str:
    path = _path(error.absolute_path)
    if error.validator == "required" and isinstance(error.validator_value, list):
        missing = re.match(r"'([^']*)' is a required property", error.message)
        if missing:
            return f"{path}.{missing[1]}" if path else missing[1]
    return path or "(root)"


def _path(parts: Iterable[Any]) -> str:
    """`a.b[0]` for the path ['a', 'b', 0]."""
    text = ""
    for part in parts:
        text = f"{text}[{part}]" if isinstance(part, int) else (f"{text}.{part}" if text else str(part))
    return text


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[:limit] + "…"


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _plain(value: Any) -> Any:
    """Mappings as dicts and tuples as lists: what JSON columns and jsonschema expect."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
