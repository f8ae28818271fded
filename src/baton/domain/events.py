"""Event types and the draft of an event before the store gives it a sequence number."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

EventType = Literal[
    "run.created",
    "run.confirmed",
    "run.queued",
    "run.started",
    "run.waiting",
    "run.resumed",
    "run.cancel_requested",
    "run.cancelled",
    "run.succeeded",
    "run.failed",
    "run.retried",
    "run.forked",
    "plan.generated",
    "step.queued",
    "step.started",
    "step.delta",
    "step.succeeded",
    "step.failed",
    "step.retrying",
    "step.cancelled",
    "step.skipped",
    "step.lease_expired",
    "step.stale_result",
    "step.engine",
    "score.updated",
    "input.requested",
    "input.answered",
    "artifact.created",
    "policy.override",
    "policy.denied",
    "log",
]

#: An event payload never exceeds this many bytes of JSON; large content goes to artifacts.
MAX_EVENT_PAYLOAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event to append; the store adds `id`, `seq` and `created_at` in the same transaction."""

    type: EventType
    payload: dict[str, Any] = field(default_factory=dict)
    step_key: str | None = None
    attempt: int | None = None
