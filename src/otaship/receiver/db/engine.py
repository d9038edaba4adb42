"""Database engine, sessions and schema.

SQLite (the embedded default) runs in WAL mode so device checks read while a
deploy writes. Write transactions that read-modify-write start with
BEGIN IMMEDIATE, which takes SQLite's write lock up front: two deploys to one
group then serialise instead of both reading the same `__v`. On PostgreSQL the
same code takes a row lock with SELECT ... FOR UPDATE.

The schema is Alembic's (`receiver/migrations`), configured from Python so
that no alembic.ini has to be installed. The embedded SQLite database migrates
itself at startup. A shared database (PostgreSQL) is migrated once by an
operator's `otaship migrate`, not by whichever replica happens to start first
during a rolling deploy, so the receiver refuses to run on an out-of-date one.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session, SQLModel, create_engine

from otaship.receiver.db import models  # noqa: F401  (registers the tables)

if TYPE_CHECKING:
    # Alembic is imported where it is used: most commands and the device
    # simulator open a session without ever touching the schema's history.
    from alembic.config import Config
    from alembic.script import ScriptDirectory

_IMMEDIATE = "otaship_immediate"
# How long a SQLite statement waits for another connection's write lock.
SQLITE_BUSY_TIMEOUT_S = 30
# A database server that refuses, drops or never answers connections must fail
# a request within seconds, not hold it (and a worker thread) for minutes:
# connecting gives up after CONNECT_TIMEOUT_S (unless the URL sets
# connect_timeout), and a request waits at most POOL_TIMEOUT_S for a pooled
# connection when every one is busy.
CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 10


def create_db_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SchemaError(
                    f"cannot create the database's folder {folder.absolute()}: {exc.strerror}; "
                    "set OTASHIP_DATA_DIR or OTASHIP_DATABASE_URL"
                ) from None
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
            hide_parameters=True,
        )
        _configure_sqlite(engine)
        return engine
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT_S}
    # hide_parameters: statement values (tokens, hashes) never reach a log line.
    # pool_pre_ping: a connection the server ended (a restart, a failover, an
    # administrator's pg_terminate_backend) is replaced before it is handed out.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        pool_timeout=POOL_TIMEOUT_S,
        connect_args=connect_args,
        hide_parameters=True,
    )


def _use_wal(cursor: sqlite3.Cursor) -> None:
    # Switching a new file to WAL takes an exclusive lock without waiting on
    # the busy handler: two processes opening a fresh database at once (say,
    # two `otaship migrate`) would see "database is locked". The switch happens
    # once per file, so waiting for it as busy_timeout would is enough.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, so it can choose IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get(_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The revision that creates what `SQLModel.metadata.create_all` made before
# otaship had migrations: such a database is adopted at this revision.
BASELINE_REVISION = "0001"
# Any constant will do: concurrent `otaship migrate` runs take turns on it.
_MIGRATION_LOCK = 0x07A5_41B0


class SchemaError(Exception):
    """The database schema is not one this otaship can run on or migrate; one line."""


class NoDatabase(SchemaError):
    """An admin command found no SQLite file where the settings point: none is created.

    An empty new database answers every query with nothing, and a user created
    in it is unknown to the running receiver: a mistake to stop at, not to hide.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"no database at {path}: run otaship from the folder where otaship serve runs "
            "(or set OTASHIP_DATA_DIR or OTASHIP_DATABASE_URL as for serve); "
            "otaship serve or otaship migrate creates a new one"
        )
        self.path = path


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for another database or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).absolute()


def require_database(url: str) -> None:
    """Raise NoDatabase unless the database `url` names exists (a server's always may)."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise NoDatabase(path)


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None
    head: str
    # Tables made by `create_all`, before migrations: no alembic_version.
    unversioned: bool = False
    # The revision is not among this otaship's: a newer one migrated the database.
    unknown: bool = False

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def problem(self) -> str | None:
        """What is wrong and what to do, in one line; None when up to date."""
        if self.up_to_date:
            return None
        if self.unknown:
            return (
                f"the database schema is at revision {self.current}, which this otaship does not know: "
                "a newer otaship migrated it; run that version"
            )
        if self.unversioned:
            return (
                "the database was created by an otaship without migrations: run `otaship migrate` to adopt it"
            )
        if self.current is None:
            return "the database has no otaship schema: run `otaship migrate`"
        return (
            f"the database schema is out of date (revision {self.current}, this otaship needs "
            f"{self.head}): run `otaship migrate`"
        )


@dataclass(frozen=True)
class MigrationResult:
    before: str | None
    after: str
    # An unversioned database from `create_all` was recognised and stamped.
    adopted: bool = False

    def describe(self) -> str:
        if self.adopted:
            done = f"adopted the existing tables as revision {BASELINE_REVISION}"
            if self.after != BASELINE_REVISION:
                done += f" and upgraded them to revision {self.after}"
            return done
        if self.before == self.after:
            return f"the database schema is up to date (revision {self.after})"
        if self.before is None:
            return f"created the database schema (revision {self.after})"
        return f"upgraded the database schema from revision {self.before} to {self.after}"


def alembic_config(target: Connection | str | None = None) -> Config:
    """Alembic's configuration for a connection (inside its transaction) or a URL."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if target is None:
        return config
    if isinstance(target, str):
        # ConfigParser would read a %-escape in a password as interpolation.
        config.set_main_option("sqlalchemy.url", target.replace("%", "%%"))
    else:
        config.attributes["connection"] = target
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None, "receiver/migrations has no revisions"
    return head


