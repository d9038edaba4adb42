"""GitHub bindings and their webhook deliveries.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

A binding ties a repository's published releases to a group: its webhook
secret and token are stored encrypted. Each delivery is recorded with its
outcome; a queued one is the job that downloads the release asset and deploys it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "github_bindings",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("owner_id", sa.String(length=24), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("group_id", sa.String(length=24), nullable=False),
        sa.Column("canary_group_id", sa.String(length=24), nullable=True),
        sa.Column("waves", sa.String(length=200), nullable=True),
        sa.Column("asset_pattern", sa.String(length=200), nullable=False),
        sa.Column("prereleases", sa.Boolean(), nullable=False),
        sa.Column("report_deployments", sa.Boolean(), nullable=False),
        sa.Column("secret_sealed", sa.String(length=500), nullable=False),
        sa.Column("token_sealed", sa.String(length=1000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_github_bindings_owner_id", "github_bindings", ["owner_id"])
    op.create_table(
        "github_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("binding_id", sa.String(length=24), nullable=False),
        sa.Column("owner_id", sa.String(length=24), nullable=False),
        sa.Column("delivery_id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=True),
        sa.Column("tag", sa.String(length=255), nullable=True),
        sa.Column("release", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=True),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("commit", sa.String(length=64), nullable=True),
        sa.Column("rollout_id", sa.String(length=24), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("github_deployment_id", sa.BigInteger(), nullable=True),
        sa.Column("reported_state", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("binding_id", "delivery_id"),
    )
    op.create_index("ix_github_deliveries_owner_received", "github_deliveries", ["owner_id", "received_at"])
    op.create_index("ix_github_deliveries_outcome", "github_deliveries", ["outcome", "id"])


def downgrade() -> None:
    op.drop_table("github_deliveries")
    op.drop_table("github_bindings")
