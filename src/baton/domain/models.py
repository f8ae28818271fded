"""Frozen values for runs and steps as the pure decision functions see them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from baton.domain.status import RunStatus, StepKind, StepStatus


@dataclass(frozen=True, slots=True)
class StepView:
    """One step of a run, as far as scheduling decisions care."""

    key: str
    kind: StepKind
    status: StepStatus
    needs: tuple[str, ...] = ()
    attempt: int = 0
    max_attempts: int = 3
    position: int = 0
    output: Any = None
    error: str | None = None
    spec: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunView:
    """A run, as far as the flow's `expand` hook and the report care."""

    id: str
    flow: str
    status: RunStatus
    inputs: Mapping[str, Any]
    steps: tuple[StepView, ...]
    band: str | None = None
    title: str = ""

    def step(self, key: str) -> StepView:
        for candidate in self.steps:
            if candidate.key == key:
                return candidate
        raise KeyError(key)
