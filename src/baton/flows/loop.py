"""Loop flows (produce → evaluate → revise): the declaration and its pure expand hook.

A loop run starts with `produce-1` → `evaluate-1`, and `start`, a tiny code step beside them.
After each evaluation the hook reads the evaluator's `{score: 0..1, feedback}` and records a
`score.updated` event, then either finishes the run (passed at the threshold, or failed after the
last attempt with its final score) or appends `revise-N+1` → `evaluate-N+1`.

What the run shows (`runs.progress`): `stage` (producing, evaluating, revising, then done),
`current_attempt`, `max_attempts`, `score` (the latest), `scores` (one per attempt so far) and
`pass_threshold`. The hook only runs when a step finishes, so `start` exists to record the first
stage: it is queued with `produce-1` (ahead of it, and instant) and its completion records
`producing`. It is not a need of `produce-1`, so the producer's upstream stays empty. Each later
stage is recorded in the transaction that queues the step of that stage.

Artifacts: each attempt's output is `attempt-N.md`, its evaluation `attempt-N.eval.json`.
Bands: `bands={"small": 2, "medium": 3, "large": 5}` picks `max_attempts` by the run's band; it is
stored on the flow as `{"small": {"max_attempts": 2}, …}`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from jsonschema import Draft202012Validator

from baton.domain.errors import InvalidFlow
from baton.domain.models import RunView, StepView
from baton.domain.status import StepStatus
from baton.flows.spec import Expansion, Finish, Flow, StepSpec

#: What an evaluator must return; it is the evaluator's output schema unless it declares its own.
EVALUATION_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 1, "description": "0 = poor, 1 = perfect"},
        "feedback": {"type": "string", "description": "what to improve in the next revision"},
    },
    "required": ["score", "feedback"],
}
_EVALUATION = Draft202012Validator(EVALUATION_SCHEMA)

START = "start"
PRODUCE = "produce"
EVALUATE = "evaluate"
REVISE = "revise"
STAGES = ("producing", "evaluating", "revising", "done")

#: The keyword arguments of `Flow.agent` an agent description may give (the loop sets the rest).
_AGENT_ARGUMENTS = frozenset(
    {
        "engine",
        "prompt",
        "timeout_s",
        "max_attempts",
        "backoff_s",
        "label",
        "agent",
        "persona",
        "settings",
        "tools",
        "output_schema",
    }
)

#: How a loop role (producer, evaluator, reviser) is described: a mapping of `Flow.agent`
#: keyword arguments (`{"engine": "default", "prompt": "…"}`), a declared agent (an object with
#: persona/engine/… fields, or its name as a string), or a callable engine `fn(request, ctx)`.
AgentDescription = Mapping[str, Any] | str | Callable[..., Any] | Any

DEFAULT_LOOP_REPORT = """# {{ run.title or run.flow }}

Flow **{{ run.flow }}** · run `{{ run.id }}` · {{ run.status }}
{%- if run.status_reason %} ({{ run.status_reason }}){% endif %}

## Scores

{% for step in steps if step.key.startswith("evaluate-") and step.output and step.output.score is defined -%}
{% set feedback = (step.output.feedback or "") | replace("\\n", " ") -%}
- attempt {{ step.key[9:] }}: **{{ step.output.score }}** — {{ feedback }}
{% else -%}
- no attempt was scored
{% endfor %}
{%- if run.result and run.result.output %}
## Final output (attempt {{ run.result.attempt }}, score {{ run.result.score }})

{{ run.result.output | output_text }}
{% endif %}
## Steps

{% for step in steps %}### {{ step.key }} — {{ step.status }}

{% if step.output_text %}{{ step.output_text }}
{% elif step.error %}Error: {{ step.error }}
{% endif %}
{% endfor %}"""


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """A loop's limits and the agent steps it repeats (as templates: keys and needs set per attempt)."""

    max_attempts: int
    pass_threshold: float
    producer: StepSpec
    evaluator: StepSpec
    reviser: StepSpec
    #: band name -> max_attempts for runs of that band
    bands: Mapping[str, int] = field(default_factory=dict)

    def attempts_for(self, band: str | None) -> int:
        """`max_attempts` for a run of `band`; a run without a band (or an unlisted one) gets the default."""
        if band is not None and band in self.bands:
            return self.bands[band]
        return self.max_attempts


