"""PostgreSQL for tests, on the machine's server (trust auth).

One database per test session, created at its first use and dropped at the
end. Each test gets a schema of its own in it, first on the connection's
search_path: to the receiver that is an empty database, and creating one costs
a few milliseconds instead of the ~0.3 s of a CREATE DATABASE.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from receiver.db import migrate
from tests.services import POSTGRES, require

SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432"
ADMIN_URL = f"{SERVER_URL}/postgres"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[Engine]:
    """The session's database, as an autocommit engine for creating schemas in it."""
    require("PostgreSQL", POSTGRES)
    name = f"otaship_test_{secrets.token_hex(6)}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    database = create_engine(f"{SERVER_URL}/{name}", isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        yield database
    finally:
        database.dispose()
        with admin.connect() as conn:
            # FORCE: a connection some test left open must not keep the database alive.
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def new_postgres_url(postgres_database: Engine) -> Iterator[Callable[[], str]]:
    """Makes URLs whose connections each see only a fresh, empty schema."""
    base = postgres_database.url.render_as_string(hide_password=False)
    schemas: list[str] = []

    def new() -> str:
        schema = f"test_{secrets.token_hex(6)}"
        with postgres_database.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        schemas.append(schema)
        return f"{base}?options=-csearch_path%3D{schema}"

    yield new
    with postgres_database.connect() as conn:
        # A connection that a test leaked, still in a transaction, would block
        # the drop forever; the database goes at the end of the session anyway.
        conn.execute(text("SET lock_timeout = '2s'"))
        for schema in schemas:
            try:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            except OperationalError:
                pass


@pytest.fixture
def empty_postgres_url(new_postgres_url: Callable[[], str]) -> str:
    return new_postgres_url()


@pytest.fixture
def postgres_url(empty_postgres_url: str) -> str:
    """A fresh database at the current schema, as `otaship migrate` leaves it."""
    migrate(empty_postgres_url)
    return empty_postgres_url
