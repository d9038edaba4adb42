"""Sign-in with a password: users' argon2 hashes, login tokens, keys' last use.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

A user may get a password (`otaship user password`), kept as an argon2id hash.
A sign-in issues a login token (a bearer token for the API, or the console's
session cookie), stored as its SHA-256 with its expiry and, once revoked, when.
API keys record when they were last used, for the console's keys page. Rows
already in the database have no password, no tokens and no last use.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("password_hash", sa.String(length=200), nullable=True))
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "login_tokens",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("user_id", sa.String(length=24), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_login_tokens_user_id", "login_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_table("login_tokens")
    op.drop_column("api_keys", "last_used_at")
    op.drop_column("users", "password_hash")