def loop_flow(
    name: str,
    *,
    producer: AgentDescription,
    evaluator: AgentDescription,
    reviser: AgentDescription,
    max_attempts: int = 3,
    pass_threshold: float = 0.8,
    title: str = "",
    description: str = "",
    category: str = "Authoring",
    input_schema: Mapping[str, Any] | None = None,
    report_template: str | None = None,
    bands: Mapping[str, int | Mapping[str, Any]] | None = None,
    version: str = "1",
    require_confirmation: bool = False,
    policy: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
) -> Flow:
    """A produce → evaluate → revise flow that passes when a score reaches `pass_threshold`.

    The evaluator must return `{"score": 0..1, "feedback": "…"}` (EVALUATION_SCHEMA is its output
    schema unless it declares one); `revise-N` sees the previous output and its evaluation as its
    upstream. At most `max_attempts` outputs are produced, or `bands[run.band]` for a run of a band.
    """
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidFlow(f"loop flow {name}: max_attempts must be a whole number of at least 1")
    if (
        isinstance(pass_threshold, bool)
        or not isinstance(pass_threshold, int | float)
        or not 0 <= pass_threshold <= 1
    ):
        raise InvalidFlow(f"loop flow {name}: pass_threshold must be a number from 0 to 1")
    attempts_by_band = _bands(name, bands or {})
    flow = Flow(
        name=name,
        title=title,
        description=description,
        category=category,
        version=version,
        report_template=report_template or DEFAULT_LOOP_REPORT,
        require_confirmation=require_confirmation,
        policy=dict(policy or {}),
        timeout_s=timeout_s,
        bands={band: {"max_attempts": n} for band, n in attempts_by_band.items()},
    )
    if input_schema is not None:
        flow.input_schema = input_schema
    settings = LoopSettings(
        max_attempts=max_attempts,
        pass_threshold=float(pass_threshold),
        producer=_template(flow, "producer", producer),
        evaluator=_template(flow, "evaluator", evaluator, output_schema=EVALUATION_SCHEMA),
        reviser=_template(flow, "reviser", reviser),
        bands=attempts_by_band,
    )
    flow.expand_hook = LoopHook(settings)

    @flow.step(START, label="start the loop", max_attempts=1)
    def start() -> str:
        return "loop started"

    flow.add(_produce_step(settings))
    flow.add(_evaluate_step(settings, 1))
    return flow


def loop_settings(flow: Flow) -> LoopSettings:
    """The settings of a flow made by `loop_flow`."""
    hook = flow.expand_hook
    if not isinstance(hook, LoopHook):
        raise InvalidFlow(f"flow {flow.name} is not a loop flow")
    return hook.settings


