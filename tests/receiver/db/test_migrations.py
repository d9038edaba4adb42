"""The Alembic migrations: they build exactly the models' schema, on SQLite and
PostgreSQL, and the receiver starts only on a schema that is up to date."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata, produce_migrations, render_python_code
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, select

from otaship.receiver.app import build_services
from otaship.receiver.db.engine import (
    BASELINE_REVISION,
    MigrationResult,
    SchemaError,
    SchemaStatus,
    alembic_config,
    create_db_engine,
    ensure_schema,
    head_revision,
    migrate,
    schema_status,
)
from otaship.receiver.db.migrations.render import include_name, render_item
from otaship.receiver.db.models import GroupOta
from otaship.receiver.db.path_search import is_search_object, owned_paths_containing
from otaship.receiver.settings import Settings
from tests.postgres import ADMIN_URL, SERVER_URL
from tests.receiver_process import ReceiverProcess, cli_env, otaship, otaship_json

NewDatabase = Callable[[], str]
ROOT = Path(__file__).resolve().parents[3]
MIGRATIONS = "otaship/receiver/db/migrations"


def schema_diff(url: str) -> list[Any]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={"compare_type": True, "compare_server_default": True, "include_name": include_name},
            )
            return list(compare_metadata(context, SQLModel.metadata))
    finally:
        engine.dispose()


def schema_of(url: str) -> dict[str, Any]:
    """Everything the database says about its tables, in a comparable form.

    Leaves out the search index of migration 0002, which the models do not
    declare: `search_objects` looks at it."""
    engine = create_db_engine(url)
    try:
        inspector = inspect(engine)
        return {
            table: {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                    for c in inspector.get_columns(table)
                ],
                "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
                "foreign keys": sorted(
                    (tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]))
                    for fk in inspector.get_foreign_keys(table)
                ),
                "indexes": sorted(
                    (str(i["name"]), tuple(map(str, i["column_names"])), bool(i["unique"]))
                    for i in inspector.get_indexes(table)
                    if not is_search_object(i["name"])
                ),
                "unique": sorted(
                    (str(u["name"]), tuple(u["column_names"]))
                    for u in inspector.get_unique_constraints(table)
                ),
            }
            for table in sorted(set(inspector.get_table_names()) - {"alembic_version"})
            if not is_search_object(table)
        }
    finally:
        engine.dispose()


def search_objects(url: str) -> set[str]:
    """The path search index's tables, triggers and indexes in the database."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                names = connection.execute(text("SELECT name FROM sqlite_master")).scalars()
            else:
                names = connection.execute(
                    text("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
                ).scalars()
            return {name for name in names if is_search_object(name)}
    finally:
        engine.dispose()


def expected_search_objects(url: str) -> set[str]:
    if url.startswith("sqlite"):
        table = "group_ota_paths"
        shadows = {f"{table}_{part}" for part in ("data", "idx", "content", "docsize", "config")}
        return {table, *shadows, f"{table}_insert", f"{table}_update", f"{table}_delete"}
    return {"ix_group_otas_path_trgm"}


def create_all(url: str) -> None:
    """The current models' tables, made without migrations."""
    engine = create_db_engine(url)
    try:
        SQLModel.metadata.create_all(engine)
    finally:
        engine.dispose()


def create_all_before_migrations(url: str) -> None:
    """What otaship's `create_all` made before it had migrations: the tables of
    revision 0001 (which names everything as create_all did), with no history."""
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), BASELINE_REVISION)
            connection.execute(text("DROP TABLE alembic_version"))
    finally:
        engine.dispose()


def test_migrations_build_exactly_the_models_schema(new_database: NewDatabase) -> None:
    url = new_database()
    assert migrate(url) == MigrationResult(before=None, after=head_revision())
    assert schema_diff(url) == []
    # Names, column order, defaults, indexes and constraints too: what
    # create_all makes from the models, item for item.
    reference = new_database()
    create_all(reference)
    assert schema_of(url) == schema_of(reference)
    assert set(schema_of(url)) == set(SQLModel.metadata.tables)
    assert search_objects(url) == expected_search_objects(url)
    assert search_objects(reference) == set()


def test_a_second_migrate_does_nothing(new_database: NewDatabase) -> None:
    url = new_database()
    migrate(url)
    result = migrate(url)
    assert result == MigrationResult(before=head_revision(), after=head_revision())
    assert result.describe() == f"the database schema is up to date (revision {head_revision()})"


def test_downgrade_to_nothing_and_back(new_database: NewDatabase) -> None:
    url = new_database()
    migrate(url)
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "base")
        assert inspect(engine).get_table_names() == ["alembic_version"]
        assert search_objects(url) == set()
        assert schema_status(engine).current is None
        assert migrate(engine).before is None
    finally:
        engine.dispose()
    assert search_objects(url) == expected_search_objects(url)
    assert schema_diff(url) == []


