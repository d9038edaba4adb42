"""Retries of a device's group trigger, per rollout device.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

A device that failed in a stage (a 203, another version after its 201, or
silence after its 201) is reached again by publishing its group's trigger
again, a bounded number of times with backoff. Each rollout device records how
many times that was done, and when the next one is due. Rows already in the
database start with no retries.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("rollout_devices", sa.Column("retries", sa.Integer(), server_default="0", nullable=False))
    op.add_column("rollout_devices", sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for column in ("retry_at", "retries"):
        op.drop_column("rollout_devices", column)