class LoopHook:
    """The loop's `expand(run, finished)`: pure, called as each step of a loop run finishes."""

    def __init__(self, settings: LoopSettings) -> None:
        self.settings = settings

    def __call__(self, run: RunView, finished: StepView) -> Expansion | None:
        if finished.status is not StepStatus.SUCCEEDED:
            return None  # a failed step fails the run through the engine, with its error
        role, attempt = parse_key(finished.key)
        limit = self.settings.attempts_for(run.band)
        base = {"max_attempts": limit, "pass_threshold": self.settings.pass_threshold}
        if role == START:
            first: dict[str, Any] = {**base, "current_attempt": 1, "score": None, "scores": []}
            if _succeeded(run, f"{EVALUATE}-1"):
                return None  # `start` came last: the evaluation recorded newer progress already
            if _succeeded(run, draft_key(1)):
                return Expansion(progress={**first, "stage": "evaluating"})
            return Expansion(progress={**first, "stage": "producing"})
        if role in (PRODUCE, REVISE):
            return Expansion(progress={**base, "stage": "evaluating", "current_attempt": attempt})
        if role == EVALUATE:
            return self._judge(run, finished, attempt, limit, base)
        return None

    def _judge(
        self, run: RunView, finished: StepView, attempt: int, limit: int, base: Mapping[str, Any]
    ) -> Expansion:
        evaluation, problem = read_evaluation(finished.output)
        if evaluation is None:
            reason = (
                f"{finished.key} returned an invalid evaluation: {problem} "
                '(an evaluator must return {"score": 0..1, "feedback": "..."})'
            )
            return Expansion(
                progress={**base, "stage": "done", "current_attempt": attempt},
                finish=Finish(False, reason, {"attempt": attempt, "evaluation": finished.output}),
            )
        score, feedback = evaluation["score"], evaluation["feedback"]
        threshold = self.settings.pass_threshold
        scores = _scores(run, attempt, score)
        event = (
            "score.updated",
            {
                "attempt": attempt,
                "score": score,
                "feedback": feedback,
                "threshold": threshold,
                "max_attempts": limit,
                "passed": score >= threshold,
            },
        )
        progress = {**base, "current_attempt": attempt, "score": score, "scores": scores}
        if score < threshold and attempt < limit:
            # A forked run may hold the next attempt's steps already: they run when their needs hold.
            known = {step.key for step in run.steps}
            following = (
                _revise_step(self.settings, attempt + 1, score),
                _evaluate_step(self.settings, attempt + 1),
            )
            return Expansion(
                new_steps=tuple(spec for spec in following if spec.key not in known),
                progress={**progress, "stage": "revising", "current_attempt": attempt + 1},
                events=(event,),
            )
        draft = draft_key(attempt)
        result = {
            "passed": score >= threshold,
            "output": _output_of(run, draft),
            "score": score,
            "attempt": attempt,
            "feedback": feedback,
            "scores": scores,
            "max_attempts": limit,
            "pass_threshold": threshold,
            "output_step": draft,
            "artifact": f"attempt-{attempt}.md",
        }
        if score >= threshold:
            reason = f"passed with score {format_score(score)} at attempt {attempt}"
            finish = Finish(True, reason, result)
        else:
            reason = f"score below threshold after {attempt} attempts (final score {format_score(score)})"
            finish = Finish(False, reason, result)
        return Expansion(progress={**progress, "stage": "done"}, events=(event,), finish=finish)


def read_evaluation(output: Any) -> tuple[dict[str, Any] | None, str]:
    """The evaluation `{score, feedback}` from an evaluator's output, or None and what is wrong."""
    if isinstance(output, str):
        try:
            output = json.loads(output)
        except ValueError:
            return None, f"expected a JSON object, got text {output[:80]!r}"
    if not isinstance(output, Mapping):
        return None, f"expected a JSON object, got {type(output).__name__}"
    errors = sorted(_EVALUATION.iter_errors(output), key=lambda e: list(e.path))
    if errors:
        return None, "; ".join(_problem(error) for error in errors)
    score = float(output["score"])
    if not math.isfinite(score):
        return None, f"score must be a finite number from 0 to 1, got {output['score']!r}"
    return {**output, "score": score, "feedback": str(output["feedback"])}, ""


def _problem(error: Any) -> str:
    where = ".".join(map(str, error.path))
    return f"{where}: {error.message}" if where else str(error.message)


def parse_key(key: str) -> tuple[str, int]:
    """`evaluate-3` -> ("evaluate", 3); `start` -> ("start", 0); anything else -> (key, 0)."""
    role, _, number = key.rpartition("-")
    if role in (PRODUCE, EVALUATE, REVISE) and number.isdigit():
        return role, int(number)
    return key, 0


def draft_key(attempt: int) -> str:
    """The step whose output is attempt N: `produce-1`, then `revise-N`."""
    return f"{PRODUCE}-1" if attempt == 1 else f"{REVISE}-{attempt}"


def format_score(score: float) -> str:
    return f"{score:.4g}"


# --- steps ---------------------------------------------------------------------------------------


def _produce_step(settings: LoopSettings) -> StepSpec:
    return replace(
        settings.producer,
        key=draft_key(1),
        needs=(),
        artifact="attempt-1.md",
        label=settings.producer.label or "produce attempt 1",
    )


