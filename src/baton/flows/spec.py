"""Flow and step declarations, validated when declared: unknown needs and cycles are refused."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from baton.domain.errors import InvalidFlow, UsageError
from baton.domain.models import RunView, StepView
from baton.domain.status import StepKind

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
CATEGORIES = ("Analysis", "Discovery", "Planning", "Authoring", "Review")


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step as a flow declares it. `handler` names the flow function a code step calls."""

    key: str
    kind: StepKind
    needs: tuple[str, ...] = ()
    handler: str | None = None
    engine: str | None = None
    prompt: str | None = None
    schema: Mapping[str, Any] | None = None
    timeout_s: float | None = None
    max_attempts: int = 3
    backoff_s: float = 1.0
    label: str | None = None
    #: an agent step's persona, engine, model settings, tools and output schema, as stored
    agent: Mapping[str, Any] | None = None
    #: store the step's output as an artifact of this name (Markdown for text, JSON otherwise)
    artifact: str | None = None

    def to_json(self) -> dict[str, Any]:
        """What is stored in the step row's `spec` column."""
        return {
            "agent": dict(self.agent) if self.agent is not None else None,
            "artifact": self.artifact,
            "handler": self.handler,
            "engine": self.engine,
            "prompt": self.prompt,
            "schema": dict(self.schema) if self.schema is not None else None,
            "timeout_s": self.timeout_s,
            "backoff_s": self.backoff_s,
            "max_attempts": self.max_attempts,
            "label": self.label or self.key,
        }


@dataclass(frozen=True, slots=True)
class Finish:
    """A flow's verdict that the run is over, whatever steps remain."""

    succeeded: bool
    reason: str
    result: Any = None


@dataclass(frozen=True, slots=True)
class Expansion:
    """What a flow's `expand` hook decided after a step finished.

    `skip` names failed or pending steps the flow no longer needs (their failure is handled, for
    example by asking a person instead); `progress` updates what the run shows (stage, attempt,
    score…); `events` are (type, payload) pairs recorded with the change, such as `score.updated`.
    """

    new_steps: tuple[StepSpec, ...] = ()
    finish: Finish | None = None
    skip: tuple[str, ...] = ()
    progress: Mapping[str, Any] | None = None
    events: tuple[tuple[str, Mapping[str, Any]], ...] = ()


ExpandHook = Callable[[RunView, StepView], Expansion | None]
StepFunction = Callable[..., Any]

DEFAULT_REPORT = """# {{ run.title or run.flow }}

Flow **{{ run.flow }}** · run `{{ run.id }}` · {{ run.status }}
{%- if run.status_reason %} ({{ run.status_reason }}){% endif %}

{% for step in steps %}## {{ step.key }} — {{ step.status }}

{% if step.output_text %}{{ step.output_text }}
{% elif step.error %}Error: {{ step.error }}
{% endif %}
{% endfor %}"""


