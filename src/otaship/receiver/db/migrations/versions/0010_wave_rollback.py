"""Automatic rollback: what each wave ran before the rollout, and what its rollback did.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

A wave records the image and version its subtree ran just before the rollout
deployed to it; a rollback after a halt deploys that image again. Waves
already in the database have nothing recorded (`previous_recorded` false): a
rollback leaves them as they are, and says so.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS = ("rollback", "previous_version", "previous_sha256", "previous_recorded")


def upgrade() -> None:
    with op.batch_alter_table("rollout_waves") as batch:
        batch.add_column(
            sa.Column("previous_recorded", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("previous_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("previous_version", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("rollback", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollout_waves") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