def _evaluate_step(settings: LoopSettings, attempt: int) -> StepSpec:
    threshold = format_score(settings.pass_threshold)
    task = (
        f"Evaluate attempt {attempt}, the output of step `{draft_key(attempt)}`. Give a `score` "
        f"from 0 to 1 (the work passes at {threshold}) and `feedback`: what the next revision should change."
    )
    return replace(
        settings.evaluator,
        key=f"{EVALUATE}-{attempt}",
        needs=(draft_key(attempt),),
        prompt=_join(settings.evaluator.prompt, task),
        artifact=f"attempt-{attempt}.eval.json",
        label=settings.evaluator.label or f"evaluate attempt {attempt}",
    )


def _revise_step(settings: LoopSettings, attempt: int, score: float) -> StepSpec:
    previous, evaluation = draft_key(attempt - 1), f"{EVALUATE}-{attempt - 1}"
    task = (
        f"Write attempt {attempt}: revise the output of step `{previous}` (attempt {attempt - 1}, "
        f"scored {format_score(score)}; it passes at {format_score(settings.pass_threshold)}) "
        f"following the feedback in `{evaluation}`."
    )
    return replace(
        settings.reviser,
        key=draft_key(attempt),
        needs=(evaluation, previous),
        prompt=_join(settings.reviser.prompt, task),
        artifact=f"attempt-{attempt}.md",
        label=settings.reviser.label or f"revise: attempt {attempt}",
    )


def _join(base: str | None, task: str) -> str:
    base = (base or "").strip()
    return f"{base}\n\n{task}" if base else task


def _template(
    flow: Flow, role: str, description: AgentDescription, *, output_schema: Mapping[str, Any] | None = None
) -> StepSpec:
    """The agent step a role describes, declared on a scratch flow so `Flow.agent` does the work.

    A callable engine is registered on `flow` under the role's name (`function:evaluator`).
    """
    if isinstance(description, Mapping):
        unknown = sorted(set(description) - _AGENT_ARGUMENTS)
        if unknown:
            raise InvalidFlow(
                f"loop flow {flow.name}: the {role} has unknown field(s) {', '.join(unknown)}; use "
                f"{', '.join(sorted(_AGENT_ARGUMENTS))} (the loop sets needs and artifacts itself), "
                "or pass a declared agent as {'agent': ...}"
            )
        arguments = dict(description)
    elif callable(description) and not isinstance(description, type):
        arguments = {"engine": description}
    else:
        arguments = {"agent": description}
    if output_schema is not None and "output_schema" not in arguments:
        declared = arguments.get("agent")
        declared_schema = (
            declared.get("output_schema")
            if isinstance(declared, Mapping)
            else getattr(declared, "output_schema", None)
        )
        if declared_schema is None:
            arguments["output_schema"] = dict(output_schema)
    scratch = Flow(name=flow.name, category=flow.category)
    spec = scratch.agent(role, **arguments)
    flow.functions.update(scratch.functions)
    return spec


def _bands(name: str, bands: Mapping[str, int | Mapping[str, Any]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for band, value in bands.items():
        attempts = value.get("max_attempts") if isinstance(value, Mapping) else value
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise InvalidFlow(
                f"loop flow {name}: band {band!r} must give max_attempts as a whole number of at least 1, "
                f"got {value!r}"
            )
        found[str(band)] = attempts
    return found


def _scores(run: RunView, attempt: int, score: float) -> list[dict[str, Any]]:
    """The score of each attempt so far, the current one included."""
    found = []
    for step in run.steps:
        role, number = parse_key(step.key)
        if role != EVALUATE or number >= attempt or step.status is not StepStatus.SUCCEEDED:
            continue
        evaluation, _ = read_evaluation(step.output)
        if evaluation is not None:
            found.append({"attempt": number, "score": evaluation["score"]})
    found.sort(key=lambda item: item["attempt"])
    return [*found, {"attempt": attempt, "score": score}]


def _succeeded(run: RunView, key: str) -> bool:
    return any(step.key == key and step.status is StepStatus.SUCCEEDED for step in run.steps)


def _output_of(run: RunView, key: str) -> Any:
    try:
        return run.step(key).output
    except KeyError:
        return None


__all__ = [
    "DEFAULT_LOOP_REPORT",
    "EVALUATION_SCHEMA",
    "STAGES",
    "AgentDescription",
    "LoopHook",
    "LoopSettings",
    "draft_key",
    "format_score",
    "loop_flow",
    "loop_settings",
    "parse_key",
    "read_evaluation",
]
