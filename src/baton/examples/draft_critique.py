"""`draft-critique` (loop): write a short piece from a brief, score it on a rubric, revise until it passes.

Out of the box every agent runs offline. The writer and reviser use the `offline` engine; the
evaluator uses **offline rubric scoring**, a small deterministic scorer in this module (labelled
as such in its feedback and engine name), because the offline engine's scores are hashes and could
never promise a pass. Offline, attempt 1 scores 0.7 and attempt 2 scores 0.85: the demo always
revises once and passes at 0.8. Set BATON_DEFAULT_ENGINE (for example `openai:gpt-4o-mini`) and all
three agents, the evaluator included, use that model instead.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from baton.agents.base import StepContext, StepRequest, StepResult
from baton.agents.personas import resolve_engine_spec
from baton.agents.registry import resolve_engine
from baton.flows.loop import loop_flow, parse_key

PASS_THRESHOLD = 0.8

#: The rubric: (criterion, weight, what a model is asked to judge, how offline scoring checks it).
RUBRIC = (
    ("brief", 0.3, "covers every point of the brief", "share of the brief's key words in the draft"),
    ("audience", 0.2, "is written for the stated audience", "the draft names the audience"),
    ("length", 0.2, "is short: between 30 and 400 words", "word count between 30 and 400"),
    (
        "revision",
        0.3,
        "is clear and concrete, and answers every point of earlier feedback",
        "0.15 for each revision made after feedback, at most 0.3",
    ),
)

WRITER = (
    "You are a concise writer. You write short, concrete pieces that a busy reader finishes, "
    "and you end with one clear takeaway."
)
EDITOR = (
    "You are a demanding editor. You score drafts strictly against the rubric and say exactly "
    "what the next revision must change."
)
_RUBRIC_TEXT = "\n".join(f"- {name} ({weight}): {asked}" for name, weight, asked, _ in RUBRIC)


async def score_draft(request: StepRequest, ctx: StepContext) -> StepResult:
    """The evaluator's engine: the default engine when one is set, else offline rubric scoring."""
    engine_spec = resolve_engine_spec("default")
    if engine_spec != "offline":
        return await resolve_engine(engine_spec).run(replace(request, engine=engine_spec), ctx)
    evaluation = offline_rubric_score(request, ctx.step_key)
    ctx.emit(evaluation["feedback"])
    mode = "read-only" if request.read_only else "read-write"
    return StepResult(output=evaluation, engine="offline-rubric", model="offline rubric scoring", mode=mode)


def offline_rubric_score(request: StepRequest, step_key: str) -> dict[str, Any]:
    """Deterministic rubric scoring without a model: mechanical checks, labelled as such."""
    draft = "\n".join(str(value) for value in request.upstream.values())
    text = draft.lower()
    brief = str(request.inputs.get("brief") or "")
    audience = str(request.inputs.get("audience") or "").strip().lower()
    _, attempt = parse_key(step_key)
    keywords = _keywords(brief[:150])
    covered = sum(1 for word in keywords if word in text) / len(keywords) if keywords else 1.0
    words = len(draft.split())
    checks = {
        "brief": covered,
        "audience": 1.0 if audience and audience in text else 0.0,
        "length": 1.0 if 30 <= words <= 400 else 0.0,
        "revision": min(max(attempt - 1, 0) * 0.5, 1.0),
    }
    weights = {name: weight for name, weight, _, _ in RUBRIC}
    score = round(sum(weights[name] * value for name, value in checks.items()), 3)
    notes = []
    if checks["brief"] < 1:
        missing = [w for w in keywords if w not in text]
        notes.append(f"cover the brief: {', '.join(missing[:8])} missing")
    if not checks["audience"]:
        notes.append(f"write for {audience or 'the audience'} and say so")
    if not checks["length"]:
        notes.append(f"keep it between 30 and 400 words (now {words})")
    if checks["revision"] < 1:
        notes.append("revise once more, answering each point of this critique")
    if score >= PASS_THRESHOLD:
        verdict = f"passes the rubric ({score} >= {PASS_THRESHOLD})"
    else:
        verdict = f"below {PASS_THRESHOLD}: " + "; ".join(notes)
    return {
        "score": score,
        "feedback": f"Offline rubric scoring (deterministic, no model): {verdict}.",
        "rubric": checks,
        "scorer": "offline rubric scoring",
    }


def _keywords(text: str) -> list[str]:
    words = re.findall(r"[a-z][a-z'-]{3,}", text.lower())
    return list(dict.fromkeys(w for w in words if w not in _STOP))


_STOP = {"about", "after", "every", "from", "have", "into", "that", "their", "them", "then", "they"}
_STOP |= {"this", "until", "what", "when", "where", "which", "while", "with", "your", "will", "each"}


draft_critique = loop_flow(
    "draft-critique",
    title="Draft and critique",
    description=(
        "Writes a short piece from a brief, scores it against a rubric and revises until it passes "
        f"({PASS_THRESHOLD}). Offline it scores with a deterministic rubric and passes at attempt 2."
    ),
    category="Authoring",
    input_schema={
        "type": "object",
        "properties": {
            "brief": {
                "type": "string",
                "default": "Announce evaluator loops: every draft is scored against a rubric and revised "
                "until it passes.",
                "description": "what the piece is about",
            },
            "audience": {
                "type": "string",
                "default": "engineering team leads",
                "description": "who will read it",
            },
        },
        "additionalProperties": False,
    },
    producer={
        "engine": "default",
        "persona": WRITER,
        "prompt": "Write a short piece (about 200 words) from the brief, for the audience in the inputs.",
        "timeout_s": 300,
    },
    evaluator={
        "engine": score_draft,
        "persona": EDITOR,
        "prompt": f"Score the draft against this rubric; the score is the weighted sum:\n{_RUBRIC_TEXT}",
        "timeout_s": 300,
    },
    reviser={
        "engine": "default",
        "persona": WRITER,
        "prompt": "Revise the draft so that it answers every point of the evaluation, keeping it short.",
        "timeout_s": 300,
    },
    max_attempts=3,
    pass_threshold=PASS_THRESHOLD,
    bands={"small": 2, "medium": 3, "large": 5},
)
