"""The listing's path search through its trigram index (otaship/receiver/db/path_search.py):
the same answers as a plain substring test, on both backends and both of
SQLite's routes, and an index the databases really use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import event, func, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from starlette.testclient import TestClient

from otaship.receiver.db.engine import (
    SchemaError,
    alembic_config,
    create_db_engine,
    head_revision,
    migrate,
    write_session,
)
from otaship.receiver.db.images import record_image
from otaship.receiver.db.models import Group, GroupOta
from otaship.receiver.db.path_search import (
    MAX_INDEXED_MATCHES,
    escape_like,
    fts_phrase,
    index_pays,
    owned_paths_containing,
)
from otaship.receiver.ids import new_group_token
from otaship.receiver.services import Services
from tests.conftest import Fleet, Owner

START = datetime(2026, 1, 1, tzinfo=UTC)


def test_index_pays_for_few_matches_among_many_rows() -> None:
    assert index_pays(0, 0)
    assert index_pays(1, 10)
    assert not index_pays(1, 9)
    assert index_pays(100, 1000)
    assert not index_pays(101, 1000)
    assert index_pays(MAX_INDEXED_MATCHES, 10 * MAX_INDEXED_MATCHES)
    assert index_pays(MAX_INDEXED_MATCHES, 10**9)
    assert not index_pays(MAX_INDEXED_MATCHES + 1, 10**9)


def test_like_escaping_and_fts_phrases() -> None:
    assert escape_like("a%b_c\\d") == "a\\%b\\_c\\\\d"
    assert escape_like("plain") == "plain"
    assert fts_phrase("abc") == '"abc"'
    assert fts_phrase('say "hi"') == '"say ""hi"""'


# --- against the API, on both backends --------------------------------------------

# Paths as an operator's hand edit or a future naming could make them: every
# character the LIKE, ILIKE and FTS5 query syntaxes treat specially.
ODD_PATHS = (
    "ota/group/100%_Done/firmware.bin",
    'ota/group/say "hi"/firmware.bin',
    "ota/group/back\\slash/firmware.bin",
    "ota/group/MiXeD-Case AND OR NOT*/firmware.bin",
    "ota/group/colon:near(x y)/firmware.bin",
)


def add_otas(services: Services, owner: Owner, paths: list[str]) -> list[GroupOta]:
    """One group per path, its OTA record carrying that path (newest last)."""
    with write_session(services.engine) as session:
        offset = session.exec(
            select(func.count()).select_from(GroupOta).where(GroupOta.owner_id == owner.user.id)
        ).one()
        otas = []
        for number, path in enumerate(paths):
            group = Group(owner_id=owner.user.id, name=f"g{offset + number}", token=new_group_token())
            session.add(group)
            session.flush()
            image = record_image(
                session=session,
                now=START,
                sha256="0" * 64,
                md5="0" * 32,
                size=1,
                object_key="firmware/sha256/x.bin",
            )
            ota = GroupOta(
                group_id=group.id,
                owner_id=owner.user.id,
                version="1.0.0",
                path=path,
                sha256=image.sha256,
                last_updated=START + timedelta(seconds=offset + number),
            )
            session.add(ota)
            otas.append(ota)
    return otas


def expected(otas: list[GroupOta], search: str) -> list[str]:
    """What the spec asks for, stated plainly: newest first, case ignored."""
    found = [o for o in otas if search.lower() in o.path.lower()]
    found.sort(key=lambda o: (o.last_updated, o.id), reverse=True)
    return [o.id for o in found]


@pytest.fixture
def searchable(services: Services, fleet: Fleet) -> tuple[Owner, list[GroupOta]]:
    owner = fleet.owner()
    plain = [f"ota/group/{g}/firmware.bin" for g in ("a1b2c3d4e5", "A1B2C3ffff", "0123456789", "abcabcabc")]
    filler = [f"ota/group/{n:04d}feedface{n:04d}/firmware.bin" for n in range(51)]
    otas = add_otas(services, owner, [*plain, *ODD_PATHS, *filler])
    # Another owner whose paths match the same searches: never seen, never counted.
    stranger = fleet.owner()
    add_otas(services, stranger, ["ota/group/a1b2c3d4e5/firmware.bin", *ODD_PATHS])
    return owner, otas


