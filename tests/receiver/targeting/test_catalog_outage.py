"""The device catalog while the database fails: the last answers, from memory.

The app's catalog is pointed at a database that cannot be opened (a file in a
folder that does not exist), as a replica whose database went away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from otaship.receiver.services import Services
from otaship.receiver.targeting import catalog as catalog_module
from otaship.receiver.targeting.catalog import DatabaseUnavailable, FirmwareCatalog, load_entry
from tests.conftest import Fleet
from tests.esp_image import build_image
from tests.receiver.http.management.test_ota import deploy


@pytest.fixture
def away(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    yield engine
    engine.dispose()


def test_devices_get_the_last_answers_while_the_database_is_away(
    client: TestClient, services: Services, fleet: Fleet, away: Engine
) -> None:
    owner = fleet.owner()
    group, empty = fleet.group(owner, name="fleet"), fleet.group(owner, name="empty")
    never_asked = fleet.group(owner, name="never asked")
    deploy(client, owner, group, "1.4.0")
    image = build_image("1.4.0")
    download = f"/v1/ota/group/download/{group.id}{group.token}"
    assert client.get(f"/v1/ota/group/latest/{group.id}").json() == {"ver": "1.4.0"}
    assert client.get(f"/v1/ota/group/latest/{empty.id}").status_code == 404
    assert client.get("/v1/ota/group/latest/" + "0" * 24).json() == {"message": "No such group"}
    assert client.get(download).status_code == 200
    # A deploy forgets the fresh answers, not the last known ones.
    services.catalog.invalidate()

    working, services.catalog.engine = services.catalog.engine, away
    for _ in range(3):
        assert client.get(f"/v1/ota/group/latest/{group.id}").json() == {"ver": "1.4.0"}
        response = client.get(download)
        assert (response.status_code, response.content) == (200, image)
        assert client.head(download).status_code == 200
        assert client.get(f"/v1/ota/group/latest/{empty.id}").json() == {
            "message": "No firmware for this group"
        }
        # The token is still checked.
        assert client.get(f"/v1/ota/group/download/{group.id}{'x' * 16}").status_code == 404
    # A group this replica never read, or never found: nothing to answer from.
    assert client.get("/v1/ota/group/latest/" + "0" * 24).status_code == 503
    response = client.get(f"/v1/ota/group/latest/{never_asked.id}")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"message": "The group cannot be looked up right now: try again shortly"}
    assert client.get(f"/v1/ota/group/download/{never_asked.id}{never_asked.token}").status_code == 503

    # Back: fresh answers again, at the latest after the retry interval.
    services.catalog.engine = working
    services.catalog._retry_at = 0.0
    assert client.get(f"/v1/ota/group/latest/{never_asked.id}").json() == {
        "message": "No firmware for this group"
    }


def test_the_database_is_asked_at_most_once_a_retry_interval_while_it_fails(
    services: Services, fleet: Fleet, away: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = fleet.group(fleet.owner())
    reads: list[str] = []

    def counted(engine: Engine, group_id: str) -> object:
        reads.append(group_id)
        return load_entry(engine, group_id)

    monkeypatch.setattr(catalog_module, "load_entry", counted)
    catalog = FirmwareCatalog(services.engine, ttl=0, retry_interval=3600)

    async def scenario() -> None:
        first = await catalog.lookup(group.id)
        assert first is not None and first.token == group.token
        catalog.engine = away
        for _ in range(5):
            assert await catalog.lookup(group.id) == first
        with pytest.raises(DatabaseUnavailable):
            await catalog.lookup("f" * 24)

    asyncio.run(scenario())
    # The first read, the one that failed; the unknown group is tried, it has no answer to fall back on.
    assert reads == [group.id, group.id, "f" * 24]
