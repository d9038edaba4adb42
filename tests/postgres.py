"""PostgreSQL for tests, on the machine's server (trust auth).

One database per test session, created at its first use and dropped at the
end. A test gets a schema of its own in it, first on its connections'
search_path: to the receiver that is a database of its own.

A migrated schema is reused: after its test it is emptied with one TRUNCATE
(a few milliseconds), where migrating a new one costs a few hundred
milliseconds of DDL. Tests that take the schema apart use `empty_postgres_url`
or `new_postgres_url`, whose schemas are never reused.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

from otaship.receiver.db.engine import migrate
from tests.services import POSTGRES, require

SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432"
ADMIN_URL = f"{SERVER_URL}/postgres"


class Schemas:
    """Creates, empties and drops schemas in the session's database."""

    def __init__(self, database: Engine) -> None:
        self.database = database
        self.base = database.url.render_as_string(hide_password=False)
        # Migrated schemas whose test is over, emptied and ready for another one.
        self.idle: list[str] = []

    def url(self, schema: str) -> str:
        return f"{self.base}?options=-csearch_path%3D{schema}"

    def create(self) -> str:
        schema = f"test_{secrets.token_hex(6)}"
        with self.database.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        return schema

    def take_migrated(self) -> str:
        if self.idle:
            return self.idle.pop()
        schema = self.create()
        migrate(self.url(schema))
        return schema

    def give_back(self, schema: str) -> None:
        tables = ", ".join(f'"{schema}"."{table}"' for table in SQLModel.metadata.tables)
        if self._run(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"):
            self.idle.append(schema)
        else:
            self.drop(schema)

    def drop(self, schema: str) -> None:
        self._run(f'DROP SCHEMA "{schema}" CASCADE')

    def _run(self, statement: str) -> bool:
        with self.database.connect() as conn:
            # A connection that a test leaked, still in a transaction, would
            # block this forever. Its schema is then left alone: the database
            # goes at the end of the session anyway.
            conn.execute(text("SET lock_timeout = '2s'"))
            try:
                conn.execute(text(statement))
            except OperationalError:
                return False
        return True


def waiting_on_a_lock(engine: Engine) -> bool:
    """Whether a session on this database waits for a lock another one holds."""
    with engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return int(waiting) > 0


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[Schemas]:
    """The session's database."""
    require("PostgreSQL", POSTGRES)
    name = f"otaship_test_{secrets.token_hex(6)}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    database = create_engine(f"{SERVER_URL}/{name}", isolation_level="AUTOCOMMIT", pool_size=1)
    with database.connect() as conn:
        # Where an administrator would put it. Left to the first migration, it
        # would land in that test's schema, and dropping the schema would take
        # the search index of every other schema with it.
        conn.execute(text("CREATE EXTENSION pg_trgm SCHEMA public"))
    try:
        yield Schemas(database)
    finally:
        database.dispose()
        with admin.connect() as conn:
            # FORCE: a connection some test left open must not keep the database alive.
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def new_postgres_url(postgres_database: Schemas) -> Iterator[Callable[[], str]]:
    """Makes URLs whose connections each see only a fresh, empty schema."""
    made: list[str] = []

    def new() -> str:
        made.append(postgres_database.create())
        return postgres_database.url(made[-1])

    yield new
    for schema in made:
        postgres_database.drop(schema)


@pytest.fixture
def empty_postgres_url(new_postgres_url: Callable[[], str]) -> str:
    return new_postgres_url()


@pytest.fixture
def postgres_url(postgres_database: Schemas) -> Iterator[str]:
    """An empty database at the current schema, as `otaship migrate` leaves it."""
    schema = postgres_database.take_migrated()
    yield postgres_database.url(schema)
    postgres_database.give_back(schema)


class OwnDatabase:
    """A whole PostgreSQL database for one test, migrated, dropped afterwards.

    For fault tests that terminate every backend of their database: a schema in
    the session's shared database would take other tests' connections down too.
    """

    def __init__(self) -> None:
        self.name = f"otaship_fault_{secrets.token_hex(6)}"
        self.url = f"{SERVER_URL}/{self.name}"
        self._admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", pool_size=1)

    def url_via(self, host: str, port: int) -> str:
        """The database's URL through another address (a proxy in front of the server)."""
        return f"postgresql+psycopg://postgres@{host}:{port}/{self.name}"

    def create(self) -> OwnDatabase:
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        database = create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with database.connect() as conn:
            conn.execute(text("CREATE EXTENSION pg_trgm SCHEMA public"))
        database.dispose()
        migrate(self.url)
        return self

    def terminate_backends(self) -> int:
        """End every session on this database (and only this one); how many there were."""
        with self._admin.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": self.name},
            ).scalar_one()
        return int(ended)

    def waiting_on_locks(self) -> int:
        """Sessions on this database waiting for a lock another one holds."""
        with self._admin.connect() as conn:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = :name AND wait_event_type = 'Lock'"
                ),
                {"name": self.name},
            ).scalar_one()
        return int(waiting)

    def drop(self) -> None:
        with self._admin.connect() as conn:
            # FORCE: a receiver killed mid-test may have left sessions behind.
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._admin.dispose()


@pytest.fixture
def own_postgres_database() -> Iterator[OwnDatabase]:
    require("PostgreSQL", POSTGRES)
    database = OwnDatabase().create()
    try:
        yield database
    finally:
        database.drop()
