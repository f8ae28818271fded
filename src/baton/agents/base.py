"""The Engine interface: one abstract `run`, with the step's context passed in as a Protocol."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class StepContext(Protocol):
    """What an engine or a code step may use while it runs (implemented by the engine package)."""

    run_id: str
    step_key: str
    attempt: int
    inputs: Mapping[str, Any]
    upstream: Mapping[str, Any]

    def emit(self, text: str) -> None:
        """Stream text: it becomes coalesced `step.delta` events that viewers see live."""

    def log(self, message: str) -> None:
        """A `log` event on the run's timeline."""

    def artifact(self, name: str, content: bytes | str, media_type: str = "text/plain") -> None:
        """Attach named content to this attempt; stored with the step's result."""

    @property
    def cancelled(self) -> bool:
        """True once the run is being cancelled; long loops should check it."""


@dataclass(frozen=True, slots=True)
class StepRequest:
    """What an agent step asks of its engine."""

    agent: str
    prompt: str
    inputs: Mapping[str, Any]
    upstream: Mapping[str, Any]
    engine: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepResult:
    """What an engine returns: the output (text or structured) and how it was produced."""

    output: Any
    engine: str
    model: str | None = None
    usage: Mapping[str, int] = field(default_factory=dict)


class Engine(ABC):
    """Runs one agent step. Streaming goes through `ctx.emit`; cancellation is task cancellation."""

    spec: str = ""

    @abstractmethod
    async def run(self, request: StepRequest, ctx: StepContext) -> StepResult: ...
