"""Rendering a run's Markdown report from its flow's template, safely and without ever failing."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

#: Structured output longer than this is cut in the report; the full output stays on the step.
MAX_OUTPUT_CHARS = 20_000


def output_text(output: Any) -> str:
    """A step's output as a person reads it: text as is, structures as a fenced JSON block."""
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    if isinstance(output, bool | int | float):
        return json.dumps(output)
    if not isinstance(output, Mapping | list | tuple):
        return str(output)
    text = json.dumps(output, indent=2, ensure_ascii=False, default=str)
    note = ""
    if len(text) > MAX_OUTPUT_CHARS:
        note = f"\n\n_(output truncated: showing {MAX_OUTPUT_CHARS:,} of {len(text):,} characters)_"
        text = text[:MAX_OUTPUT_CHARS]
    return f"```json\n{text}\n```{note}"


def _environment() -> SandboxedEnvironment:
    # Markdown, not HTML: escaping would mangle `<`, `&` and quotes in agent output.
    # ChainableUndefined lets `run.result.score` render empty when there is no result yet.
    env = SandboxedEnvironment(autoescape=False, undefined=ChainableUndefined)
    env.filters["output_text"] = output_text
    return env


_ENV = _environment()


@functools.lru_cache(maxsize=256)
def _compiled(template: str) -> Template:
    # Compiling a template costs milliseconds, more than the rest of a short run's end
    # (bench/engine.py, issue 7); a flow's template is the same for all its runs. A template
    # that does not compile raises here every time (errors are not cached) and gets the fallback.
    return _ENV.from_string(template)


def render_report(template: str, *, run: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]) -> str:
    """Render `template` with `run`, `steps` and `by_key` (steps by key).

    A report must never take a run down with it: if the template fails, the report says so and
    why, and lists the steps plainly instead.
    """
    rows = [_with_text(step) for step in steps]
    try:
        return _compiled(template).render(run=run, steps=rows, by_key={s.get("key"): s for s in rows})
    except Exception as error:  # a user's template may fail in any way; see the docstring
        return _fallback(run, rows, error)


def _with_text(step: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(step)
    if "output_text" not in row:
        row["output_text"] = output_text(row.get("output"))
    return row


def _fallback(run: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], error: Exception) -> str:
    if isinstance(error, TemplateSyntaxError) and error.lineno:
        why = f"syntax error on line {error.lineno}: {error.message or error}"
    else:
        why = f"{type(error).__name__}: {error}"
    title = run.get("title") or run.get("flow") or "Run"
    lines = [
        f"# {title}",
        "",
        f"> The report template failed, so this is a plain listing of the steps. Reason: {why}",
        "",
    ]
    for step in steps:
        lines += [f"## {step.get('key')} — {step.get('status')}", ""]
        body = step.get("output_text") or (f"Error: {step['error']}" if step.get("error") else "")
        if body:
            lines += [str(body), ""]
    return "\n".join(lines)
