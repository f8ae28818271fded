"""`post-variants`: N social post variants for a product brief, planned over three capabilities."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from baton.flows.plan import (
    AgentImpl,
    Capability,
    CapabilityRegistry,
    CodeImpl,
    NodeCall,
    Rule,
    TaskEnvelope,
    plan_flow,
    rule_planner,
)

#: The longest post each platform takes, in characters.
PLATFORM_LIMITS = {"linkedin": 3000, "x": 280, "instagram": 2200, "facebook": 5000, "threads": 500}

_STRINGS = {"type": "array", "items": {"type": "string"}}


def output_contract(n: int, platform: str) -> dict[str, Any]:
    """What the caller gets: exactly `n` variants, each with its text, platform and hashtags."""
    return {
        "type": "object",
        "properties": {
            "variants": {
                "type": "array",
                "minItems": n,
                "maxItems": n,
                "items": {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string", "minLength": 1, "maxLength": PLATFORM_LIMITS[platform]},
                        "platform": {"type": "string", "enum": [platform]},
                        "hashtags": _STRINGS,
                    },
                    "required": ["text", "platform", "hashtags"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["variants"],
        "additionalProperties": False,
    }


def envelope(inputs: Mapping[str, Any]) -> TaskEnvelope:
    """The run's inputs as a task envelope (pure)."""
    n, platform = int(inputs["n"]), str(inputs["platform"])
    return TaskEnvelope(
        objective=f"{n} social post variants for a product brief, for {platform}, with hashtags",
        inputs={k: inputs[k] for k in ("product", "brief", "n", "platform")},
        constraints=(
            *(str(c) for c in inputs.get("constraints") or ()),
            f"at most {PLATFORM_LIMITS[platform]} characters per post",
        ),
        output_contract=output_contract(n, platform),
    )


def suggest_hashtags(call: NodeCall) -> dict[str, Any]:
    """Hashtags from the product name and the brief's longest words (deterministic)."""
    product = str(call.inputs.get("product") or "")
    words = re.findall(r"[A-Za-z][A-Za-z0-9]{4,}", str(call.inputs.get("brief") or ""))
    tags = ["#" + re.sub(r"\W", "", product.title())] if product.strip() else []
    for word in sorted(set(words), key=lambda w: (-len(w), w.lower()))[:4]:
        tag = "#" + word[0].upper() + word[1:]
        if tag.lower() not in {t.lower() for t in tags}:
            tags.append(tag)
    call.step.emit(" ".join(tags) + "\n")
    return {"hashtags": tags}


capabilities = CapabilityRegistry(
    [
        Capability(
            id="audience-research",
            description="Who the product is for on the platform: the audience, its pains, the angle to take.",
            input_schema={
                "type": "object",
                "properties": {"product": {"type": "string"}, "brief": {"type": "string"}},
                "required": ["product", "brief"],
            },
            output_schema={
                "type": "object",
                "properties": {
                    "audience": {"type": "string"},
                    "pains": _STRINGS,
                    "angle": {"type": "string"},
                },
                "required": ["audience", "pains", "angle"],
            },
            implementation=AgentImpl(
                engine="default",
                prompt="Describe the audience of the product in the context: who they are, what they "
                "struggle with, and the angle a post should take with them.",
                timeout_s=300,
            ),
        ),
        Capability(
            id="draft-copy",
            description="Post drafts for the platform, written for the audience and angle found upstream.",
            input_schema={
                "type": "object",
                "properties": {
                    "product": {"type": "string"},
                    "brief": {"type": "string"},
                    "platform": {"type": "string"},
                    "n": {"type": "integer"},
                    "audience": {"type": "string"},
                    "angle": {"type": "string"},
                },
                "required": ["product", "brief", "platform"],
            },
            output_schema={
                "type": "object",
                "properties": {"drafts": {**_STRINGS, "minItems": 1}},
                "required": ["drafts"],
            },
            implementation=AgentImpl(
                engine="default",
                prompt="Write `n` distinct post drafts (n is in the context) for the platform, for the "
                "audience and angle found upstream. Respect every constraint.",
                timeout_s=300,
            ),
        ),
        Capability(
            id="hashtag-suggest",
            description="Hashtags from the product name and the brief's key words.",
            input_schema={
                "type": "object",
                "properties": {"product": {"type": "string"}, "brief": {"type": "string"}},
                "required": ["product", "brief"],
            },
            output_schema={"type": "object", "properties": {"hashtags": _STRINGS}, "required": ["hashtags"]},
            implementation=CodeImpl(suggest_hashtags),
        ),
    ]
)

post_variants = plan_flow(
    "post-variants",
    registry=capabilities,
    planner=rule_planner(
        [
            # A constraint such as "no research" drops the research node; draft-copy works without it.
            Rule("audience-research", unless=("no research",)),
            Rule("draft-copy"),
            Rule("hashtag-suggest", keywords=("hashtag",), unless=("no hashtag",)),
        ]
    ),
    envelope_from_inputs=envelope,
    title="Social post variants",
    description="Plans research, drafting and hashtags for a product brief, then composes N post "
    "variants validated against an output contract; a person fixes the output if it keeps failing.",
    category="Authoring",
    input_schema={
        "type": "object",
        "properties": {
            "product": {"type": "string", "minLength": 1, "default": "Baton", "description": "the product"},
            "brief": {
                "type": "string",
                "minLength": 1,
                "default": "A durable orchestrator for LLM agent workflows that people can watch, "
                "answer and trust.",
                "description": "what the posts should say",
            },
            "n": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3, "description": "variants"},
            "platform": {"type": "string", "enum": sorted(PLATFORM_LIMITS), "default": "linkedin"},
            "constraints": {"type": "array", "items": {"type": "string"}, "default": []},
        },
        # Required with a default: runs as is, and `baton run post-variants "a brief"` fills it.
        "required": ["brief"],
        "additionalProperties": False,
    },
    report_template="""# {{ run.title or "Social post variants" }}

{{ run.inputs.n }} variants of a post about **{{ run.inputs.product }}** for {{ run.inputs.platform }}
· {{ run.status }}{% if run.status_reason %} ({{ run.status_reason }}){% endif %}

{% for variant in run.result.variants %}## Variant {{ loop.index }}

{{ variant.text }}

{{ variant.hashtags | join(" ") }}

{% else %}_No validated output._

{% endfor %}## Evidence

{% for step in steps %}### {{ step.key }} — {{ step.status }}

{{ step.output_text or step.error or "" }}

{% endfor %}""",
)
