"""Flows and an engine for the dashboard's browser tests (`baton serve --flows <this file>`).

- `dash_hostile`: an agent-like step whose outputs, artifacts and report try to run script in the
  dashboard; the page must show them as text.
- `slow_writer`: an engine for BATON_DEFAULT_ENGINE that writes like `offline`, one chunk a second,
  so a `draft-critique` run stays running long enough to be cancelled from the browser.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from baton.agents.base import StepContext, StepRequest, StepResult
from baton.agents.offline import OfflineEngine
from baton.flows.spec import Flow

PATH = Path(__file__).resolve()

#: What the hostile step writes; if any of it ran, `window.__pwned` would be set.
HOSTILE_MD = """# Findings <script>window.__pwned = "script"</script>

<img src="x" onerror="window.__pwned = 'onerror'">

<a href="javascript:window.__pwned='link'">click me</a> and [a link](javascript:window.__pwned='md')

<svg onload="window.__pwned='svg'"></svg>

<iframe src="javascript:window.__pwned='iframe'"></iframe>

| check | result |
| --- | --- |
| escaped | yes |
"""
HOSTILE_JSON = {
    "html": "<script>window.__pwned = 'json'</script>",
    "img": "<img src=x onerror=\"window.__pwned='json-img'\">",
}

hostile = Flow(
    "dash_hostile",
    title="Hostile output",
    description="Writes output that tries to run script in the dashboard.",
    category="Review",
    input_schema={
        "type": "object",
        "properties": {
            "label": {"type": "string", "minLength": 3, "maxLength": 80, "default": "tricky"},
            "copies": {"type": "integer", "minimum": 1, "maximum": 3, "default": 1},
        },
        "required": ["label"],
        "additionalProperties": False,
    },
    report_template="# Report\n\n{{ by_key.write.output_text }}\n",
)


@hostile.step(label="write <b>hostile</b> things")
def write(ctx: Any) -> str:
    ctx.emit("<script>window.__pwned = 'delta'</script>\n")
    ctx.emit("<img src=x onerror=\"window.__pwned='delta-img'\">\n")
    ctx.artifact("hostile.md", HOSTILE_MD, "text/markdown")
    ctx.artifact("hostile.json", json.dumps(HOSTILE_JSON), "application/json")
    ctx.artifact("hostile.html", "<script>window.__pwned = 'html-artifact'</script>", "text/html")
    ctx.log("<script>window.__pwned = 'log'</script>")
    return HOSTILE_MD


async def slow_writer(request: StepRequest, ctx: StepContext) -> StepResult:
    """The offline engine's words, a 48-character chunk every second (cancellable meanwhile)."""
    result = await OfflineEngine(chunk_delay_s=1.0).run(request, ctx)
    return replace(result, engine="offline (slowed for tests)")


FLOWS = [hostile]
