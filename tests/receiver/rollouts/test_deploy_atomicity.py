"""A deploy is all or nothing, and concurrent deploys to one group serialise."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlmodel import select
from starlette.testclient import TestClient

from otaship.receiver.app import create_app
from otaship.receiver.db.engine import read_session
from otaship.receiver.db.models import Deployment, GroupOta
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from otaship.receiver.storage import StorageError
from tests.conftest import Fleet
from tests.esp_image import build_image
from tests.receiver.http.management.test_ota import deploy, post


class FailingPut:
    """Wraps the real storage; `put` fails after writing part of the object."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def put(self, key: str, source: Path) -> None:
        raise StorageError("bucket unavailable")

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_storage_failure_leaves_the_previous_firmware(
    client: TestClient, fleet: Fleet, services: Services, settings: Settings
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    deploy(client, owner, group, "1.0.0")
    # The same receiver's parts but its storage, which is not a Storage: it fails puts.
    failing = dataclasses.replace(services, storage=FailingPut(services.storage))  # type: ignore[arg-type]
    with TestClient(create_app(settings, services=failing)) as broken:
        response = post(
            broken, owner, {"group": group.id, "token": group.token, "version": "1.1.0"}, build_image("1.1.0")
        )
    assert response.status_code == 500
    assert response.json() == {
        "message": "Error when uploading firmware file",
        "error": "StorageError: bucket unavailable",
    }
    assert client.get(f"/v1/ota/group/latest/{group.id}").json() == {"ver": "1.0.0"}
    served = client.get(f"/v1/ota/group/download/{group.id}{group.token}")
    assert served.content == build_image("1.0.0")
    listing = client.get("/v1/ota/group", headers=owner.headers).json()
    assert [(o["version"], o["__v"]) for o in listing["otas"]] == [("1.0.0", 0)]
    assert list(settings.tmp_dir.iterdir()) == []


def test_a_database_failure_mid_deploy_leaves_no_record(
    client: TestClient, fleet: Fleet, services: Services
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    deploy(client, owner, group, "1.0.0")

    def fail(conn: object, cursor: object, statement: str, *args: object) -> None:
        # The history insert comes after the GroupOta update in the same transaction.
        if statement.lstrip().upper().startswith("INSERT INTO DEPLOYMENTS"):
            raise OperationalError(statement, {}, Exception("disk I/O error"))

    event.listen(services.engine, "before_cursor_execute", fail)
    try:
        response = post(
            client, owner, {"group": group.id, "token": group.token, "version": "1.1.0"}, build_image("1.1.0")
        )
    finally:
        event.remove(services.engine, "before_cursor_execute", fail)
    assert response.status_code == 500
    assert response.json()["message"] == "Error when uploading firmware file"
    assert "OperationalError" in response.json()["error"]

    with read_session(services.engine) as session:
        ota = session.exec(select(GroupOta)).one()
        history = session.exec(select(Deployment)).all()
    # The GroupOta update was in the same transaction: rolled back with it.
    assert (ota.version, ota.revision) == ("1.0.0", 0)
    assert len(history) == 1
    assert client.get(f"/v1/ota/group/latest/{group.id}").json() == {"ver": "1.0.0"}
    assert client.get(f"/v1/ota/group/download/{group.id}{group.token}").content == build_image("1.0.0")


@pytest.mark.anyio
async def test_concurrent_deploys_to_one_group_count_each_once(
    fleet: Fleet, services: Services, settings: Settings
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    app = create_app(settings, services=services)
    images = {f"1.0.{n}": build_image(f"1.0.{n}") for n in range(8)}

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):

        async def send(version: str, image: bytes) -> int:
            response = await http.post(
                "/v1/ota/group",
                headers=owner.headers,
                data={"group": group.id, "token": group.token, "version": version},
                files={"firmware": ("firmware.bin", image)},
            )
            return response.status_code

        codes = await asyncio.gather(*(send(v, i) for v, i in images.items()))
        assert codes == [201] * len(images)
        listing = (await http.get("/v1/ota/group", headers=owner.headers)).json()

    (ota,) = listing["otas"]
    assert ota["__v"] == len(images) - 1
    with read_session(services.engine) as session:
        revisions = sorted(d.revision for d in session.exec(select(Deployment)))
    assert revisions == list(range(len(images)))
    stored = services.storage.local_path(f"firmware/sha256/{ota['sha256']}.bin").read_bytes()
    assert hashlib.sha256(stored).hexdigest() == ota["sha256"]
    assert stored == images[ota["version"]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