@dataclass
class Flow:
    """A named, versioned recipe that turns inputs into a graph of steps.

    Declare steps with the `step` decorator (code), `agent` and `input`; `needs` names the steps
    a step waits for. The graph is checked as it grows: an unknown need or a cycle is refused.
    """

    name: str
    title: str = ""
    description: str = ""
    category: str = "Analysis"
    version: str = "1"
    input_schema: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}, "additionalProperties": True}
    )
    report_template: str = DEFAULT_REPORT
    require_confirmation: bool = False
    #: the flow's layer of the governance policy (see baton.domain.policy)
    policy: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    expand_hook: ExpandHook | None = None
    steps: list[StepSpec] = field(default_factory=list)
    functions: dict[str, StepFunction] = field(default_factory=dict)
    #: sizes by name (small, medium, large): what each runs, e.g. {"small": {"steps": [...]}} for a
    #: graph (see `steps_for_band`) or {"small": {"max_attempts": 1}} for a loop; empty: one size
    bands: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _KEY.match(self.name):
            raise InvalidFlow(f"flow name {self.name!r} is not valid: use letters, digits, '_', '.', '-'")
        if self.category not in CATEGORIES:
            raise InvalidFlow(
                f"flow {self.name}: category {self.category!r} is not one of {', '.join(CATEGORIES)}"
            )
        # Steps given to the constructor (or `with_steps`) get the checks `add` makes one by one.
        validate_new_steps([], self.steps, flow=self.name)

    # --- declaring -----------------------------------------------------------------------

    def step(
        self,
        key: str | None = None,
        *,
        needs: Sequence[str] = (),
        timeout_s: float | None = None,
        max_attempts: int = 3,
        backoff_s: float = 1.0,
        label: str | None = None,
        artifact: str | None = None,
    ) -> Callable[[StepFunction], StepFunction]:
        """Declare a code step: `fn(ctx)` (sync or async) returns the step's JSON-able output."""

        def register(fn: StepFunction) -> StepFunction:
            name = key or fn.__name__
            self.functions[name] = fn
            self.add(
                StepSpec(
                    key=name,
                    kind=StepKind.CODE,
                    needs=tuple(needs),
                    handler=name,
                    timeout_s=timeout_s,
                    max_attempts=max_attempts,
                    backoff_s=backoff_s,
                    label=label,
                    artifact=artifact,
                )
            )
            return fn

        return register

    def function(self, name: str | None = None) -> Callable[[StepFunction], StepFunction]:
        """Register a function that steps added later by `expand` can name as their handler."""

        def register(fn: StepFunction) -> StepFunction:
            self.functions[name or fn.__name__] = fn
            return fn

        return register

    def agent(
        self,
        key: str,
        *,
        engine: str | StepFunction | None = None,
        prompt: str = "",
        needs: Sequence[str] = (),
        timeout_s: float | None = None,
        max_attempts: int = 3,
        backoff_s: float = 1.0,
        label: str | None = None,
        agent: Any = None,
        persona: str | None = None,
        settings: Mapping[str, Any] | None = None,
        tools: Sequence[str] = (),
        output_schema: Mapping[str, Any] | None = None,
        artifact: str | None = None,
    ) -> StepSpec:
        """Declare an agent step.

        `agent` is a declared agent (persona, engine, settings, tools, output schema; see
        baton.agents.personas); the other arguments override its fields. `engine` is a spec
        string (`default` = BATON_DEFAULT_ENGINE or offline, `offline`, `openai:MODEL`,
        `cli:NAME`, `python:mod:fn`…) or a callable `fn(request, ctx)`.
        """
        fields = _agent_fields(agent)
        if callable(engine):
            self.functions[key] = engine
            engine_spec = f"function:{key}"
        else:
            engine_spec = engine or str(fields.get("engine") or "default")
        if engine is not None or "ref" not in fields:
            # A step naming a declared agent keeps that agent's engine unless it names another.
            fields["engine"] = engine_spec
        fields.setdefault("name", key)
        if persona is not None:
            fields["persona"] = persona
        if settings is not None:
            fields["model_settings"] = dict(settings)
        if tools:
            fields["tools"] = list(tools)
        if output_schema is not None:
            fields["output_schema"] = dict(output_schema)
        return self.add(
            StepSpec(
                key=key,
                kind=StepKind.AGENT,
                needs=tuple(needs),
                engine=engine_spec,
                prompt=prompt,
                timeout_s=timeout_s,
                max_attempts=max_attempts,
                backoff_s=backoff_s,
                label=label,
                agent=fields,
                artifact=artifact,
            )
        )

    def input(
        self,
        key: str,
        *,
        prompt: str,
        schema: Mapping[str, Any] | None = None,
        needs: Sequence[str] = (),
        label: str | None = None,
        timeout_s: float | None = None,
    ) -> StepSpec:
        """Declare a step that asks a person; the run waits until the answer arrives.

        With `timeout_s`, an unanswered request expires and the run fails with that reason.
        """
        return self.add(
            StepSpec(
                key=key,
                kind=StepKind.INPUT,
                needs=tuple(needs),
                prompt=prompt,
                schema=schema or {"type": "object"},
                max_attempts=1,
                label=label,
                timeout_s=timeout_s,
            )
        )

    def add(self, spec: StepSpec) -> StepSpec:
        """Add a step, refusing a duplicate key, an unknown need or a cycle."""
        validate_new_steps(self.steps, [spec], flow=self.name)
        if spec.kind is StepKind.CODE and spec.handler not in self.functions:
            raise InvalidFlow(
                f"flow {self.name}: step {spec.key} names handler {spec.handler!r}, which is not registered"
            )
        self.steps.append(spec)
        return spec

    def expand(self, run: RunView, finished: StepView) -> Expansion:
        """The pure hook called as each step finishes; graph flows add nothing."""
        if self.expand_hook is None:
            return Expansion()
        return self.expand_hook(run, finished) or Expansion()

    def with_steps(self, steps: Sequence[StepSpec]) -> Flow:
        return replace(self, steps=list(steps))

    def steps_for_band(self, band: str | None) -> list[StepSpec]:
        """The steps a run of size `band` starts with.

        A band's `steps` list keeps those steps only; a kept step then waits for its nearest kept
        ancestors instead of the steps left out. No band, or a band without `steps`: every step.
        """
        if band is None or not self.bands:
            return list(self.steps)
        if band not in self.bands:
            raise UsageError(f"flow {self.name} has no band {band!r}: its bands are {', '.join(self.bands)}")
        chosen = (self.bands[band] or {}).get("steps")
        if chosen is None:
            return list(self.steps)
        keep = set(chosen)
        needs = {s.key: s.needs for s in self.steps}

        def kept_ancestors(key: str, seen: set[str]) -> list[str]:
            found: list[str] = []
            for need in needs.get(key, ()):
                if need in seen:
                    continue
                seen.add(need)
                found += [need] if need in keep else kept_ancestors(need, seen)
            return found

        return [
            replace(s, needs=tuple(dict.fromkeys(kept_ancestors(s.key, set()))))
            for s in self.steps
            if s.key in keep
        ]

    def handler_for(self, name: str) -> StepFunction:
        try:
            return self.functions[name]
        except KeyError:
            raise InvalidFlow(f"flow {self.name} has no function {name!r}") from None