def test_two_processes_migrating_at_once_take_turns(new_database: NewDatabase) -> None:
    url = new_database()
    engines = [create_db_engine(url) for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list[MigrationResult] = []
    errors: list[BaseException] = []

    def run(engine: Any) -> None:
        barrier.wait()
        try:
            results.append(migrate(engine))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert errors == []
    assert sorted(r.before or "" for r in results) == ["", head_revision()]
    assert schema_diff(url) == []


def test_a_database_made_by_create_all_is_adopted(new_database: NewDatabase) -> None:
    url = new_database()
    create_all_before_migrations(url)
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO users (id, email, plan, mqtt_user, mqtt_password_hash, created_at) "
                    "VALUES ('a', 'a@example.com', 'pro', 'u', 'h', CURRENT_TIMESTAMP)"
                )
            )
        status = schema_status(engine)
        assert status.unversioned and not status.up_to_date
        assert status.problem is not None and "otaship migrate" in status.problem

        result = migrate(engine)
        assert result.adopted
        assert result.describe().startswith(f"adopted the existing tables as revision {BASELINE_REVISION}")
        assert schema_status(engine).up_to_date
        with engine.connect() as connection:
            assert connection.execute(text("SELECT email FROM users")).scalars().all() == ["a@example.com"]
    finally:
        engine.dispose()
    assert schema_diff(url) == []


def test_tables_without_history_that_differ_are_not_stamped(new_database: NewDatabase) -> None:
    url = new_database()
    create_all_before_migrations(url)
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP INDEX ix_devices_group_id"))
        with pytest.raises(SchemaError) as raised:
            migrate(engine)
        assert "do not match revision" in str(raised.value)
        assert "tables that differ: devices" in str(raised.value)
        assert schema_status(engine).current is None
    finally:
        engine.dispose()


def test_a_revision_from_a_newer_otaship_is_refused(new_database: NewDatabase) -> None:
    url = new_database()
    migrate(url)
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = 'fffffffff'"))
        status = schema_status(engine)
        assert status.unknown
        for attempt in (migrate, ensure_schema):
            with pytest.raises(SchemaError, match="newer otaship"):
                attempt(engine)
    finally:
        engine.dispose()


def test_autogenerate_writes_plain_sqlalchemy_types() -> None:
    """A new revision imports nothing from sqlmodel (see src/otaship/receiver/db/migrations/render.py)."""
    engine = create_engine("sqlite://")
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"target_metadata": SQLModel.metadata, "render_item": render_item}
            )
            operations = produce_migrations(context, SQLModel.metadata).upgrade_ops
            assert operations is not None
            code = render_python_code(operations, render_item=render_item)
    finally:
        engine.dispose()
    assert "sqlmodel" not in code
    assert "sa.Column('email', sa.String(length=320), nullable=False)" in code
    assert "sa.Column('created_at', sa.DateTime(timezone=True), nullable=False)" in code
    # Where script.py.mako puts it: the template indents the first line, Alembic the rest.
    compile(f"def upgrade() -> None:\n    {code}\n", "revision", "exec")


def test_each_schema_problem_says_what_to_do() -> None:
    assert SchemaStatus(current="0002", head="0002").problem is None
    assert SchemaStatus(current="0001", head="0002").problem == (
        "the database schema is out of date (revision 0001, this otaship needs 0002): run `otaship migrate`"
    )
    assert SchemaStatus(current=None, head="0002").problem == (
        "the database has no otaship schema: run `otaship migrate`"
    )
    unversioned = SchemaStatus(current=None, head="0002", unversioned=True)
    assert "run `otaship migrate` to adopt it" in str(unversioned.problem)
    assert "run that version" in str(SchemaStatus(current="0003", head="0002", unknown=True).problem)


