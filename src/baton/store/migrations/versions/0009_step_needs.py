"""step needs as rows, a run's claimable steps in order, no lease index: a step's end reads what it needs

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 02:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "step_needs",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("need", sa.String(length=100), nullable=False),
        sa.Column("step_key", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_step_needs_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "need", "step_key", name=op.f("pk_step_needs")),
    )
    # Every step's needs, whatever its status: a step set back to pending later (a retry from
    # an earlier step) is satisfied through these rows like any other.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "INSERT INTO step_needs (run_id, need, step_key)"
            " SELECT DISTINCT steps.run_id, needs.value, steps.key"
            " FROM steps CROSS JOIN LATERAL json_array_elements_text(steps.needs) AS needs(value)"
        )
    else:
        op.execute(
            "INSERT INTO step_needs (run_id, need, step_key)"
            " SELECT DISTINCT steps.run_id, needs.value, steps.key"
            " FROM steps, json_each(steps.needs) AS needs"
        )
    with op.batch_alter_table("steps", schema=None) as batch_op:
        # The reaper's look for expired leases is `status = 'running' AND (lease_expires_at < now
        # OR deadline_at < now)`: the OR keeps it to the status prefix, which ix_steps_claimable
        # has too, so this index served no query and cost a write on every claim, end and
        # heartbeat.
        batch_op.drop_index("ix_steps_lease")
        batch_op.drop_index("ix_steps_run_status")
        batch_op.create_index("ix_steps_run_status_unmet", ["run_id", "status", "unmet"], unique=False)
        batch_op.create_index(
            "ix_steps_run_claimable", ["run_id", "status", "available_at", "position"], unique=False
        )
        batch_op.drop_column("needs_key")


def downgrade() -> None:
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("needs_key", sa.Text(), server_default="", nullable=False))
        batch_op.drop_index("ix_steps_run_claimable")
        batch_op.drop_index("ix_steps_run_status_unmet")
        batch_op.create_index("ix_steps_run_status", ["run_id", "status"], unique=False)
        batch_op.create_index("ix_steps_lease", ["status", "lease_expires_at"], unique=False)
    bind = op.get_bind()
    steps = sa.table(
        "steps", sa.column("id", sa.String), sa.column("needs", sa.JSON), sa.column("needs_key", sa.Text)
    )
    for row in bind.execute(sa.select(steps.c.id, steps.c.needs)).all():
        needs = list(row.needs or [])
        if needs:
            bind.execute(
                sa.update(steps).where(steps.c.id == row.id).values(needs_key="|" + "|".join(needs) + "|")
            )
    op.drop_table("step_needs")