SEARCHES = (
    # Selective, as an operator looking for one group types it: the index route.
    "a1b2c3",
    "A1B2C3",
    "c3d4",
    "b2c",
    "0123456789",
    "abcabc",
    "cab",
    "100%_d",
    "0%_",
    'say "hi"',
    '"hi"',
    "k\\sl",
    "\\",
    "mixed-case and",
    " OR NOT*",
    "near(x",
    "colon:",
    # Unselective: most of the owner's rows, the scan route.
    "ota",
    "FIRMWARE.BIN",
    "feedface",
    "/firm",
    "0000feed",
    # Shorter than a trigram.
    "a",
    "A1",
    "%",
    "_",
    '"',
    "0%",
    # Nothing.
    "zzzz",
    "a1b2c3d4e5f",
    "firmware.bin/",
    "%%%",
)


@pytest.mark.parametrize("search", SEARCHES)
def test_search_answers_as_a_substring_test_would(
    client: TestClient, searchable: tuple[Owner, list[GroupOta]], search: str
) -> None:
    owner, otas = searchable
    page = client.get("/v1/ota/group", headers=owner.headers, params={"search_value": search, "limit": 100})
    assert page.status_code == 200
    body = page.json()
    want = expected(otas, search)
    assert body["recordsTotal"] == len(otas)
    assert body["recordsFiltered"] == len(want)
    assert [o["_id"] for o in body["otas"]] == want


def test_search_pages_through_the_matches(
    client: TestClient, searchable: tuple[Owner, list[GroupOta]]
) -> None:
    owner, otas = searchable
    want = expected(otas, "feedface")
    for order, ids in (("desc", want), ("asc", list(reversed(want)))):
        seen: list[str] = []
        for offset in range(0, len(want) + 10, 10):
            body = client.get(
                "/v1/ota/group",
                headers=owner.headers,
                params={"search_value": "feedface", "limit": 10, "offset": offset, "order_dir": order},
            ).json()
            assert body["recordsFiltered"] == len(want)
            seen.extend(o["_id"] for o in body["otas"])
        assert seen == ids


def test_a_new_deploy_is_found_at_once(
    client: TestClient, services: Services, searchable: tuple[Owner, list[GroupOta]]
) -> None:
    owner, _ = searchable
    [added] = add_otas(services, owner, ["ota/group/justdeployed42/firmware.bin"])
    body = client.get("/v1/ota/group", headers=owner.headers, params={"search_value": "deployed42"}).json()
    assert [o["_id"] for o in body["otas"]] == [added.id]
    assert body["recordsFiltered"] == 1


def test_a_path_edited_or_deleted_by_hand_leaves_the_index_exact(
    client: TestClient, services: Services, searchable: tuple[Owner, list[GroupOta]]
) -> None:
    owner, otas = searchable
    target, doomed = otas[0], otas[1]
    with services.engine.begin() as connection:
        connection.execute(
            text("UPDATE group_otas SET path = 'ota/group/renamed9876/firmware.bin' WHERE id = :id"),
            {"id": target.id},
        )
        connection.execute(text("DELETE FROM group_otas WHERE id = :id"), {"id": doomed.id})

    def found(search: str) -> list[str]:
        body = client.get("/v1/ota/group", headers=owner.headers, params={"search_value": search}).json()
        return [o["_id"] for o in body["otas"]]

    assert found("renamed9876") == [target.id]
    assert found("a1b2c3d4e5") == []
    assert found("A1B2C3ff") == []


# --- the databases use the index --------------------------------------------------


