"""`handoff` (graph with an input step): context, a proposed plan, a person's decision, a read-only action.

A task handed off from anywhere (`baton run handoff "Tidy up the release notes"`, or a page of an
app with `source` metadata on the run) is gathered into context by a code step, turned into a plan
by a planner agent and, in the medium and large bands, reviewed for risks and alternatives. The run
then waits for a person: approve or reject the plan, with a note. The decision decides the last
step: `act` is added once the answer arrives, with a prompt written for that decision (carry the
plan out, or explain the rejection and propose a next step). The flow's policy is read-only, so
`act` only reads and proposes; an engine that cannot prove a read-only mode is refused.

Runs need confirmation before they start (the plan of steps is shown first). Every agent uses the
`default` engine: offline unless BATON_DEFAULT_ENGINE names a model.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from baton.agents.base import StepContext
from baton.domain.models import RunView, StepView
from baton.domain.status import StepKind, StepStatus
from baton.flows.spec import Expansion, Flow, StepSpec

DECISION_SCHEMA = {
    "type": "object",
    "properties": {
        "approve": {"type": "boolean", "description": "true: carry the plan out; false: do not"},
        "note": {"type": "string", "description": "why, or what to change"},
    },
    "required": ["approve"],
    "additionalProperties": False,
}

PLAN_SCHEMA = {
    "type": "object",
    "properties": {
        "goal": {"type": "string"},
        "steps": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "done_when": {"type": "string"},
    },
    "required": ["goal", "steps", "done_when"],
}

PLANNER = (
    "You are a careful planner. You turn a task and its context into a short plan: a goal, a few "
    "concrete steps a person can check, and how to tell it is done."
)
ACTOR = (
    "You carry out decisions without changing anything yourself: you read, check, and write down the "
    "exact changes and commands a person should apply. You never claim to have written a file."
)

REPORT = """# Handoff: {{ run.inputs.focus }}

Flow **{{ run.flow }}** · run `{{ run.id }}` · {{ run.status }}
{%- if run.status_reason %} ({{ run.status_reason }}){% endif %}

## Context (step `context`)

{{ by_key.context.output_text or "not gathered" }}

## Proposed plan (step `plan`)

{{ by_key.plan.output_text or by_key.plan.error or "no plan" }}
{% if by_key.risks %}
## Risks (step `risks`)

{{ by_key.risks.output_text or by_key.risks.error }}
{% endif %}{% if by_key.alternatives %}
## Alternatives (step `alternatives`)

{{ by_key.alternatives.output_text or by_key.alternatives.error }}
{% endif %}
## Decision (step `decision`)

{% set decision = by_key.decision.output -%}
{% if decision and decision.approve is defined -%}
**{{ "Approved" if decision.approve else "Rejected" }}**{% if decision.note %}: {{ decision.note }}{% endif %}
{%- else -%}
No decision was given.
{%- endif %}

## Action (step `act`, read-only)

{{ by_key.act.output_text or by_key.act.error or "not run" }}
"""

handoff = Flow(
    name="handoff",
    title="Hand off a task",
    description=(
        "Gathers the context of a task, proposes a plan, waits for a person to approve or reject it, "
        "then acts on the decision read-only (step `act`, added once the decision is in)."
    ),
    category="Planning",
    input_schema={
        "type": "object",
        "properties": {
            "focus": {
                "type": "string",
                "default": "Tidy up the release notes",
                "description": "the task handed off",
            },
            "path": {"type": "string", "default": ".", "description": "the folder the task is about"},
        },
        "additionalProperties": False,
    },
    report_template=REPORT,
    require_confirmation=True,
    policy={"read_only": True},
    bands={
        "small": {"steps": ["context", "plan", "decision"]},
        "medium": {"steps": ["context", "plan", "risks", "decision"]},
        "large": {},
    },
)


@handoff.step(timeout_s=30, label="gather context")
def context(ctx: StepContext) -> dict[str, Any]:
    """The task, and a glance at its folder: top-level entries and recent history. Reads only."""
    root = Path(str(ctx.inputs.get("path") or ".")).expanduser()
    entries: list[str] = []
    if root.is_dir():
        entries = sorted(
            p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith(".")
        )
    ctx.emit(f"{len(entries)} entries in {root}\n")
    return {
        "task": str(ctx.inputs.get("focus") or ""),
        "path": str(root),
        "exists": root.is_dir(),
        "entries": entries[:40],
        "recent_commits": _git_log(root) if root.is_dir() else [],
    }


def _git_log(root: Path) -> list[str]:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "log", "--oneline", "-n", "5"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.splitlines() if out.returncode == 0 else []


handoff.agent(
    "plan",
    engine="default",
    persona=PLANNER,
    prompt="Propose a plan for the task in the inputs, using the context gathered in `context`.",
    output_schema=PLAN_SCHEMA,
    needs=["context"],
    timeout_s=300,
    label="propose a plan",
)
handoff.agent(
    "risks",
    engine="default",
    prompt="List what could go wrong with the plan in `plan`, most serious first, and how to check each.",
    needs=["plan"],
    timeout_s=300,
    label="review risks",
)
handoff.agent(
    "alternatives",
    engine="default",
    prompt="Name up to two other ways to reach the goal of `plan`, and when each would be better.",
    needs=["plan"],
    timeout_s=300,
    label="weigh alternatives",
)
handoff.input(
    "decision",
    prompt="Approve this plan? Answer approve (true or false) and a note.",
    schema=DECISION_SCHEMA,
    needs=["plan", "risks", "alternatives"],
    label="decide",
)


def act_prompt(decision: Any) -> str:
    """What `act` is asked to do, by the person's decision."""
    decision = decision if isinstance(decision, dict) else {}
    note = str(decision.get("note") or "").strip()
    said = f' The note says: "{note}".' if note else ""
    if decision.get("approve"):
        return (
            f"The plan in `plan` was approved.{said} Carry it out read-only: for each of its steps, say "
            "what you checked and write the exact change or command a person should apply."
        )
    return (
        f"The plan in `plan` was rejected.{said} Do not carry it out. Say what the rejection means for "
        "the task and propose the smallest next step that answers it."
    )


def _after_decision(run: RunView, finished: StepView) -> Expansion | None:
    """Once the decision is in, add `act` with the prompt for that decision (pure)."""
    if finished.key != "decision" or finished.status is not StepStatus.SUCCEEDED:
        return None
    if any(step.key == "act" for step in run.steps):
        return None  # a forked run copied it already
    decision = finished.output if isinstance(finished.output, dict) else {}
    act = StepSpec(
        key="act",
        kind=StepKind.AGENT,
        needs=("decision", "plan"),
        engine="default",
        prompt=act_prompt(decision),
        timeout_s=300,
        label="act on the decision (read-only)",
        agent={"name": "act", "engine": "default", "persona": ACTOR},
    )
    verdict = "approved" if decision.get("approve") else "rejected"
    return Expansion(new_steps=(act,), events=(("log", {"message": f"plan {verdict}: adding step act"}),))


handoff.expand_hook = _after_decision