def _is_known(revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _otaship_tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) & set(SQLModel.metadata.tables)


def _status(connection: Connection) -> SchemaStatus:
    current = _current_revision(connection)
    return SchemaStatus(
        current=current,
        head=head_revision(),
        unversioned=current is None and bool(_otaship_tables(connection)),
        unknown=current is not None and not _is_known(current),
    )


def schema_status(engine: Engine) -> SchemaStatus:
    with engine.connect() as connection:
        return _status(connection)


def migrate(target: Engine | str) -> MigrationResult:
    """Upgrade the database to this otaship's head revision.

    One transaction, under a lock (SQLite's write lock, a PostgreSQL advisory
    lock), so that two processes migrating at once take turns and the second
    finds nothing left to do.
    """
    from alembic import command
    from alembic.util import CommandError

    engine = create_db_engine(target) if isinstance(target, str) else target
    try:
        with engine.connect() as connection:
            connection.execution_options(**{_IMMEDIATE: True})
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
                status = _status(connection)
                if status.unknown:
                    raise SchemaError(str(status.problem))
                config = alembic_config(connection)
                if status.unversioned:
                    _check_baseline(connection)
                    command.stamp(config, BASELINE_REVISION)
                if not status.up_to_date:
                    command.upgrade(config, "head")
                after = _current_revision(connection)
    except CommandError as exc:
        raise SchemaError(f"migration failed: {exc}") from exc
    finally:
        if isinstance(target, str):
            engine.dispose()
    assert after is not None
    return MigrationResult(before=status.current, after=after, adopted=status.unversioned)


def ensure_schema(engine: Engine) -> None:
    """Make sure the receiver can run on this database, or raise SchemaError.

    SQLite is the embedded default, a file in the receiver's own data dir: it
    migrates itself. Any other database is shared by replicas and is migrated
    by the operator, so here it is only checked.
    """
    status = schema_status(engine)
    if status.up_to_date:
        return
    if engine.dialect.name == "sqlite" and not status.unknown:
        migrate(engine)
        return
    raise SchemaError(str(status.problem))


# The name simulate.py still calls.
init_schema = ensure_schema


_TableShape = tuple[frozenset[tuple[str, bool]], frozenset[str]]


def _shape(connection: Connection, tables: set[str]) -> dict[str, _TableShape]:
    """Columns (with nullability) and named indexes: what a schema comparison
    across SQLite and PostgreSQL can rely on, where column types differ."""
    inspector = inspect(connection)
    return {
        table: (
            frozenset((c["name"], bool(c["nullable"])) for c in inspector.get_columns(table)),
            frozenset(
                str(i["name"]) for i in inspector.get_indexes(table) if str(i["name"]).startswith("ix_")
            ),
        )
        for table in tables
    }


@functools.cache
def _baseline_shape() -> dict[str, _TableShape]:
    from alembic import command

    scratch = create_engine("sqlite://")
    try:
        with scratch.connect() as connection, connection.begin():
            command.upgrade(alembic_config(connection), BASELINE_REVISION)
            tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
            return _shape(connection, tables)
    finally:
        scratch.dispose()


def _check_baseline(connection: Connection) -> None:
    """Refuse to stamp tables that `create_all` of the first migrated models did not make."""
    expected = _baseline_shape()
    present = set(inspect(connection).get_table_names())
    missing = sorted(set(expected) - present)
    actual = _shape(connection, set(expected) & present)
    differing = sorted(t for t in actual if actual[t] != expected[t])
    if not missing and not differing:
        return
    found = "; ".join(
        part
        for part in (
            f"missing tables: {', '.join(missing)}" if missing else "",
            f"tables that differ: {', '.join(differing)}" if differing else "",
        )
        if part
    )
    raise SchemaError(
        f"the database has otaship tables but no migration history, and they do not match revision "
        f"{BASELINE_REVISION} ({found}): bring them to that schema by hand, or migrate into an empty database"
    )


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A transaction that commits on success and rolls back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        session.connection(execution_options={_IMMEDIATE: True})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def database_reachable(engine: Engine) -> bool:
    """Whether a trivial statement goes through now: tells a database that is
    away from one that refused a statement of ours."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


def database_unavailable(exc: BaseException) -> bool:
    """Whether an error says the database could not be reached or used (refused,
    dropped, timed out, out of connections), rather than that it refused a
    statement: what decides a warning without a traceback over an error with one."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeout)
