"""What a rollout's group ran when it started, and an index on when rollouts ended.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A promotion checks that the group still runs what it ran at the start of the
rollout, and never deploys over anything newer. Rollouts already in the
database when this runs did not record it: `baseline_recorded` is false for
them (the server default), and they are promoted unchecked, as before.

Device reports keep being recorded for rollouts that ended recently; the
index on `ended_at` keeps finding those cheap.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column(
        "rollouts", sa.Column("baseline_recorded", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("rollouts", sa.Column("baseline_deployment_id", sa.String(length=24), nullable=True))
    op.add_column("rollouts", sa.Column("baseline_sha256", sa.String(length=64), nullable=True))
    op.create_index("ix_rollouts_ended_at", "rollouts", ["ended_at"])


def downgrade() -> None:
    op.drop_index("ix_rollouts_ended_at", table_name="rollouts")
    # SQLite (3.35 and later) drops a plain column in place, like PostgreSQL.
    for column in ("baseline_sha256", "baseline_deployment_id", "baseline_recorded"):
        op.drop_column("rollouts", column)
