"""The deterministic `offline` engine: writes from the persona and inputs, no network, labelled as such."""

from __future__ import annotations

import asyncio
import hashlib
import json

from baton.agents.base import Engine, StepContext, StepRequest, StepResult


class OfflineEngine(Engine):
    """Same request, same words: for demos and tests. Every output says it came from `offline`."""

    spec = "offline"

    def __init__(self, chunk_delay_s: float = 0.0) -> None:
        self.chunk_delay_s = chunk_delay_s

    async def run(self, request: StepRequest, ctx: StepContext) -> StepResult:
        text = compose(request)
        for start in range(0, len(text), 48):
            ctx.emit(text[start : start + 48])
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
        return StepResult(output=text, engine="offline", model="offline")


def compose(request: StepRequest) -> str:
    seed = hashlib.sha256(
        json.dumps(
            [request.agent, request.prompt, dict(request.inputs)], sort_keys=True, default=str
        ).encode()
    ).hexdigest()[:8]
    lines = [f"**{request.agent}** (offline engine, deterministic #{seed})", ""]
    if request.prompt:
        lines.append(f"Task: {request.prompt.strip().splitlines()[0]}")
    for key, value in sorted(request.inputs.items()):
        lines.append(f"- input `{key}`: {str(value)[:200]}")
    for key in sorted(request.upstream):
        lines.append(f"- builds on `{key}`")
    lines.append("")
    lines.append("Findings: this text was written without a model. Set BATON_DEFAULT_ENGINE to use one.")
    return "\n".join(lines)
