"""Retries of a device's group trigger, per rollout device and per plain deploy.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

A device that failed in a stage (a 203, another version after its 201, or
silence after its 201) is reached again by publishing its group's trigger
again, a bounded number of times with backoff. Each rollout device records how
many times that was done, and when the next one is due. Rows already in the
database start with no retries.

A plain deploy (no rollout) now follows its triggered devices too: one
`plain_deploys` row while it is followed, and one `deploy_devices` row per
device, with its outcome and retries as in `rollout_devices`.
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
    op.create_table(
        "plain_deploys",
        sa.Column("deployment_id", sa.String(length=24), nullable=False),
        sa.Column("owner_id", sa.String(length=24), nullable=False),
        sa.Column("group_id", sa.String(length=24), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"]),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("deployment_id"),
    )
    op.create_index("ix_plain_deploys_ended_at", "plain_deploys", ["ended_at"])
    op.create_table(
        "deploy_devices",
        sa.Column("deployment_id", sa.String(length=24), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("group_id", sa.String(length=24), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("started_update", sa.Boolean(), nullable=False),
        sa.Column("uptime_at_start", sa.Float(), nullable=True),
        sa.Column("fw_version", sa.String(length=64), nullable=True),
        sa.Column("code", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["deployment_id"], ["plain_deploys.deployment_id"]),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("deployment_id", "device_id"),
    )
    op.create_index("ix_deploy_devices_device_id", "deploy_devices", ["device_id"])


def downgrade() -> None:
    # Dropping a table drops its indexes.
    op.drop_table("deploy_devices")
    op.drop_table("plain_deploys")
    for column in ("retry_at", "retries"):
        op.drop_column("rollout_devices", column)
