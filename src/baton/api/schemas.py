"""Request and response shapes of the HTTP API (separate from the store's rows)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Id = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")


def iso(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def iso_required(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunCreate(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "flow": "repo-review",
                    "inputs": {"path": ".", "focus": "tests"},
                    "title": "Review the tests",
                },
                {
                    "flow": "repo-review",
                    "project_id": "default",
                    "policy": {"read_only": True},
                    "confirm": True,
                },
            ]
        }
    )

    flow: str = Field(min_length=1, max_length=100, description="name of a flow from GET /v1/flows")
    project_id: str | None = Field(default=None, min_length=1, max_length=100)
    inputs: dict[str, Any] = Field(default_factory=dict)
    title: str = Field(default="", max_length=500)
    band: Literal["small", "medium", "large"] | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=150)
    source: dict[str, Any] | None = None
    policy: dict[str, Any] | None = Field(default=None, description="run layer: may only tighten")
    confirm: bool = Field(default=False, description="skip confirmation where policy allows")
    priority: int = Field(default=0, ge=-1000, le=1000)
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 86400)


class TransitionBody(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "the plan looks right"}]})

    reason: str = Field(default="", max_length=1000)


class RetryBody(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"reason": "the model timed out", "idempotency_key": "retry-1"}]}
    )

    reason: str = Field(default="", max_length=1000)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=150)


class ForkBody(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"from_step": "synthesis", "inputs": {"focus": "security"}}]}
    )

    from_step: str = Field(min_length=1, max_length=100)
    inputs: dict[str, Any] | None = None


class AnswerBody(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"answer": {"approved": True}}, {"answer": "yes"}]}
    )

    answer: Any = Field(description="must satisfy the request's JSON Schema")


class StepOut(BaseModel):
    key: str
    kind: str
    status: str
    label: str
    needs: list[str]
    attempt: int
    max_attempts: int
    engine: str | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    output: Any = None
    output_ref: str | None = None
    output_text: str | None = None
    usage: dict[str, int] | None = None


class InputRequestOut(BaseModel):
    id: str
    run_id: str
    step_key: str
    project_id: str | None
    prompt: str
    json_schema: dict[str, Any] = Field(alias="schema")
    status: str
    answer: Any = None
    answered_by: str | None = None
    created_at: datetime
    answered_at: datetime | None = None
    expires_at: datetime | None = None

    model_config = ConfigDict(populate_by_name=True)


class RunSummary(BaseModel):
    id: str
    flow: str
    project_id: str | None
    created_by: str | None
    schedule_id: str | None = Field(default=None, description="the schedule that made this run, if one did")
    title: str
    band: str | None
    status: str
    status_reason: str
    retry_of: str | None
    forked_from: str | None
    fork_step: str | None
    cancel_requested: bool
    stalled: bool = False
    progress: dict[str, Any] | None = Field(
        default=None, description="where the flow says the run is: stage, attempt, max_attempts, score"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunOut(RunSummary):
    inputs: dict[str, Any]
    source: dict[str, Any] | None
    policy: dict[str, Any]
    result: Any = None
    report: str | None = None
    usage: dict[str, int] | None = Field(default=None, description="token counts summed over the run")
    steps: list[StepOut]
    pending_inputs: list[InputRequestOut]


class RunPage(BaseModel):
    runs: list[RunSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")


class EventOut(BaseModel):
    """The one envelope of every event, in pages and in SSE frames."""

    type: str
    id: int = Field(description="the run's dense sequence number")
    timestamp: datetime
    run_id: str
    payload: dict[str, Any]


class EventPage(BaseModel):
    events: list[EventOut]
    next_after: int


class ArtifactOut(BaseModel):
    id: str
    run_id: str
    step_key: str | None
    attempt: int | None
    name: str
    media_type: str
    size: int
    created_at: datetime


class FlowStepOut(BaseModel):
    key: str
    kind: str
    needs: list[str]
    engine: str | None
    label: str


class FlowOut(BaseModel):
    name: str
    title: str
    description: str
    category: str
    version: str
    bands: list[str]
    #: what each band runs: `{"small": {"steps": [...]}}` (a graph) or `{"max_attempts": n}` (a loop)
    band_details: dict[str, dict[str, Any]] = {}
    input_schema: dict[str, Any]
    require_confirmation: bool
    steps: list[FlowStepOut]


class AgentOut(BaseModel):
    """A declared agent (flow is null) or an agent step of a flow."""

    name: str
    flow: str | None
    engine: str
    prompt: str
    description: str = ""
    tools: list[str] = Field(default_factory=list)
    output_schema: dict[str, Any] | None = None


class ProjectCreate(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": "research", "name": "Research", "policy": {"read_only": True}}]
        }
    )

    id: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str = Field(default="", max_length=200)
    policy: dict[str, Any] = Field(default_factory=dict)


class ProjectOut(BaseModel):
    id: str
    name: str
    policy: dict[str, Any]
    role: str | None
    created_at: datetime


class PolicyBody(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"policy": {"require_confirmation": True, "max_steps": 50}}]}
    )

    policy: dict[str, Any]


class MemberIn(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"user": "bob", "role": "member"}]})

    user: str = Field(min_length=1, max_length=200, description="user name; created if new (admins only)")
    role: Literal["viewer", "member", "admin"]


class MemberOut(BaseModel):
    user_id: str
    user: str
    role: str
    created_at: datetime


class TokenCreate(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "ci", "expires_in_s": 86400}]})

    name: str = Field(default="api", min_length=1, max_length=200)
    project_id: str | None = Field(default=None, min_length=1, max_length=100)
    expires_in_s: float | None = Field(default=None, gt=0, le=5 * 365 * 86400)


class TokenOut(BaseModel):
    id: str
    name: str
    prefix: str
    project_id: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="the secret: shown once, store it now")


class ScheduleCreate(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "flow": "repo-review",
                    "project_id": "default",
                    "inputs": {"path": "."},
                    "cron": "0 9 * * MON-FRI",
                    "timezone": "Europe/Paris",
                },
                {"flow": "repo-review", "interval_s": 3600, "missed": "run_once", "auto_confirm": False},
            ]
        }
    )

    flow: str = Field(min_length=1, max_length=100, description="name of a flow from GET /v1/flows")
    project_id: str | None = Field(default=None, min_length=1, max_length=100)
    inputs: dict[str, Any] = Field(default_factory=dict, description="checked against the flow's inputs")
    title: str = Field(default="", max_length=500, description="the title of its runs")
    band: Literal["small", "medium", "large"] | None = None
    policy: dict[str, Any] | None = Field(default=None, description="run layer of its runs: may only tighten")
    cron: str | None = Field(
        default=None, min_length=1, max_length=200, description="five fields, or @hourly/@daily/@weekly…"
    )
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="IANA zone of the cron")
    interval_s: float | None = Field(default=None, description="seconds between fires (at least 1)")
    missed: Literal["skip", "run_once"] = Field(
        default="skip", description="fires missed while no worker ran: skip them, or one run for them all"
    )
    auto_confirm: bool = Field(default=True, description="runs skip the flow's confirmation, not a policy's")
    paused: bool = False


class ScheduleOut(BaseModel):
    id: str
    project_id: str | None
    created_by: str | None
    flow: str
    inputs: dict[str, Any]
    title: str
    band: str | None
    policy: dict[str, Any] | None
    cron: str | None
    timezone: str
    interval_s: float | None
    missed: str
    auto_confirm: bool
    paused: bool
    next_fire_at: datetime | None
    next_fires: list[datetime] = Field(description="the next fire times, soonest first (none while paused)")
    last_fire_at: datetime | None
    last_run_id: str | None
    last_error: str | None = Field(description="why the last fire made no run, if it made none")
    fires: int = Field(description="how many runs it has made")
    created_at: datetime
    updated_at: datetime


class Health(BaseModel):
    status: Literal["ok"]
    database: str
    workers: int