def test_the_embedded_sqlite_database_migrates_itself(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", mqtt_url="none")
    services = build_services(settings)
    try:
        assert schema_status(services.engine).up_to_date
    finally:
        services.storage.close()
        services.engine.dispose()


@pytest.mark.postgres
def test_the_receiver_refuses_an_unmigrated_postgres(empty_postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=empty_postgres_url, mqtt_url="none")
    with pytest.raises(SchemaError, match=r"run `otaship migrate`"):
        build_services(settings)


@pytest.mark.postgres
def test_serve_refuses_an_out_of_date_postgres_until_migrate(empty_postgres_url: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data", OTASHIP_DATABASE_URL=empty_postgres_url)
    receiver = ReceiverProcess(env)

    refused = subprocess.run(
        [sys.executable, "-m", "otaship.receiver.cli", "serve"],
        env=receiver.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert refused.stderr == "otaship: error: the database has no otaship schema: run `otaship migrate`\n"
    # The admin verbs refuse too, rather than create tables behind the migrations' back.
    verb = otaship(env, "user", "create", "ops@example.com", check=False)
    assert (verb.returncode, verb.stderr) == (1, refused.stderr)

    migrated = otaship(env, "migrate")
    assert migrated.stdout == f"created the database schema (revision {head_revision()})\n"
    assert (
        otaship(env, "migrate").stdout == f"the database schema is up to date (revision {head_revision()})\n"
    )

    created = otaship_json(env, "user", "create", "ops@example.com", "--plan", "pro")
    receiver.start()
    try:
        headers = {"Authorization": f"Bearer {created['api_key']}"}
        answer = httpx.get(f"{receiver.url}/v1/ota/group", headers=headers)
        assert answer.status_code == 200
    finally:
        receiver.stop()


def test_migrate_reports_a_database_it_cannot_reach_in_one_line(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path / "data",
        OTASHIP_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:9/otaship?connect_timeout=2",
    )
    result = otaship(env, "migrate", check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("otaship: database error: ")


def test_the_migrations_ship_in_the_package(tmp_path: Path) -> None:
    """setuptools' build_py lays out what a wheel installs; every migration file is in it."""
    # A copy: building in place would leave build/ and metadata in the working tree.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import setup; setup()",
            "-q",
            "build_py",
            "--build-lib",
            str(tmp_path / "lib"),
        ],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=120,
    )

    def files(root: Path) -> set[str]:
        return {
            path.relative_to(root).as_posix()
            for path in (root / MIGRATIONS).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }

    shipped = files(ROOT / "src")
    assert {f"{MIGRATIONS}/env.py", f"{MIGRATIONS}/script.py.mako"} <= shipped
    assert any(name.startswith(f"{MIGRATIONS}/versions/0001_") for name in shipped)
    assert files(tmp_path / "lib") == shipped


@pytest.fixture
def limited_role_database(postgres_database: Any) -> Iterator[tuple[str, Engine]]:
    """A fresh database without pg_trgm, and the URL of a role that owns a
    schema in it but may not create extensions: a managed database's app role."""
    suffix = secrets.token_hex(4)
    name, role = f"otaship_test_limited_{suffix}", f"otaship_app_{suffix}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    superuser = create_engine(f"{SERVER_URL}/{name}", isolation_level="AUTOCOMMIT")
    try:
        with superuser.connect() as conn:
            # Its own schema, found through search_path's "$user".
            conn.execute(text(f'CREATE SCHEMA "{role}" AUTHORIZATION "{role}"'))
        yield f"postgresql+psycopg://{role}@127.0.0.1:5432/{name}", superuser
    finally:
        superuser.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


@pytest.mark.postgres
def test_a_role_that_may_not_create_pg_trgm_is_told_who_must(
    limited_role_database: tuple[str, Engine],
) -> None:
    url, superuser = limited_role_database
    with pytest.raises(SchemaError) as raised:
        migrate(url)
    assert str(raised.value).startswith(
        "migration failed: the path search index needs PostgreSQL's pg_trgm extension, which this role may "
        "not create: have a superuser run `CREATE EXTENSION pg_trgm;` in this database, then run "
        '`otaship migrate` again (permission denied to create extension "pg_trgm")'
    )
    # All or nothing: revision 0001 is not left behind half way.
    engine = create_db_engine(url)
    try:
        assert schema_status(engine).current is None
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()

    with superuser.connect() as conn:
        conn.execute(text("CREATE EXTENSION pg_trgm SCHEMA public"))
    assert migrate(url).after == head_revision()
    assert search_objects(url) == {"ix_group_otas_path_trgm"}
    assert schema_diff(url) == []


@pytest.mark.postgres
def test_migrate_creates_pg_trgm_where_the_role_may(limited_role_database: tuple[str, Engine]) -> None:
    url, superuser = limited_role_database
    with superuser.connect() as conn:
        # pg_trgm is a trusted extension: CREATE on the database is enough.
        conn.execute(text(f"GRANT CREATE ON DATABASE {superuser.url.database} TO {make_url(url).username}"))
    assert migrate(url).after == head_revision()
    assert search_objects(url) == {"ix_group_otas_path_trgm"}
    with superuser.connect() as conn:
        assert (
            conn.execute(text("SELECT extname FROM pg_extension WHERE extname = 'pg_trgm'")).scalar()
            == "pg_trgm"
        )


def test_0003_records_rollout_baselines_and_keeps_older_rollouts_unchecked(new_database: NewDatabase) -> None:
    """Up to 0002, a rollout in progress; up to 0003, down again, and up."""
    url = new_database()
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0002")
            now = "2026-01-01 00:00:00+00:00"
            connection.execute(
                text(
                    "INSERT INTO users (id, email, plan, mqtt_user, mqtt_password_hash, created_at) "
                    "VALUES ('u', 'u@example.com', 'pro', 'mu', 'h', :now)"
                ),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO groups (id, owner_id, name, token, created_at) VALUES "
                    "('g', 'u', 'fleet', 't', :now), ('c', 'u', 'canary', 't', :now)"
                ),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO rollouts (id, owner_id, group_id, canary_group_id, version, object_key, sha256, "
                    "md5, size, canary_timeout, success_threshold, error_threshold, soak, auto_promote, state, "
                    "created_at, updated_at, canary_started_at) VALUES ('r', 'u', 'g', 'c', '1.0.0', 'k', 's', "
                    "'m', 1, 60, 1.0, 0, 0, true, 'canary', :now, :now, :now)"
                ),
                {"now": now},
            )
        assert migrate(engine) == MigrationResult(before="0002", after=head_revision())
        columns = "SELECT baseline_recorded, baseline_deployment_id, baseline_sha256 FROM rollouts"
        with engine.connect() as connection:
            assert connection.execute(text(columns)).one() == (False, None, None)
        assert schema_diff(url) == []

        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0002")
        rollout_columns = {c["name"] for c in inspect(engine).get_columns("rollouts")}
        assert not {"baseline_recorded", "baseline_deployment_id", "baseline_sha256"} & rollout_columns
        assert "ix_rollouts_ended_at" not in {i["name"] for i in inspect(engine).get_indexes("rollouts")}
        with engine.connect() as connection:
            assert connection.execute(text("SELECT id, state FROM rollouts")).one() == ("r", "canary")

        assert migrate(engine).after == head_revision()
        with engine.connect() as connection:
            assert connection.execute(text(columns)).one() == (False, None, None)
    finally:
        engine.dispose()
    assert schema_diff(url) == []
    new = new_database()
    create_all(new)
    assert schema_of(url) == schema_of(new)


def _unordered(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema whose columns' order does not count: PostgreSQL appends the
    columns a downgrade adds back."""
    return {table: {**shape, "columns": sorted(shape["columns"])} for table, shape in schema.items()}


def _rows(engine: Engine, statement: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(statement))]


IMAGE_FIELDS = "sha256, size, md5, chip, project_name, app_version, idf_ver, object_key"


def test_0004_moves_the_firmware_columns_into_images_and_back(new_database: NewDatabase) -> None:
    """Up to 0003 with a row in every table; up to 0004, down again, and up."""
    url = new_database()
    engine = create_db_engine(url)
    times = [f"2026-01-0{day} 00:00:00+00:00" for day in range(1, 6)]
    a, b, c, e = ("a" * 64, "b" * 64, "c" * 64, "e" * 64)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0003")
            for statement, values in (
                (
                    "INSERT INTO users (id, email, plan, mqtt_user, mqtt_password_hash, created_at) "
                    "VALUES ('u', 'u@example.com', 'pro', 'mu', 'h', :t0)",
                    {},
                ),
                (
                    "INSERT INTO api_keys (id, user_id, key_hash, prefix, created_at) "
                    "VALUES ('k', 'u', 'kh', 'osk_', :t0)",
                    {},
                ),
                (
                    "INSERT INTO groups (id, owner_id, name, token, parent_id, created_at) VALUES "
                    "('g', 'u', 'fleet', 't', NULL, :t0), ('c', 'u', 'canary', 't', 'g', :t0)",
                    {},
                ),
                (
                    "INSERT INTO devices (id, owner_id, group_id, name, created_at) "
                    "VALUES ('d', 'u', 'c', 'dev', :t0)",
                    {},
                ),
                # The OTA runs image a, deployed at t3; image b is history only, deployed
                # at t1; the rollout (created at t4) stages image c, deployed to the canary at t4.
                (
                    "INSERT INTO group_otas (id, group_id, owner_id, version, path, object_key, sha256, md5, "
                    'size, chip, project_name, app_version, idf_ver, "commit", revision, last_updated) VALUES '
                    "('o', 'g', 'u', '2.0.0', 'ota/group/gt/firmware.bin', 'firmware/sha256/a.bin', :a, "
                    "'ma', 10, 'esp32', 'app', '2.0.0', 'v5.1', 'abc', 1, :t3), "
                    "('oc', 'c', 'u', '3.0.0', 'ota/group/ct/firmware.bin', 'firmware/sha256/c.bin', :c, "
                    "'mc', 30, 'esp32s3', 'app', '3.0.0', 'v5.2', 'def', 0, :t4)",
                    {"a": a, "c": c},
                ),
                (
                    "INSERT INTO deployments (id, ota_id, group_id, owner_id, revision, version, object_key, "
                    'sha256, md5, size, "commit", rollout_id, deployed_at) VALUES '
                    "('d0', 'o', 'g', 'u', 0, '1.0.0', 'firmware/sha256/b.bin', :b, 'mb', 20, NULL, NULL, :t1), "
                    "('d1', 'o', 'g', 'u', 1, '2.0.0', 'firmware/sha256/a.bin', :a, 'ma', 10, 'abc', NULL, :t2), "
                    "('d2', 'oc', 'c', 'u', 0, '3.0.0', 'firmware/sha256/c.bin', :c, 'mc', 30, 'def', 'r', :t4)",
                    {"a": a, "b": b, "c": c},
                ),
                (
                    "INSERT INTO trigger_outbox (topic, payload, deployment_id, created_at, attempts) "
                    "VALUES ('/mu/groups/c/update-trigger', '{}', 'd2', :t4, 0)",
                    {},
                ),
                (
                    "INSERT INTO rollouts (id, owner_id, group_id, canary_group_id, version, object_key, "
                    'sha256, md5, size, chip, project_name, app_version, idf_ver, "commit", canary_timeout, '
                    "success_threshold, error_threshold, soak, auto_promote, state, created_at, updated_at, "
                    "canary_started_at, baseline_recorded, baseline_deployment_id, baseline_sha256) VALUES "
                    "('r', 'u', 'g', 'c', '3.0.0', 'firmware/sha256/c.bin', :c, 'mc', 30, 'esp32s3', 'app', "
                    "'3.0.0', 'v5.2', 'def', 60, 1.0, 0, 0, true, 'canary', :t4, :t4, :t4, true, 'd1', :a), "
                    # An older rollout, aborted before its canary deploy: its image is nowhere else.
                    "('r0', 'u', 'g', 'c', '2.5.0', 'firmware/sha256/e.bin', :e, 'me', 50, 'esp32', 'app', "
                    "'2.5.0', 'v5.1', NULL, 60, 1.0, 0, 0, true, 'aborted', :t0, :t0, :t0, false, NULL, NULL)",
                    {"a": a, "c": c, "e": e},
                ),
                (
                    "INSERT INTO rollout_devices (rollout_id, stage, device_id, group_id, outcome, "
                    "started_update, updated_at) VALUES ('r', 'canary', 'd', 'c', 'pending', false, :t4)",
                    {},
                ),
            ):
                connection.execute(text(statement), {f"t{n}": t for n, t in enumerate(times)} | values)
        copies = {
            "group_otas": "SELECT id, object_key, sha256, md5, size, chip, project_name, app_version, idf_ver "
            "FROM group_otas ORDER BY id",
            "deployments": "SELECT id, object_key, sha256, md5, size FROM deployments ORDER BY id",
            "rollouts": "SELECT id, object_key, sha256, md5, size, chip, project_name, app_version, idf_ver "
            "FROM rollouts ORDER BY id",
        }
        before = {table: _rows(engine, query) for table, query in copies.items()}
        # The columns each table has at 0003: later migrations (0005) may add more.
        untouched = {
            table: ", ".join(f'"{c["name"]}"' for c in inspect(engine).get_columns(table))
            for table in ("users", "api_keys", "groups", "devices", "trigger_outbox", "rollout_devices")
        }
        everything = {
            table: _rows(engine, f"SELECT {columns} FROM {table} ORDER BY 1")
            for table, columns in untouched.items()
        }
        reference = new_database()
        reference_engine = create_db_engine(reference)
        with reference_engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0003")
        reference_engine.dispose()
        at_0003 = schema_of(reference)

        for _ in range(2):  # up, down, and again
            assert migrate(engine) == MigrationResult(before="0003", after=head_revision())
            assert schema_diff(url) == []
            images = _rows(engine, f"SELECT {IMAGE_FIELDS} FROM firmware_images ORDER BY sha256")
            # a and c from their OTAs, e from its rollout; b is history only: no descriptor.
            assert images == [
                (a, 10, "ma", "esp32", "app", "2.0.0", "v5.1", "firmware/sha256/a.bin"),
                (b, 20, "mb", None, None, None, None, "firmware/sha256/b.bin"),
                (c, 30, "mc", "esp32s3", "app", "3.0.0", "v5.2", "firmware/sha256/c.bin"),
                (e, 50, "me", "esp32", "app", "2.5.0", "v5.1", "firmware/sha256/e.bin"),
            ]
            # Each image's earliest sighting: a's deployment d1 (t2, before its OTA's t3),
            # b's d0 (t1), c's rows (all t4), e's rollout (t0).
            first_seen = _rows(
                engine,
                "SELECT i.sha256 FROM firmware_images i WHERE i.created_at = (SELECT MIN(seen) FROM ("
                "SELECT deployed_at AS seen FROM deployments d WHERE d.sha256 = i.sha256 UNION ALL "
                "SELECT created_at FROM rollouts r WHERE r.sha256 = i.sha256 UNION ALL "
                "SELECT last_updated FROM group_otas o WHERE o.sha256 = i.sha256) AS sightings) ORDER BY i.sha256",
            )
            assert first_seen == [(a,), (b,), (c,), (e,)]
            assert _rows(engine, 'SELECT id, sha256, "commit", version FROM group_otas ORDER BY id') == [
                ("o", a, "abc", "2.0.0"),
                ("oc", c, "def", "3.0.0"),
            ]
            assert _rows(engine, "SELECT id, sha256, state FROM rollouts ORDER BY id") == [
                ("r", c, "canary"),
                ("r0", e, "aborted"),
            ]
            assert {
                table: _rows(engine, f"SELECT {columns} FROM {table} ORDER BY 1")
                for table, columns in untouched.items()
            } == everything
            assert search_objects(url) == expected_search_objects(url)
            with Session(engine) as session:
                terms = owned_paths_containing(session, owner_id="u", search="CT/FIRM", owner_rows=2)
                assert session.exec(select(GroupOta.id).where(*terms)).all() == ["oc"]
            if url.startswith("sqlite"):
                # The path search triggers work on the rebuilt table (and the new row goes again).
                with engine.connect() as connection, connection.begin() as transaction:
                    connection.execute(
                        text(
                            "INSERT INTO groups (id, owner_id, name, token, created_at) "
                            "VALUES ('n', 'u', 'new', 't', CURRENT_TIMESTAMP)"
                        )
                    )
                    connection.execute(
                        text(
                            "INSERT INTO group_otas (id, group_id, owner_id, version, path, sha256, revision, "
                            "last_updated) VALUES ('on', 'n', 'u', '1.0.0', 'ota/group/nt/firmware.bin', :a, 0, "
                            "CURRENT_TIMESTAMP)"
                        ),
                        {"a": a},
                    )
                    paths = "SELECT ota_id FROM group_ota_paths WHERE path MATCH :search"
                    assert connection.execute(text(paths), {"search": '"nt/f"'}).scalars().all() == ["on"]
                    transaction.rollback()
            with pytest.raises(IntegrityError), engine.begin() as connection:
                connection.execute(text("UPDATE group_otas SET sha256 = :d WHERE id = 'o'"), {"d": "d" * 64})

            with engine.begin() as connection:
                command.downgrade(alembic_config(connection), "0003")
            assert schema_status(engine).current == "0003"
            assert {table: _rows(engine, query) for table, query in copies.items()} == before
            assert {
                table: _rows(engine, f"SELECT {columns} FROM {table} ORDER BY 1")
                for table, columns in untouched.items()
            } == everything
            assert _unordered(schema_of(url)) == _unordered(at_0003)
            if url.startswith("sqlite"):
                assert schema_of(url) == at_0003
            assert search_objects(url) == expected_search_objects(url)
    finally:
        engine.dispose()


def test_0006_moves_canary_rollouts_to_waves_unchanged_and_back(new_database: NewDatabase) -> None:
    """Up to 0005 with a rollout in its canary (healthy, soaking) and one in its
    fleet stage; up to 0006, down again, and up."""
    url = new_database()
    engine = create_db_engine(url)
    times = [f"2026-01-0{day} 00:00:00+00:00" for day in range(1, 6)]
    image = "c" * 64
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0005")
            for statement in (
                "INSERT INTO users (id, email, plan, mqtt_user, mqtt_password_hash, created_at) "
                "VALUES ('u', 'u@example.com', 'pro', 'mu', 'h', :t0)",
                "INSERT INTO groups (id, owner_id, name, token, parent_id, created_at) VALUES "
                "('g', 'u', 'fleet', 't', NULL, :t0), ('c', 'u', 'canary', 't', 'g', :t0)",
                "INSERT INTO devices (id, owner_id, group_id, name, created_at) VALUES "
                "('dc', 'u', 'c', 'canary device', :t0), ('dg', 'u', 'g', 'fleet device', :t0)",
                "INSERT INTO firmware_images (sha256, size, md5, object_key, created_at) "
                "VALUES (:image, 1, 'm', 'k', :t0)",
                "INSERT INTO rollouts (id, owner_id, group_id, canary_group_id, version, sha256, canary_timeout, "
                "success_threshold, error_threshold, soak, auto_promote, state, created_at, updated_at, "
                "canary_started_at, canary_healthy_at, fleet_started_at, baseline_recorded) VALUES "
                "('r1', 'u', 'g', 'c', '3.0.0', :image, 60, 0.5, 2, 30, true, 'canary', :t1, :t1, :t1, :t2, "
                "NULL, true), "
                "('r2', 'u', 'g', 'c', '2.0.0', :image, 90, 1.0, 0, 0, false, 'fleet', :t0, :t0, :t0, :t0, "
                ":t3, true)",
                "INSERT INTO rollout_devices (rollout_id, stage, device_id, group_id, outcome, started_update, "
                "updated_at) VALUES ('r1', 'canary', 'dc', 'c', 'succeeded', true, :t2), "
                "('r2', 'canary', 'dc', 'c', 'succeeded', true, :t0), "
                "('r2', 'fleet', 'dg', 'g', 'pending', false, :t3)",
            ):
                connection.execute(
                    text(statement), {f"t{n}": t for n, t in enumerate(times)} | {"image": image}
                )
        waves = (
            "SELECT rollout_id, position, group_id, canary_timeout, success_threshold, error_threshold, soak, "
            "started_at IS NOT NULL, healthy_at IS NOT NULL, ended_at IS NOT NULL FROM rollout_waves "
            "ORDER BY rollout_id"
        )
        devices = "SELECT rollout_id, stage, device_id, wave FROM rollout_devices ORDER BY rollout_id, stage"
        rollouts = (
            "SELECT id, wave, paused_at, max_failure_rate, min_devices, rollback FROM rollouts ORDER BY id"
        )
        for _ in range(2):
            assert migrate(engine).after == head_revision()
            # Each rollout's one wave is its canary, with its policy and times.
            assert _rows(engine, waves) == [
                ("r1", 0, "c", 60, 0.5, 2, 30, True, True, False),
                ("r2", 0, "c", 90, 1.0, 0, 0, True, True, True),
            ]
            assert _rows(engine, devices) == [
                ("r1", "canary", "dc", 0),
                ("r2", "canary", "dc", 0),
                ("r2", "fleet", "dg", None),
            ]
            assert [row[:2] + row[3:] for row in _rows(engine, rollouts)] == [
                ("r1", 0, None, 1, False),
                ("r2", 0, None, 1, False),
            ]
            assert [row[2] for row in _rows(engine, rollouts)] == [None, None]
            assert schema_diff(url) == []
            with engine.begin() as connection:
                command.downgrade(alembic_config(connection), "0005")
            assert not {"rollout_waves", "rollout_controls"} & set(inspect(engine).get_table_names())
            assert "wave" not in {c["name"] for c in inspect(engine).get_columns("rollout_devices")}
            # The soak of the canary in progress goes on from where it was.
            assert _rows(engine, "SELECT id, canary_healthy_at IS NOT NULL FROM rollouts ORDER BY id") == [
                ("r1", True),
                ("r2", True),
            ]
        assert migrate(engine).after == head_revision()
    finally:
        engine.dispose()
    new = new_database()
    create_all(new)
    assert _unordered(schema_of(url)) == _unordered(schema_of(new))


def test_0007_adds_signing_keys_and_keeps_every_row_up_and_down(new_database: NewDatabase) -> None:
    """Up to 0005 with a group, an image, an OTA and a deployment; up, down and up again."""
    url = new_database()
    engine = create_db_engine(url)
    a = "a" * 64
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0005")
            for statement in (
                "INSERT INTO users (id, email, plan, mqtt_user, mqtt_password_hash, created_at) "
                "VALUES ('u', 'u@example.com', 'pro', 'mu', 'h', :t)",
                "INSERT INTO groups (id, owner_id, name, token, created_at) VALUES ('g', 'u', 'fleet', 't', :t)",
                "INSERT INTO firmware_images (sha256, size, md5, object_key, created_at) "
                "VALUES (:a, 10, 'ma', 'firmware/sha256/a.bin', :t)",
                "INSERT INTO group_otas (id, group_id, owner_id, version, path, sha256, revision, last_updated) "
                "VALUES ('o', 'g', 'u', '1.0.0', 'ota/group/gt/firmware.bin', :a, 0, :t)",
                "INSERT INTO deployments (id, ota_id, group_id, owner_id, revision, version, sha256, deployed_at) "
                "VALUES ('d', 'o', 'g', 'u', 0, '1.0.0', :a, :t)",
            ):
                connection.execute(text(statement), {"a": a, "t": "2026-01-01 00:00:00+00:00"})
        for _ in range(2):
            assert migrate(engine) == MigrationResult(before="0005", after=head_revision())
            assert schema_diff(url) == []
            # Rows from before are unsigned, with no known secure_version, and anti-rollback off.
            assert _rows(engine, "SELECT id, anti_rollback FROM groups") == [("g", False)]
            assert _rows(engine, "SELECT sha256, secure_version FROM firmware_images") == [(a, None)]
            assert _rows(engine, "SELECT id, signed_by FROM group_otas") == [("o", None)]
            assert _rows(engine, "SELECT id, signed_by FROM deployments") == [("d", None)]
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO signing_keys (id, group_id, owner_id, name, scheme, digest, public_key, "
                        "created_at) VALUES ('k', 'g', 'u', 'ci', 'rsa-3072', :a, 'pem', CURRENT_TIMESTAMP)"
                    ),
                    {"a": a},
                )
                connection.execute(
                    text("INSERT INTO image_signers (sha256, key_digest) VALUES (:a, :a)"), {"a": a}
                )
            # One key digest per group.
            with pytest.raises(IntegrityError), engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO signing_keys (id, group_id, owner_id, name, scheme, digest, public_key, "
                        "created_at) VALUES ('k2', 'g', 'u', 'again', 'rsa-3072', :a, 'pem', CURRENT_TIMESTAMP)"
                    ),
                    {"a": a},
                )
            with engine.begin() as connection:
                command.downgrade(alembic_config(connection), "0005")
            assert schema_status(engine).current == "0005"
            tables = inspect(engine).get_table_names()
            assert "signing_keys" not in tables and "image_signers" not in tables
            assert "anti_rollback" not in {c["name"] for c in inspect(engine).get_columns("groups")}
            assert _rows(engine, "SELECT id, version FROM group_otas") == [("o", "1.0.0")]
            assert _rows(engine, "SELECT id, version FROM deployments") == [("d", "1.0.0")]
    finally:
        engine.dispose()


def test_0008_adds_the_github_tables_and_takes_them_away(new_database: NewDatabase) -> None:
    url = new_database()
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0005")
        at_0005 = schema_of(url)
        assert "github_bindings" not in at_0005
        for _ in range(2):  # up, down, and again
            assert migrate(engine) == MigrationResult(before="0005", after=head_revision())
            assert schema_diff(url) == []
            tables = set(inspect(engine).get_table_names())
            assert {"github_bindings", "github_deliveries"} <= tables
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO users (id, email, plan, mqtt_user, mqtt_password_hash, created_at) "
                        "VALUES ('u', 'u@example.com', 'pro', 'mu', 'h', CURRENT_TIMESTAMP)"
                    )
                )
                delivery = (
                    "INSERT INTO github_deliveries (binding_id, owner_id, delivery_id, event, outcome, "
                    "received_at, attempts) VALUES ('b', 'u', 'd', 'ping', 'ignored', CURRENT_TIMESTAMP, 0)"
                )
                connection.execute(text(delivery))
            # One delivery id per binding: a redelivery is found, never recorded twice.
            with pytest.raises(IntegrityError), engine.begin() as connection:
                connection.execute(text(delivery))
            with engine.begin() as connection:
                command.downgrade(alembic_config(connection), "0005")
                connection.execute(text("DELETE FROM users"))
            assert schema_status(engine).current == "0005"
            assert schema_of(url) == at_0005
    finally:
        engine.dispose()


def test_0009_adds_passwords_login_tokens_and_key_use_and_takes_them_away(new_database: NewDatabase) -> None:
    """Up to 0005 with a user and a key; up to 0009, down again (the user and key
    kept), and up again to exactly the models' schema."""
    url = new_database()
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0005")
            connection.execute(
                text(
                    "INSERT INTO users (id, email, plan, mqtt_user, mqtt_password_hash, created_at) "
                    "VALUES ('u', 'u@example.com', 'pro', 'mu', 'h', CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO api_keys (id, user_id, key_hash, prefix, created_at) "
                    "VALUES ('k', 'u', 'kh', 'osk_', CURRENT_TIMESTAMP)"
                )
            )
            command.upgrade(alembic_config(connection), "0009")
            assert connection.execute(text("SELECT password_hash FROM users")).all() == [(None,)]
            assert connection.execute(text("SELECT last_used_at FROM api_keys")).all() == [(None,)]
            connection.execute(text("UPDATE users SET password_hash = '$argon2id$v=19$x'"))
            connection.execute(
                text(
                    "INSERT INTO login_tokens (id, user_id, token_hash, kind, created_at, expires_at) "
                    "VALUES ('t', 'u', 'th', 'console', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO login_tokens (id, user_id, token_hash, kind, created_at, expires_at) "
                    "VALUES ('t2', 'u', 'th', 'bearer', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0005")
        assert "login_tokens" not in inspect(engine).get_table_names()
        assert "password_hash" not in {c["name"] for c in inspect(engine).get_columns("users")}
        assert "last_used_at" not in {c["name"] for c in inspect(engine).get_columns("api_keys")}
        with engine.begin() as connection:
            assert connection.execute(text("SELECT id, prefix FROM api_keys")).all() == [("k", "osk_")]
            command.upgrade(alembic_config(connection), "head")
    finally:
        engine.dispose()
    assert schema_diff(url) == []


def test_0010_adds_the_waves_rollback_columns_and_takes_them_away(new_database: NewDatabase) -> None:
    """Waves of 0009 have nothing recorded after 0010 (a rollback leaves them
    as they are); down to 0009 and up again to exactly the models' schema."""
    url = new_database()
    engine = create_db_engine(url)
    columns = {"previous_recorded", "previous_sha256", "previous_version", "rollback"}
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0009")
        assert not columns & {c["name"] for c in inspect(engine).get_columns("rollout_waves")}
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0010")
        assert columns <= {c["name"] for c in inspect(engine).get_columns("rollout_waves")}
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0009")
        assert not columns & {c["name"] for c in inspect(engine).get_columns("rollout_waves")}
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
    finally:
        engine.dispose()
    assert schema_diff(url) == []


def test_0011_adds_the_devices_boot_and_takes_it_away(new_database: NewDatabase) -> None:
    """Devices of 0010 have no boot recorded after 0011 (their next status
    records it); down to 0010 and up again to exactly the models' schema."""
    url = new_database()
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0010")
        assert "booted_at" not in {c["name"] for c in inspect(engine).get_columns("devices")}
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0011")
        assert "booted_at" in {c["name"] for c in inspect(engine).get_columns("devices")}
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0010")
        assert "booted_at" not in {c["name"] for c in inspect(engine).get_columns("devices")}
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
    finally:
        engine.dispose()
    assert schema_diff(url) == []