@pytest.fixture
def statements(services: Services) -> Iterator[list[tuple[str, Any]]]:
    """The SQL the receiver runs, with its parameters, as the driver gets it."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(services.engine, "before_cursor_execute", record)
    yield seen
    event.remove(services.engine, "before_cursor_execute", record)


def plans(engine: Engine, statements: list[tuple[str, Any]]) -> list[str]:
    """The plan of each listing query the receiver ran."""
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    found = []
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        assert raw is not None
        for statement, parameters in statements:
            if "FROM group_otas" not in statement:
                continue
            cursor = raw.cursor()
            cursor.execute(explain + statement, parameters)
            found.append("\n".join(str(row) for row in cursor.fetchall()))
            cursor.close()
    return found


def test_a_selective_search_reads_the_index_not_the_owners_rows(
    client: TestClient, services: Services, fleet: Fleet, statements: list[tuple[str, Any]]
) -> None:
    owner = fleet.owner()
    # Enough rows that a scan costs more than the index to either planner.
    paths = [f"ota/group/{n:06x}{n * 7919:08x}/firmware.bin" for n in range(3000)]
    otas = add_otas(services, owner, paths)
    if services.engine.dialect.name == "postgresql":
        with services.engine.begin() as connection:
            connection.execute(text("ANALYZE group_otas"))
    client.get("/v1/ota/group", headers=owner.headers)  # caches recordsTotal, as a live listing does
    statements.clear()
    body = client.get(
        "/v1/ota/group", headers=owner.headers, params={"search_value": paths[1234][10:20]}
    ).json()
    assert [o["_id"] for o in body["otas"]] == [otas[1234].id]
    queries = plans(services.engine, statements)
    assert len(queries) == 2  # the count and the page
    for plan in queries:
        if services.engine.dialect.name == "sqlite":
            assert "USING INDEX sqlite_autoindex_group_otas_1 (id=?)" in plan, plan
            assert "ix_group_otas_owner_updated" not in plan, plan
        else:
            assert "ix_group_otas_path_trgm" in plan, plan


# --- migration 0002 fills the index from existing rows ----------------------------


def test_upgrading_to_0002_indexes_the_rows_already_there(new_database: Callable[[], str]) -> None:
    engine = create_db_engine(new_database())
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0001")
            connection.execute(
                text(
                    "INSERT INTO users (id, email, plan, mqtt_user, mqtt_password_hash, created_at) "
                    "VALUES ('u1', 'a@example.com', 'pro', 'u', 'h', CURRENT_TIMESTAMP)"
                )
            )
            for n in range(30):
                connection.execute(
                    text(
                        "INSERT INTO groups (id, owner_id, name, token, created_at) "
                        "VALUES (:id, 'u1', 'g', :token, CURRENT_TIMESTAMP)"
                    ),
                    {"id": f"g{n}", "token": f"t{n}"},
                )
                connection.execute(
                    text(
                        "INSERT INTO group_otas (id, group_id, owner_id, version, path, object_key, sha256, "
                        "md5, size, revision, last_updated) VALUES (:id, :group, 'u1', '1.0.0', :path, 'k', "
                        "'s', 'm', 1, 0, CURRENT_TIMESTAMP)"
                    ),
                    {"id": f"o{n}", "group": f"g{n}", "path": f"ota/group/old{n:03d}row/firmware.bin"},
                )
        assert migrate(engine).after == head_revision()
        with Session(engine) as session:
            terms = owned_paths_containing(session, owner_id="u1", search="OLD017R", owner_rows=30)
            assert session.exec(select(GroupOta.id).where(*terms)).all() == ["o17"]
    finally:
        engine.dispose()


def test_a_sqlite_without_the_trigram_tokenizer_is_refused_in_one_line(tmp_path: Path) -> None:
    import sqlite3

    engine = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")

    def refuse_virtual_tables(action: int, *_: object) -> int:
        # What a SQLite older than 3.34 (or built without FTS5) answers, in effect.
        return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_CREATE_VTABLE else sqlite3.SQLITE_OK

    event.listen(engine, "connect", lambda dbapi, _record: dbapi.set_authorizer(refuse_virtual_tables))
    try:
        with pytest.raises(SchemaError) as raised:
            migrate(engine)
        assert str(raised.value).startswith(
            "migration failed: the path search index needs SQLite 3.34 or newer with FTS5 (this Python has "
            f"SQLite {sqlite3.sqlite_version}): use a newer Python or distribution, or PostgreSQL"
        )
        # Nothing half done: not even revision 0001's tables.
        with engine.connect() as connection:
            assert connection.execute(text("SELECT name FROM sqlite_master")).all() == []
    finally:
        engine.dispose()
