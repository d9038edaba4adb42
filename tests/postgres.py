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
