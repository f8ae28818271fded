"""The deterministic `offline` engine: writes from the persona and inputs, no network, labelled as such."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from baton.agents.base import Engine, StepContext, StepRequest, StepResult


class OfflineEngine(Engine):
    """Same request, same words: for demos and tests. Every output says it came from `offline`.

    With an output schema it returns an object that satisfies it, built from the schema itself.
    """

    spec = "offline"

    def __init__(self, chunk_delay_s: float = 0.0) -> None:
        self.chunk_delay_s = chunk_delay_s

    def supports_read_only(self) -> bool:
        return True  # it touches nothing outside the step

    async def run(self, request: StepRequest, ctx: StepContext) -> StepResult:
        if request.output_schema:
            output: Any = sample(request.output_schema, _seed(request))
            text = json.dumps(output, indent=2)
        else:
            output = text = compose(request)
        for start in range(0, len(text), 48):
            ctx.emit(text[start : start + 48])
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
        mode = "read-only" if request.read_only else "read-write"
        return StepResult(output=output, engine="offline", model="offline", mode=mode)


def _seed(request: StepRequest) -> str:
    material = [request.agent, request.prompt, dict(request.inputs), request.attempt]
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:8]


def compose(request: StepRequest) -> str:
    lines = [f"**{request.agent}** (offline engine, deterministic #{_seed(request)})", ""]
    if request.persona:
        lines.append(f"Persona: {request.persona.strip().splitlines()[0][:200]}")
    if request.prompt:
        lines.append(f"Task: {request.prompt.strip().splitlines()[0]}")
    for key, value in sorted(request.inputs.items()):
        lines.append(f"- input `{key}`: {str(value)[:200]}")
    for key in sorted(request.upstream):
        lines.append(f"- builds on `{key}`")
    if request.feedback:
        lines.append(f"- revised after: {request.feedback[:200]}")
    lines.append("")
    lines.append("Findings: this text was written without a model. Set BATON_DEFAULT_ENGINE to use one.")
    return "\n".join(lines)


def sample(schema: Mapping[str, Any], seed: str, depth: int = 0) -> Any:
    """A deterministic value valid for the common JSON Schema keywords (const, enum, types, bounds)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return sample(schema[combinator][0], seed, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or properties)
        return {
            name: sample(sub, f"{seed}.{name}", depth + 1)
            for name, sub in properties.items()
            if name in required and depth < 8
        }
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        count = min(count, int(schema.get("maxItems", count)))
        item = schema.get("items") or {"type": "string"}
        return [sample(item, f"{seed}.{i}", depth + 1) for i in range(count)]
    if kind in ("number", "integer"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 1))
        value = low + (high - low) * (int(seed[:4], 16) / 0xFFFF) * 0.5 + (high - low) * 0.25
        if kind == "integer":
            return round(value)
        return round(value, 3)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = f"offline text #{seed}"
    minimum, maximum = int(schema.get("minLength", 0)), schema.get("maxLength")
    text = text.ljust(minimum, ".")
    return text[: int(maximum)] if maximum is not None else text
