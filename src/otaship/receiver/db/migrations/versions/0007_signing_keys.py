"""Signed firmware: a group's public keys, the keys that signed each image.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

`signing_keys` holds each group's Secure Boot V2 public keys; `image_signers`
the keys whose signature blocks verified over an image when it was uploaded.
The OTA record and each deployment name the key that signed their image
(`signed_by`, None for an image taken unsigned); images keep their app
descriptor's `secure_version`; groups get the `anti_rollback` setting, off.
Rows already in the database are unsigned, with no known secure_version.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column(
        "groups", sa.Column("anti_rollback", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("firmware_images", sa.Column("secure_version", sa.Integer(), nullable=True))
    op.add_column("group_otas", sa.Column("signed_by", sa.String(length=64), nullable=True))
    op.add_column("deployments", sa.Column("signed_by", sa.String(length=64), nullable=True))
    op.create_table(
        "signing_keys",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("group_id", sa.String(length=24), nullable=False),
        sa.Column("owner_id", sa.String(length=24), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("scheme", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.String(length=4096), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "digest"),
    )
    op.create_index("ix_signing_keys_group_id", "signing_keys", ["group_id"])
    op.create_table(
        "image_signers",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("key_digest", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["sha256"], ["firmware_images.sha256"]),
        sa.PrimaryKeyConstraint("sha256", "key_digest"),
    )


def downgrade() -> None:
    # Dropping a table drops its indexes.
    op.drop_table("image_signers")
    op.drop_table("signing_keys")
    op.drop_column("deployments", "signed_by")
    op.drop_column("group_otas", "signed_by")
    op.drop_column("firmware_images", "secure_version")
    op.drop_column("groups", "anti_rollback")
