"""SQLAlchemy Core tables and indexes: one schema for SQLite and PostgreSQL.

Timestamps are UTC seconds since the epoch as doubles, always taken from the database clock,
so leases never depend on a worker's clock and both dialects compare them the same way.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite gives INTEGER PRIMARY KEY its rowid behaviour only for the exact type INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")

runs = Table(
    "runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("flow", String(100), nullable=False),
    Column("flow_version", String(40), nullable=False, server_default="1"),
    Column("project_id", String(100), nullable=True),
    Column("created_by", String(100), nullable=True),
    Column("title", Text, nullable=False, server_default=""),
    Column("band", String(20), nullable=True),
    Column("source", JSON, nullable=True),
    Column("inputs", JSON, nullable=False),
    Column("status", String(24), nullable=False),
    Column("status_reason", Text, nullable=False, server_default=""),
    Column("policy", JSON, nullable=False),
    Column("idempotency_key", String(200), nullable=True),
    Column("concurrency_key", String(300), nullable=False),
    Column("concurrency_limit", Integer, nullable=False, server_default="1"),
    Column("concurrency_strategy", String(20), nullable=False, server_default="enqueue"),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("retry_of", String(40), nullable=True),
    Column("forked_from", String(40), nullable=True),
    Column("fork_step", String(100), nullable=True),
    Column("cancel_requested_at", Float, nullable=True),
    Column("timeout_s", Float, nullable=True),
    Column("deadline_at", Float, nullable=True),
    Column("last_seq", BigInteger, nullable=False, server_default="0"),
    Column("result", JSON, nullable=True),
    Column("report", Text, nullable=True),
    #: token counts summed over every step attempt that reported usage
    Column("usage", JSON, nullable=True),
    #: what the flow says about where the run is: stage, attempt, max_attempts, score…
    Column("progress", JSON, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("queued_at", Float, nullable=True),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    #: the schedule that made this run (kept when the schedule is deleted)
    Column("schedule_id", String(40), nullable=True),
    Index("ix_runs_project_created", "project_id", "created_at"),
    # A project's runs in one status, newest first: the run list filtered by status (migration 0008).
    Index("ix_runs_project_status_created", "project_id", "status", "created_at"),
    Index("ix_runs_schedule", "schedule_id"),
    Index("ix_runs_status_key", "status", "concurrency_key"),
    Index("ix_runs_created", "created_at"),
    # The reaper's overdue runs (migration 0008): most runs have no deadline, so the index is small.
    Index("ix_runs_deadline", "deadline_at"),
    # The key is stored already scoped to its project and user, so one unique index covers both.
    Index("uq_runs_idempotency", "idempotency_key", unique=True),
)

steps = Table(
    "steps",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("run_id", String(40), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(100), nullable=False),
    Column("kind", String(10), nullable=False),
    Column("status", String(12), nullable=False),
    Column("needs", JSON, nullable=False),
    #: how many of `needs` have not succeeded yet; a pending step with 0 is ready
    Column("unmet", Integer, nullable=False, server_default="0"),
    Column("position", Integer, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False, server_default="3"),
    Column("available_at", Float, nullable=False, server_default="0"),
    Column("lease_token", String(40), nullable=True),
    Column("claimed_by", String(200), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("timeout_s", Float, nullable=True),
    Column("deadline_at", Float, nullable=True),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("output", JSON, nullable=True),
    Column("output_ref", String(40), nullable=True),
    Column("output_text", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("engine", String(200), nullable=True),
    #: token counts of the attempt that succeeded: input_tokens, output_tokens
    Column("usage", JSON, nullable=True),
    UniqueConstraint("run_id", "key"),
    # The claim query: queued steps whose time has come, oldest first.
    Index("ix_steps_claimable", "status", "available_at"),
    # A run's steps in one status. A worker that ends a step claims the next of the same run:
    # that run's ready steps in order.
    Index("ix_steps_run_claimable", "run_id", "status", "available_at", "position"),
)

# One row per need of a step: the steps waiting on one that just succeeded are found by the
# primary key, where a LIKE over every pending step's needs made each step's end cost grow
# with the run's length (a 1,000-step chain: quadratic).
step_needs = Table(
    "step_needs",
    metadata,
    Column("run_id", String(40), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("need", String(100), nullable=False),
    Column("step_key", String(100), nullable=False),
    PrimaryKeyConstraint("run_id", "need", "step_key"),
)

events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(40), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    # PostgreSQL: the writing transaction's id, so readers can wait for every older transaction
    # to end before moving past it (commit-ordered cursor). SQLite writes one at a time: 0.
    Column("tx", BigInteger, nullable=False, server_default="0"),
    Column("type", String(40), nullable=False),
    Column("step_key", String(100), nullable=True),
    Column("attempt", Integer, nullable=True),
    Column("payload", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("run_id", "seq"),
    Index("ix_events_tx_id", "tx", "id"),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("run_id", String(40), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("step_key", String(100), nullable=True),
    Column("attempt", Integer, nullable=True),
    Column("name", String(200), nullable=False),
    Column("media_type", String(100), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_artifacts_run", "run_id", "created_at"),
)

input_requests = Table(
    "input_requests",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("run_id", String(40), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("step_key", String(100), nullable=False),
    Column("project_id", String(100), nullable=True),
    Column("prompt", Text, nullable=False),
    Column("schema", JSON, nullable=False),
    Column("status", String(12), nullable=False),
    Column("answer", JSON, nullable=True),
    Column("answered_by", String(100), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("answered_at", Float, nullable=True),
    Column("expires_at", Float, nullable=True),
    Index("ix_input_requests_status", "status", "created_at"),
    Index("ix_input_requests_run", "run_id"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("in_flight", Integer, nullable=False, server_default="0"),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("stopped_at", Float, nullable=True),
)

users = Table(
    "users",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
)

projects = Table(
    "projects",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("policy", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("project_id", String(100), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", String(40), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("role", String(10), nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("project_id", "user_id"),
    Index("ix_memberships_user", "user_id"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    # Only a SHA-256 of the secret is kept; the secret is shown once, when it is made.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("project_id", String(100), ForeignKey("projects.id", ondelete="CASCADE"), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=True),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Index("ix_tokens_user", "user_id"),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(100), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("url", Text, nullable=False),
    #: event types it receives, or ["*"]
    Column("event_types", JSON, nullable=False),
    # Kept in clear: signing needs it. Never returned after creation, never logged.
    Column("secret", String(200), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("active", Boolean, nullable=False, server_default="1"),
    Column("created_by", String(40), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_webhooks_project", "project_id", "created_at"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("webhook_id", String(40), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    #: the event delivered; NULL for a test ping
    Column("event_id", BigInteger, nullable=True),
    Column("event_type", String(40), nullable=False),
    Column("run_id", String(40), nullable=True),
    #: the JSON body, fixed when the delivery is made so every retry sends the same bytes
    Column("body", JSON, nullable=False),
    #: pending, succeeded or failed
    Column("status", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    #: when it is due; while an attempt is in flight, when that attempt's lease runs out
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_token", String(40), nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_attempt_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    # A cursor read twice cannot deliver one event to one webhook twice.
    UniqueConstraint("webhook_id", "event_id"),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_webhook", "webhook_id", "created_at"),
)

#: where the webhook dispatcher is in the global event log (one row, name "dispatch")
webhook_cursors = Table(
    "webhook_cursors",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("position", String(60), nullable=False),
    Column("updated_at", Float, nullable=False),
)

# A schedule makes runs of a flow on a cron expression or an interval (docs/schedules.md). A paused
# schedule has no next fire time, so the due query is one range scan of `next_fire_at`.
schedules = Table(
    "schedules",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(100), nullable=True),
    Column("created_by", String(100), nullable=True),
    Column("flow", String(100), nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("title", Text, nullable=False, server_default=""),
    Column("band", String(20), nullable=True),
    #: the run layer of the policy its runs ask for (may only tighten)
    Column("policy", JSON, nullable=True),
    Column("cron", String(200), nullable=True),
    Column("timezone", String(64), nullable=False, server_default="UTC"),
    Column("interval_s", Float, nullable=True),
    #: what fires missed while no worker ran become: skip | run_once
    Column("missed", String(10), nullable=False, server_default="skip"),
    #: whether its runs skip the flow's confirmation (a project or server policy still requires it)
    Column("auto_confirm", Boolean, nullable=False, server_default="1"),
    Column("next_fire_at", Float, nullable=True),
    Column("paused_at", Float, nullable=True),
    Column("last_fire_at", Float, nullable=True),
    Column("last_run_id", String(40), nullable=True),
    #: why the last fire made no run (a policy refusal, inputs the flow no longer accepts)
    Column("last_error", Text, nullable=True),
    Column("fires", Integer, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_schedules_due", "next_fire_at"),
    Index("ix_schedules_project_created", "project_id", "created_at"),
)

__all__ = [
    "artifacts",
    "events",
    "input_requests",
    "memberships",
    "metadata",
    "projects",
    "runs",
    "schedules",
    "steps",
    "text",
    "tokens",
    "users",
    "webhook_cursors",
    "webhook_deliveries",
    "webhooks",
    "workers",
]
