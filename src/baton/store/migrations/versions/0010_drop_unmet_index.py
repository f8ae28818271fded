"""no index on a run's pending steps by unmet needs: a step's end releases its dependents directly

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 06:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # It served the search for pending steps left with no unmet need, at every step's end. A
    # step's end now counts down and releases its dependents in one statement, found by their
    # needs (steps.satisfy_and_release), so the index only cost a write at every change of a
    # step's status. The rare searches left (a run's start, a resume) read the run's pending
    # steps through ix_steps_run_claimable.
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_index("ix_steps_run_status_unmet")


def downgrade() -> None:
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.create_index("ix_steps_run_status_unmet", ["run_id", "status", "unmet"], unique=False)
