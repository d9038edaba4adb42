"""A device's last boot, as its status reports show it, on its row.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

A shared subscription splits one device's reports between the workers (and
replicas). Whichever takes its 201 needs the boot before it, to tell a device
that booted back on the old version from one still downloading; until now only
the workers that had taken one of its statuses knew it. Rows already in the
database have none: the first status fills it in.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("booted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("devices", "booted_at")
