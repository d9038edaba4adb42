"""The initial schema: what `SQLModel.metadata.create_all` made before migrations.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Written out with plain SQLAlchemy types (String for SQLModel's AutoString,
DateTime(timezone=True) for its UTCDateTime), so that this revision keeps its
meaning when the models change. Constraint and index names are the ones
`create_all` produced, so that a database it created can be adopted by
stamping it at this revision.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _id(name: str = "id", length: int = 24, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def _text(name: str, length: int, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def _moment(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _int(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.Integer(), nullable=nullable)


def _image_columns() -> list[sa.Column[Any]]:
    """The stored firmware image, as a GroupOta and a Rollout both describe it."""
    return [
        _text("version", 64),
        _text("object_key", 200),
        _text("sha256", 64),
        _text("md5", 32),
        _int("size"),
    ]


def _descriptor_columns() -> list[sa.Column[Any]]:
    """What the image's app descriptor says, and the source revision."""
    return [
        _text("chip", 32, nullable=True),
        _text("project_name", 32, nullable=True),
        _text("app_version", 32, nullable=True),
        _text("idf_ver", 32, nullable=True),
        _text("commit", 64, nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "users",
        _id(),
        _text("email", 320),
        _text("plan", 16),
        _text("mqtt_user", 64),
        _text("mqtt_password_hash", 64),
        _moment("created_at"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
        sa.UniqueConstraint("mqtt_user"),
    )

    op.create_table(
        "api_keys",
        _id(),
        _id("user_id"),
        _text("key_hash", 64),
        _text("prefix", 16),
        _moment("created_at"),
        _moment("revoked_at", nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])

    op.create_table(
        "groups",
        _id(),
        _id("owner_id"),
        _text("name", 200),
        _text("token", 16),
        _id("parent_id", nullable=True),
        _text("chip", 32, nullable=True),
        _moment("created_at"),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["parent_id"], ["groups.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_groups_owner_id", "groups", ["owner_id"])
    op.create_index("ix_groups_parent_id", "groups", ["parent_id"])

    op.create_table(
        "devices",
        _id(length=64),
        _id("owner_id"),
        _id("group_id"),
        _text("name", 200),
        _text("firmware_version", 64, nullable=True),
        _moment("last_seen", nullable=True),
        _int("last_code", nullable=True),
        _moment("created_at"),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_devices_group_id", "devices", ["group_id"])
    op.create_index("ix_devices_owner_id", "devices", ["owner_id"])

    op.create_table(
        "group_otas",
        _id(),
        _id("group_id"),
        _id("owner_id"),
        _text("version", 64),
        _text("path", 200),
        *_image_columns()[1:],
        *_descriptor_columns(),
        _int("revision"),
        _moment("last_updated"),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id"),
    )
    op.create_index("ix_group_otas_owner_updated", "group_otas", ["owner_id", "last_updated"])

    op.create_table(
        "deployments",
        _id(),
        _id("ota_id"),
        _id("group_id"),
        _id("owner_id"),
        _int("revision"),
        *_image_columns(),
        _text("commit", 64, nullable=True),
        _id("rollout_id", nullable=True),
        _moment("deployed_at"),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.ForeignKeyConstraint(["ota_id"], ["group_otas.id"]),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ota_id", "revision"),
    )
    op.create_index("ix_deployments_group_id", "deployments", ["group_id"])
    op.create_index("ix_deployments_ota_id", "deployments", ["ota_id"])

    op.create_table(
        "trigger_outbox",
        # An integer primary key: SERIAL on PostgreSQL, the rowid on SQLite.
        sa.Column("id", sa.Integer(), nullable=False),
        _text("topic", 200),
        _text("payload", 500),
        _id("deployment_id", nullable=True),
        _moment("created_at"),
        _moment("claimed_until", nullable=True),
        _int("attempts"),
        _moment("published_at", nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_trigger_outbox_pending", "trigger_outbox", ["published_at", "id"])

    op.create_table(
        "rollouts",
        _id(),
        _id("owner_id"),
        _id("group_id"),
        _id("canary_group_id"),
        *_image_columns(),
        *_descriptor_columns(),
        _int("canary_timeout"),
        sa.Column("success_threshold", sa.Float(), nullable=False),
        _int("error_threshold"),
        _int("soak"),
        sa.Column("auto_promote", sa.Boolean(), nullable=False),
        _text("state", 16),
        _text("reason", 500, nullable=True),
        _moment("created_at"),
        _moment("updated_at"),
        _moment("canary_started_at"),
        _moment("canary_healthy_at", nullable=True),
        _moment("fleet_started_at", nullable=True),
        _moment("ended_at", nullable=True),
        sa.ForeignKeyConstraint(["canary_group_id"], ["groups.id"]),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rollouts_group_created", "rollouts", ["group_id", "created_at"])
    op.create_index("ix_rollouts_owner_id", "rollouts", ["owner_id"])
    op.create_index("ix_rollouts_state", "rollouts", ["state"])

    op.create_table(
        "rollout_devices",
        _id("rollout_id"),
        _text("stage", 8),
        _id("device_id", length=64),
        _id("group_id"),
        _text("outcome", 16),
        sa.Column("started_update", sa.Boolean(), nullable=False),
        sa.Column("uptime_at_start", sa.Float(), nullable=True),
        _text("fw_version", 64, nullable=True),
        _int("code", nullable=True),
        _moment("updated_at"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"]),
        sa.PrimaryKeyConstraint("rollout_id", "stage", "device_id"),
    )
    op.create_index("ix_rollout_devices_device_outcome", "rollout_devices", ["device_id", "outcome"])


def downgrade() -> None:
    # Dependents first; dropping a table drops its indexes.
    for table in (
        "rollout_devices",
        "rollouts",
        "trigger_outbox",
        "deployments",
        "group_otas",
        "devices",
        "groups",
        "api_keys",
        "users",
    ):
        op.drop_table(table)
