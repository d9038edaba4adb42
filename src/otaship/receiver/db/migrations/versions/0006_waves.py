"""Rollouts in waves, paused and resumed, rolled back; devices' boot times.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A rollout runs its waves (subgroups of its group, the first being the canary)
in order, then the whole group. Each wave is a `rollout_waves` row with the
policy it is judged by and its own clock. Rollouts already in the database had
one wave, their canary: each gets that row, with the canary's group, policy and
times, and its canary devices are marked wave 0, so they go on unchanged.

A pause or resume is a `rollout_controls` row (who, when). A rollout may halt
on a failure rate and may roll back. A followed device records when it booted
before its 201, so that a reboot is seen even after a report of uptime 0, and
why it failed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

ROLLOUT_COLUMNS = ("rollback", "paused_at", "min_devices", "max_failure_rate", "wave")
DEVICE_COLUMNS = ("reason", "reboots", "booted_at", "boot_at_start", "wave")


def upgrade() -> None:
    op.add_column("rollouts", sa.Column("wave", sa.Integer(), server_default="0", nullable=False))
    op.add_column("rollouts", sa.Column("max_failure_rate", sa.Float(), nullable=True))
    op.add_column("rollouts", sa.Column("min_devices", sa.Integer(), server_default="1", nullable=False))
    op.add_column("rollouts", sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("rollouts", sa.Column("rollback", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        "rollout_waves",
        sa.Column("rollout_id", sa.String(length=24), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.String(length=24), nullable=False),
        sa.Column("canary_timeout", sa.Integer(), nullable=False),
        sa.Column("success_threshold", sa.Float(), nullable=False),
        sa.Column("error_threshold", sa.Integer(), nullable=False),
        sa.Column("soak", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("healthy_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"]),
        sa.PrimaryKeyConstraint("rollout_id", "position"),
    )
    op.create_table(
        "rollout_controls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.String(length=24), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=400), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rollout_controls_rollout_id", "rollout_controls", ["rollout_id"])
    op.add_column("rollout_devices", sa.Column("wave", sa.Integer(), nullable=True))
    op.add_column("rollout_devices", sa.Column("boot_at_start", sa.DateTime(timezone=True), nullable=True))
    op.add_column("rollout_devices", sa.Column("booted_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("rollout_devices", sa.Column("reboots", sa.Integer(), server_default="0", nullable=False))
    op.add_column("rollout_devices", sa.Column("reason", sa.String(length=16), nullable=True))
    op.add_column("deploy_devices", sa.Column("boot_at_start", sa.DateTime(timezone=True), nullable=True))
    # Every rollout so far had one wave, its canary: the same group, policy and times.
    op.execute(
        "INSERT INTO rollout_waves (rollout_id, position, group_id, canary_timeout, success_threshold, "
        "error_threshold, soak, started_at, healthy_at, ended_at) "
        "SELECT id, 0, canary_group_id, canary_timeout, success_threshold, error_threshold, soak, "
        "canary_started_at, canary_healthy_at, COALESCE(fleet_started_at, ended_at) FROM rollouts"
    )
    op.execute("UPDATE rollout_devices SET wave = 0 WHERE stage = 'canary'")


def downgrade() -> None:
    # The canary's soak goes on from where its wave 0 was; later waves are forgotten.
    op.execute(
        "UPDATE rollouts SET canary_healthy_at = (SELECT healthy_at FROM rollout_waves "
        "WHERE rollout_waves.rollout_id = rollouts.id AND rollout_waves.position = 0)"
    )
    op.drop_column("deploy_devices", "boot_at_start")
    for column in DEVICE_COLUMNS:
        op.drop_column("rollout_devices", column)
    op.drop_table("rollout_controls")
    op.drop_table("rollout_waves")
    for column in ROLLOUT_COLUMNS:
        op.drop_column("rollouts", column)
