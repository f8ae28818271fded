"""The Engine interface: one abstract `run`, with the step's context passed in as a Protocol."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from baton.domain.errors import StepFailed


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
class ToolSpec:
    """A function a model may call. Only tools marked `read_only` are offered under a read-only policy."""

    name: str
    description: str
    fn: Callable[..., Any]
    read_only: bool


@dataclass(frozen=True, slots=True)
class StepRequest:
    """What an agent step asks of its engine."""

    agent: str
    prompt: str
    inputs: Mapping[str, Any]
    upstream: Mapping[str, Any]
    engine: str
    #: the agent's persona: its system prompt (Markdown)
    persona: str = ""
    #: model settings such as temperature and max_tokens
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: JSON Schema the output must satisfy; None means free text
    output_schema: Mapping[str, Any] | None = None
    #: tools the policy allows this step to offer (already filtered, deny by default)
    tools: tuple[ToolSpec, ...] = ()
    read_only: bool = False
    #: the folder file tools and CLI agents work in
    workspace: str | None = None
    attempt: int = 1
    #: the previous attempt's error (for example output validation errors) to give back to the model
    feedback: str | None = None
    #: a key stable across attempts of this step, for external effects: `run_id:step_key`
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class StepResult:
    """What an engine returns: the output (text or structured) and how it was produced."""

    output: Any
    engine: str
    model: str | None = None
    #: token counts: input_tokens, output_tokens
    usage: Mapping[str, int] = field(default_factory=dict)
    #: "read-only" or "read-write": how the engine really ran
    mode: str = "read-write"


class Engine(ABC):
    """Runs one agent step. Streaming goes through `ctx.emit`; cancellation is task cancellation."""

    spec: str = ""

    #: True when the engine can prove it runs without side effects outside the step.
    def supports_read_only(self) -> bool:
        return False

    @abstractmethod
    async def run(self, request: StepRequest, ctx: StepContext) -> StepResult: ...


class EngineUnavailable(StepFailed):
    """The engine cannot run: a missing binary, key or unreachable server. Never a fallback."""


class PolicyRefused(StepFailed):
    """The policy forbids what the step needs; the step fails and a `policy.denied` event names the rule."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message, retryable=False)
        self.rule = rule

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_policy_refused, (self.message, self.rule))


def _rebuild_policy_refused(message: str, rule: str) -> PolicyRefused:
    return PolicyRefused(message, rule=rule)


class OutputInvalid(StepFailed):
    """The output does not satisfy the agent's schema; the next attempt gets the errors back."""
