"""history indexes: a project's runs in one status, newest first; runs with a deadline

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 10:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # GET /v1/runs?status=… reads each project's newest runs of that status without scanning the
    # project's other runs (bench/history.py, issue 7).
    op.create_index("ix_runs_project_status_created", "runs", ["project_id", "status", "created_at"])
    # The reaper's look for overdue runs, in every process every few seconds, inside a write
    # transaction: without it a scan of every run (40 ms at 100,000 runs, holding SQLite's lock).
    op.create_index("ix_runs_deadline", "runs", ["deadline_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_deadline", table_name="runs")
    op.drop_index("ix_runs_project_status_created", table_name="runs")
