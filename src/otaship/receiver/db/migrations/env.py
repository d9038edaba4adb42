"""Alembic's environment for otaship.

`otaship.receiver.db.engine` configures Alembic from Python (no alembic.ini) and hands over
an open connection inside a transaction it owns, so that it can lock the
database around the whole upgrade. With only a URL (a developer running
`alembic` commands through `otaship.receiver.db.engine.alembic_config`), an engine is made
the way the receiver makes its own.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from otaship.receiver.db import models  # noqa: F401  (registers the tables)
from otaship.receiver.db.migrations.render import include_name, render_item


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite alters a table by copying it; batch mode writes that for us.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
        include_name=include_name,
        # otaship.receiver.db.engine runs SQLite with its own BEGIN, so DDL is transactional there too.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    if context.is_offline_mode():
        raise RuntimeError("otaship's migrations run against a database, not as SQL scripts")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from otaship.receiver.db.engine import create_db_engine

    engine = create_db_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


run()
