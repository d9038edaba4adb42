"""A trigram index for the listing's path search (see receiver/path_search.py).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

PostgreSQL needs the pg_trgm extension. It ships with PostgreSQL and is a
trusted extension, so a database owner may create it; where the role running
`otaship migrate` may not, a superuser runs `CREATE EXTENSION pg_trgm` once in
the database and the migration uses it from whichever schema it lives in.
Downgrading drops the index but leaves the extension: something else may use it.

The names are written out here rather than imported, so that this revision
keeps its meaning when receiver/path_search.py changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

SQLITE_TABLE = "group_ota_paths"
POSTGRES_INDEX = "ix_group_otas_path_trgm"

# The FTS5 row of an OTA is found by its id, which FTS5 does not index: a scan
# of the search table. Paths never change and OTAs are never deleted by the
# receiver, so these two triggers only fire on an operator's hand edit.
SQLITE_DDL = (
    f"CREATE VIRTUAL TABLE {SQLITE_TABLE} USING fts5(ota_id UNINDEXED, path, tokenize='trigram')",
    f"INSERT INTO {SQLITE_TABLE} (ota_id, path) SELECT id, path FROM group_otas",
    f"""CREATE TRIGGER {SQLITE_TABLE}_insert AFTER INSERT ON group_otas BEGIN
        INSERT INTO {SQLITE_TABLE} (ota_id, path) VALUES (new.id, new.path);
    END""",
    f"""CREATE TRIGGER {SQLITE_TABLE}_update AFTER UPDATE OF id, path ON group_otas
    WHEN old.id IS NOT new.id OR old.path IS NOT new.path BEGIN
        DELETE FROM {SQLITE_TABLE} WHERE ota_id = old.id;
        INSERT INTO {SQLITE_TABLE} (ota_id, path) VALUES (new.id, new.path);
    END""",
    f"""CREATE TRIGGER {SQLITE_TABLE}_delete AFTER DELETE ON group_otas BEGIN
        DELETE FROM {SQLITE_TABLE} WHERE ota_id = old.id;
    END""",
)


def _pg_trgm_schema(connection: sa.Connection) -> str | None:
    return connection.execute(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'pg_trgm'"
        )
    ).scalar()


def _ensure_pg_trgm(connection: sa.Connection) -> str:
    schema = _pg_trgm_schema(connection)
    if schema is not None:
        return schema
    # A savepoint, so that a refusal leaves the transaction usable for the
    # clear message below rather than aborted.
    try:
        with connection.begin_nested():
            connection.execute(sa.text("CREATE EXTENSION pg_trgm"))
    except sa.exc.DBAPIError as exc:
        # CommandError: `otaship migrate` reports it as one line.
        raise CommandError(
            "the path search index needs PostgreSQL's pg_trgm extension, which this role may not "
            "create: have a superuser run `CREATE EXTENSION pg_trgm;` in this database, then run "
            f"`otaship migrate` again ({str(exc.orig).strip().splitlines()[0]})"
        ) from None
    schema = _pg_trgm_schema(connection)
    assert schema is not None
    return schema


def _check_sqlite_trigram(connection: sa.Connection) -> None:
    # FTS5's trigram tokenizer came with SQLite 3.34 (2020); Python uses the
    # system's library, which on an old distribution may predate it.
    version = connection.execute(sa.text("SELECT sqlite_version()")).scalar()
    try:
        with connection.begin_nested():
            connection.execute(
                sa.text("CREATE VIRTUAL TABLE temp.otaship_probe USING fts5(x, tokenize='trigram')")
            )
            connection.execute(sa.text("DROP TABLE temp.otaship_probe"))
    except sa.exc.DatabaseError:
        raise CommandError(
            f"the path search index needs SQLite 3.34 or newer with FTS5 (this Python has SQLite {version}): "
            "use a newer Python or distribution, or PostgreSQL"
        ) from None


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "sqlite":
        _check_sqlite_trigram(connection)
        for statement in SQLITE_DDL:
            op.execute(statement)
        return
    if connection.dialect.name == "postgresql":
        # The operator class is qualified: the extension may live in a schema
        # that is not on this role's search_path.
        schema = _ensure_pg_trgm(connection).replace('"', '""')
        # fastupdate off: new rows go straight into the index instead of a
        # pending list that every search reads until (auto)vacuum merges it.
        # Deploys are rare next to searches, and pay a few hundred microseconds.
        op.execute(
            f'CREATE INDEX {POSTGRES_INDEX} ON group_otas USING gin (path "{schema}".gin_trgm_ops) '
            "WITH (fastupdate = off)"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for suffix in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {SQLITE_TABLE}_{suffix}")
        op.execute(f"DROP TABLE IF EXISTS {SQLITE_TABLE}")
    elif dialect == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {POSTGRES_INDEX}")