BAND_NAMES = ("small", "medium", "large")


def check_bands(flow: Flow) -> None:
    """Refuse bands other than small/medium/large, and a band `steps` list naming no step."""
    if not isinstance(flow.bands, Mapping):
        raise InvalidFlow(f"flow {flow.name}: bands must be a mapping of band name to settings")
    keys = [s.key for s in flow.steps]
    for name, band in flow.bands.items():
        if name not in BAND_NAMES:
            raise InvalidFlow(f"flow {flow.name}: band {name!r} is not one of {', '.join(BAND_NAMES)}")
        if band is None:
            continue
        if not isinstance(band, Mapping):
            raise InvalidFlow(f"flow {flow.name}: band {name!r} must be a mapping such as {{steps: [...]}}")
        chosen = band.get("steps")
        if chosen is None:
            continue
        if not isinstance(chosen, list | tuple) or not all(isinstance(k, str) for k in chosen) or not chosen:
            raise InvalidFlow(f"flow {flow.name}: band {name!r}: steps must be a non-empty list of step keys")
        unknown = [k for k in chosen if k not in keys]
        if unknown:
            raise InvalidFlow(
                f"flow {flow.name}: band {name!r} names {', '.join(map(repr, unknown))}, which "
                f"{'is not a step' if len(unknown) == 1 else 'are not steps'} of this flow "
                f"(known steps: {', '.join(sorted(keys))})"
            )


def validate_new_steps(existing: Sequence[StepSpec], new: Sequence[StepSpec], *, flow: str) -> None:
    """Refuse bad keys, duplicates, needs that name no step, and cycles, naming the culprit."""
    keys = {s.key for s in existing}
    for spec in new:
        if not _KEY.match(spec.key):
            raise InvalidFlow(
                f"flow {flow}: step key {spec.key!r} is not valid: use letters, digits, '_', '.', '-'"
            )
        if spec.key in keys:
            raise InvalidFlow(f"flow {flow}: step {spec.key!r} is declared twice")
        if spec.max_attempts < 1:
            raise InvalidFlow(f"flow {flow}: step {spec.key}: max_attempts must be at least 1")
        keys.add(spec.key)
    for spec in new:
        for need in spec.needs:
            if need not in keys:
                raise InvalidFlow(
                    f"flow {flow}: step {spec.key!r} needs {need!r}, which is not a step of this flow "
                    f"(known steps: {', '.join(sorted(keys))})"
                )
    cycle = find_cycle([*existing, *new])
    if cycle:
        raise InvalidFlow(f"flow {flow}: the needs form a cycle: {' -> '.join(cycle)}")


def find_cycle(steps: Sequence[StepSpec]) -> list[str] | None:
    """A cycle in the `needs` graph as a list of keys that starts and ends with the same key."""
    needs = {s.key: s.needs for s in steps}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(key: str) -> list[str] | None:
        state[key] = 1
        path.append(key)
        for need in needs.get(key, ()):
            if state.get(need) == 1:
                return [*path[path.index(need) :], need]
            if need not in state:
                found = visit(need)
                if found:
                    return found
        path.pop()
        state[key] = 2
        return None

    for key in needs:
        if key not in state:
            found = visit(key)
            if found:
                return found
    return None


@lru_cache(maxsize=1024)
def accepts_argument(fn: StepFunction) -> bool:
    """Whether a step function takes the context argument."""
    try:
        return len(inspect.signature(fn).parameters) > 0
    except (TypeError, ValueError):
        return True


_AGENT_FIELDS = ("name", "description", "persona", "engine", "model_settings", "tools", "output_schema")


def _agent_fields(agent: Any) -> dict[str, Any]:
    """A declared agent (an object or a mapping with the agent fields) as plain, storable data."""
    if agent is None:
        return {}
    if isinstance(agent, str):
        return {"ref": agent}  # a declared agent, looked up by name when the step runs
    if isinstance(agent, Mapping):
        found = {k: agent[k] for k in _AGENT_FIELDS if k in agent}
    else:
        found = {k: getattr(agent, k) for k in _AGENT_FIELDS if getattr(agent, k, None) is not None}
    if "model_settings" in found:
        found["model_settings"] = dict(found["model_settings"])
    if "tools" in found:
        found["tools"] = list(found["tools"])
    if found.get("output_schema") is not None:
        found["output_schema"] = dict(found["output_schema"])
    return found
