"""One row per firmware image, referenced by the OTA, deployment and rollout rows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

`firmware_images` holds what the three tables each copied: size, MD5, chip,
app descriptor and object key, keyed by SHA-256. Upgrading makes one image
per SHA-256 found in them, its fields taken from an OTA first, then a rollout,
then a deployment, and its `created_at` from the earliest of those rows; then
each row's `sha256` becomes a foreign key, and the copies go. Downgrading puts
the copies back from the images.

Limitation: a deployment row never copied the chip or the app descriptor, so
an image known only from deploy history (no OTA or rollout shows it any more)
has none after the upgrade. The next deploy of those bytes fills them in.

PostgreSQL alters the tables in place. SQLite cannot add a foreign key to a
table, and Alembic's batch mode, which copies the table, fails to drop a table
that other rows reference while foreign keys are enforced (they are, and the
migration runs in one transaction, where SQLite ignores turning them off). So
SQLite rebuilds the tables itself: it renames them aside, dependents first,
recreates them, copies the rows, and drops the old ones, dependents first.
Dropping `group_otas` takes migration 0002's path search triggers with it:
their SQL is read first and run again afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

IMAGES = "firmware_images"
# The image fields each table copied, in the columns' order of revision 0003.
COPIED = {
    "group_otas": ("object_key", "md5", "size", "chip", "project_name", "app_version", "idf_ver"),
    "deployments": ("object_key", "md5", "size"),
    "rollouts": ("object_key", "md5", "size", "chip", "project_name", "app_version", "idf_ver"),
}
# Revision 0003's column order, for putting the copies back where they were.
BEFORE = {
    "group_otas": (
        "id", "group_id", "owner_id", "version", "path", "object_key", "sha256", "md5", "size", "chip",
        "project_name", "app_version", "idf_ver", "commit", "revision", "last_updated",
    ),
    "deployments": (
        "id", "ota_id", "group_id", "owner_id", "revision", "version", "object_key", "sha256", "md5",
        "size", "commit", "rollout_id", "deployed_at",
    ),
    "rollouts": (
        "id", "owner_id", "group_id", "canary_group_id", "version", "object_key", "sha256", "md5", "size",
        "chip", "project_name", "app_version", "idf_ver", "commit", "canary_timeout", "success_threshold",
        "error_threshold", "soak", "auto_promote", "state", "reason", "created_at", "updated_at",
        "canary_started_at", "canary_healthy_at", "fleet_started_at", "ended_at", "baseline_recorded",
        "baseline_deployment_id", "baseline_sha256",
    ),
}  # fmt: skip
# Tables SQLite rebuilds, parents first: rollout_devices only so that its
# foreign key follows the new rollouts table.
REBUILT = ("group_otas", "deployments", "rollouts", "rollout_devices")
# PostgreSQL's own names for the foreign keys, as `create_all` leaves them.
FOREIGN_KEY = "{table}_sha256_fkey"


def _copied_columns() -> dict[str, sa.Column[Any]]:
    """The copies as revision 0003 declared them."""
    return {
        "object_key": sa.Column("object_key", sa.String(length=200), nullable=False),
        "md5": sa.Column("md5", sa.String(length=32), nullable=False),
        "size": sa.Column("size", sa.Integer(), nullable=False),
        **{
            field: sa.Column(field, sa.String(length=32), nullable=True)
            for field in ("chip", "project_name", "app_version", "idf_ver")
        },
    }


def _image_rows() -> str:
    """One image per SHA-256, from an OTA first, then a rollout, then a deployment."""
    described = "chip, project_name, app_version, idf_ver"
    sightings = " UNION ALL ".join(
        (
            f"SELECT sha256, size, md5, {described}, object_key, last_updated AS seen, 0 AS rank "
            "FROM group_otas",
            f"SELECT sha256, size, md5, {described}, object_key, created_at, 1 FROM rollouts",
            "SELECT sha256, size, md5, NULL, NULL, NULL, NULL, object_key, deployed_at, 2 FROM deployments",
        )
    )
    return (
        f"INSERT INTO {IMAGES} (sha256, size, md5, {described}, object_key, created_at) "
        f"SELECT sha256, size, md5, {described}, object_key, first_seen FROM ("
        f"SELECT *, ROW_NUMBER() OVER (PARTITION BY sha256 ORDER BY rank, seen) AS n, "
        f"MIN(seen) OVER (PARTITION BY sha256) AS first_seen FROM ({sightings}) AS sightings"
        ") AS ranked WHERE n = 1"
    )


def upgrade() -> None:
    op.create_table(
        IMAGES,
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("md5", sa.String(length=32), nullable=False),
        *(
            sa.Column(field, sa.String(length=32), nullable=True)
            for field in ("chip", "project_name", "app_version", "idf_ver")
        ),
        sa.Column("object_key", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.execute(_image_rows())
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(_without_copies, copy_from=_plain_copy)
        return
    for table, copied in COPIED.items():
        op.create_foreign_key(FOREIGN_KEY.format(table=table), table, IMAGES, ["sha256"], ["sha256"])
        for column in copied:
            op.drop_column(table, column)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(_with_copies, copy_from=_copy_with_image_fields)
    else:
        for table, copied in COPIED.items():
            columns = _copied_columns()
            for column in copied:
                op.add_column(table, sa.Column(column, columns[column].type, nullable=True))
            assignments = ", ".join(f"{column} = i.{column}" for column in copied)
            op.execute(f"UPDATE {table} AS t SET {assignments} FROM {IMAGES} AS i WHERE i.sha256 = t.sha256")
            for column in copied:
                if not columns[column].nullable:
                    op.alter_column(table, column, nullable=False)
            op.drop_constraint(FOREIGN_KEY.format(table=table), table, type_="foreignkey")
    op.drop_table(IMAGES)


# --- SQLite ----------------------------------------------------------------------


Reshape = Callable[[str, list[sa.Column[Any]], list[sa.Constraint]], tuple[list[Any], list[Any]]]


def _without_copies(
    table: str, columns: list[sa.Column[Any]], constraints: list[sa.Constraint]
) -> tuple[list[Any], list[Any]]:
    if table not in COPIED:
        return columns, constraints
    kept = [column for column in columns if column.name not in COPIED[table]]
    return kept, [*constraints, sa.ForeignKeyConstraint(["sha256"], [f"{IMAGES}.sha256"])]


def _with_copies(
    table: str, columns: list[sa.Column[Any]], constraints: list[sa.Constraint]
) -> tuple[list[Any], list[Any]]:
    if table not in COPIED:
        return columns, constraints
    by_name = {column.name: column for column in columns} | _copied_columns()
    kept = [
        constraint
        for constraint in constraints
        if not (
            isinstance(constraint, sa.ForeignKeyConstraint)
            and [element.target_fullname for element in constraint.elements] == [f"{IMAGES}.sha256"]
        )
    ]
    return [by_name[name] for name in BEFORE[table]], kept


def _plain_copy(table: str, old: str) -> str:
    return f"INSERT INTO {table} ({{columns}}) SELECT {{columns}} FROM {old}"


def _copy_with_image_fields(table: str, old: str) -> str:
    if table not in COPIED:
        return _plain_copy(table, old)
    # Every row has its image: the foreign key made sure.
    return (
        f"INSERT INTO {table} ({{columns}}) SELECT {{sources}} FROM {old} AS t "
        f"JOIN {IMAGES} AS i ON i.sha256 = t.sha256"
    )


def _rebuild_sqlite(reshape: Reshape, *, copy_from: Callable[[str, str], str]) -> None:
    connection = op.get_bind()
    inspector = sa.inspect(connection)
    triggers = (
        connection.execute(
            sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'group_otas'")
        )
        .scalars()
        .all()
    )
    shapes = {}
    for table in REBUILT:
        columns = [
            sa.Column(
                c["name"],
                c["type"],
                nullable=c["nullable"],
                server_default=sa.text(default) if (default := c.get("default")) is not None else None,
            )
            for c in inspector.get_columns(table)
        ]
        constraints: list[sa.Constraint] = [
            sa.PrimaryKeyConstraint(*inspector.get_pk_constraint(table)["constrained_columns"]),
            *(
                sa.ForeignKeyConstraint(
                    fk["constrained_columns"], [f"{fk['referred_table']}.{c}" for c in fk["referred_columns"]]
                )
                for fk in inspector.get_foreign_keys(table)
            ),
            *(sa.UniqueConstraint(*u["column_names"]) for u in inspector.get_unique_constraints(table)),
        ]
        shapes[table] = (reshape(table, columns, constraints), inspector.get_indexes(table))
    for table in reversed(REBUILT):
        op.execute(f"ALTER TABLE {table} RENAME TO _old_{table}")
    for table in REBUILT:
        (columns, constraints), indexes = shapes[table]
        for index in indexes:
            op.execute(f"DROP INDEX {index['name']}")
        op.create_table(table, *columns, *constraints)
        for index in indexes:
            op.create_index(
                index["name"], table, [str(c) for c in index["column_names"]], unique=index["unique"]
            )
        names = [column.name for column in columns]
        old_names = {c["name"] for c in sa.inspect(connection).get_columns(f"_old_{table}")}
        # Quoted: `commit` is a keyword.
        sources = [f't."{name}"' if name in old_names else f'i."{name}"' for name in names]
        names = [f'"{name}"' for name in names]
        op.execute(
            copy_from(table, f"_old_{table}").format(columns=", ".join(names), sources=", ".join(sources))
        )
    for table in reversed(REBUILT):
        op.execute(f"DROP TABLE _old_{table}")
    for sql in triggers:
        op.execute(sql)
