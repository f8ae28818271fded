"""Governance policy: layered server < project < flow < run, merged so that layers only tighten."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from baton.domain.errors import InvalidInputs

FIELDS = ("read_only", "require_confirmation", "allowed_engines", "max_steps", "max_tokens", "step_timeout_s")
LAYERS = ("server", "project", "flow", "run")


@dataclass(frozen=True, slots=True)
class Policy:
    """The effective rules a run lives under. `None` means no limit for that field."""

    read_only: bool = False
    require_confirmation: bool = False
    allowed_engines: tuple[str, ...] | None = None
    max_steps: int | None = None
    max_tokens: int | None = None
    step_timeout_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "read_only": self.read_only,
            "require_confirmation": self.require_confirmation,
            "allowed_engines": list(self.allowed_engines) if self.allowed_engines is not None else None,
            "max_steps": self.max_steps,
            "max_tokens": self.max_tokens,
            "step_timeout_s": self.step_timeout_s,
        }

    def allows_engine(self, spec: str) -> bool:
        """An engine is allowed when its spec or its family (`openai` of `openai:gpt`) is listed."""
        if self.allowed_engines is None:
            return True
        family = spec.split(":", 1)[0]
        return spec in self.allowed_engines or family in self.allowed_engines


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """What is stored on a run: the effective policy, each layer as given, and any override notices."""

    effective: Policy
    layers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "effective": self.effective.to_json(),
            "layers": {name: dict(self.layers.get(name) or {}) for name in LAYERS},
            "overrides": list(self.overrides),
        }


def parse_layer(raw: Mapping[str, Any] | None, *, layer: str) -> dict[str, Any]:
    """Check one layer's fields and types; unknown fields and wrong types are refused by name."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidInputs(f"the {layer} policy must be an object with fields {', '.join(FIELDS)}")
    problems = []
    clean: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in FIELDS:
            problems.append(f"{key!r} is not a policy field (known: {', '.join(FIELDS)})")
        elif value is None:
            clean[key] = None
        elif key in ("read_only", "require_confirmation"):
            if not isinstance(value, bool):
                problems.append(f"{key} must be true or false, got {value!r}")
            else:
                clean[key] = value
        elif key == "allowed_engines":
            if (
                not isinstance(value, Sequence)
                or isinstance(value, str)
                or not all(isinstance(v, str) for v in value)
            ):
                problems.append(f"allowed_engines must be a list of engine names, got {value!r}")
            else:
                clean[key] = list(value)
        elif key in ("max_steps", "max_tokens"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{key} must be a positive whole number, got {value!r}")
            else:
                clean[key] = value
        elif key == "step_timeout_s":
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                problems.append(f"step_timeout_s must be a positive number of seconds, got {value!r}")
            else:
                clean[key] = float(value)
    if problems:
        raise InvalidInputs(f"the {layer} policy is not valid: " + "; ".join(problems))
    return clean


def tighten(base: Policy, layer: Mapping[str, Any]) -> Policy:
    """Apply a layer that may only make rules stricter: flags OR, lists intersect, limits take the min."""
    engines = base.allowed_engines
    if layer.get("allowed_engines") is not None:
        wanted = tuple(layer["allowed_engines"])
        engines = wanted if engines is None else tuple(e for e in engines if e in wanted)
    return Policy(
        read_only=base.read_only or bool(layer.get("read_only")),
        require_confirmation=base.require_confirmation or bool(layer.get("require_confirmation")),
        allowed_engines=engines,
        max_steps=_min(base.max_steps, layer.get("max_steps")),
        max_tokens=_min(base.max_tokens, layer.get("max_tokens")),
        step_timeout_s=_min(base.step_timeout_s, layer.get("step_timeout_s")),
    )


def loosenings(base: Policy, layer: Mapping[str, Any]) -> list[str]:
    """The fields of `layer` that would make `base` less strict, described for a person."""
    found = []
    if layer.get("read_only") is False and base.read_only:
        found.append("read_only: true -> false")
    if layer.get("require_confirmation") is False and base.require_confirmation:
        found.append("require_confirmation: true -> false")
    wanted = layer.get("allowed_engines")
    if wanted is not None and base.allowed_engines is not None:
        extra = sorted(set(wanted) - set(base.allowed_engines))
        if extra:
            found.append(f"allowed_engines: adds {', '.join(extra)}")
    for key in ("max_steps", "max_tokens", "step_timeout_s"):
        value, current = layer.get(key), getattr(base, key)
        if current is not None and (
            (value is None and key in layer) or (value is not None and value > current)
        ):
            found.append(f"{key}: {current} -> {value if value is not None else 'unlimited'}")
    return found


def override(base: Policy, layer: Mapping[str, Any]) -> Policy:
    """An admin's run layer: its fields replace the base's, loosening included."""
    values = base.to_json()
    values.update({k: v for k, v in layer.items() if k in FIELDS})
    engines = values["allowed_engines"]
    return Policy(
        read_only=bool(values["read_only"]),
        require_confirmation=bool(values["require_confirmation"]),
        allowed_engines=tuple(engines) if engines is not None else None,
        max_steps=values["max_steps"],
        max_tokens=values["max_tokens"],
        step_timeout_s=values["step_timeout_s"],
    )


def effective_policy(
    server: Mapping[str, Any] | None,
    project: Mapping[str, Any] | None,
    flow: Mapping[str, Any] | None,
    run: Mapping[str, Any] | None,
    *,
    run_may_loosen: bool,
) -> PolicySnapshot:
    """Merge the four layers. A run layer that loosens is refused unless `run_may_loosen` (admins)."""
    layers = {
        "server": parse_layer(server, layer="server"),
        "project": parse_layer(project, layer="project"),
        "flow": parse_layer(flow, layer="flow"),
        "run": parse_layer(run, layer="run"),
    }
    policy = Policy()
    for name in ("server", "project", "flow"):
        policy = tighten(policy, layers[name])
    loosened = loosenings(policy, layers["run"])
    if loosened and not run_may_loosen:
        from baton.domain.errors import PolicyDenied

        raise PolicyDenied(
            "a run request may only tighten the policy; it tried to loosen "
            + "; ".join(loosened)
            + ". Ask a project admin, or leave these fields out."
        )
    if loosened:
        notices = tuple(f"admin override: {change}" for change in loosened)
        return PolicySnapshot(override(policy, layers["run"]), layers, notices)
    return PolicySnapshot(tighten(policy, layers["run"]), layers)


def _min(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
