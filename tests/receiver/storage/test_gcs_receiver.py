"""The running receiver on Google Cloud Storage: `OTASHIP_STORAGE_URL=gs://bucket/prefix`.

The real app and the real google-cloud-storage client, against gcp-storage-emulator:
deploys write the object first and the record after, devices download through the
receiver's cache, and an outage or an interrupted upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlmodel import select
from starlette.requests import ClientDisconnect
from starlette.testclient import TestClient

from otaship.receiver.app import create_app
from otaship.receiver.db.engine import read_session
from otaship.receiver.db.models import Deployment, GroupOta
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from otaship.receiver.storage import object_key
from otaship.receiver.storage.gcs import GCSStorage
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image
from tests.receiver.http.management.test_ota import deploy, post

if TYPE_CHECKING:
    from tests.gcs_emulator import GCSEmulator

# Provides the gcs_emulator fixture.
pytest_plugins = ["tests.gcs_emulator"]

MiB = 1024 * 1024
PREFIX = "fleet/ota"
UPLOAD_ERROR = "Error when uploading firmware file"


@pytest.fixture
def settings(settings: Settings, gcs_emulator: GCSEmulator) -> Settings:
    # The suite's settings (database and all), with firmware in the emulator's
    # bucket. Room for an image above 8 MiB, which goes through a resumable upload.
    return settings.with_overrides(
        storage_url=f"gs://{gcs_emulator.bucket}/{PREFIX}", max_firmware_bytes=16 * MiB
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _gcs(services: Services) -> GCSStorage:
    assert isinstance(services.storage, GCSStorage)
    return services.storage


def _media_gets(emulator: GCSEmulator) -> int:
    return emulator.count("GET", "alt=media")


def _uploads(emulator: GCSEmulator) -> int:
    return emulator.count("POST", "uploadType=")


def _object_name(image: bytes) -> str:
    return f"{PREFIX}/{object_key(hashlib.sha256(image).hexdigest())}"


def _download_url(group: Any) -> str:
    return f"/v1/ota/group/download/{group.id}{group.token}"


def _records(services: Services) -> tuple[list[tuple[str, int]], int]:
    with read_session(services.engine) as session:
        otas = [(o.version, o.revision) for o in session.exec(select(GroupOta))]
        history = len(session.exec(select(Deployment)).all())
    return otas, history


def test_the_factory_builds_gcs_from_the_url(services: Services, gcs_emulator: GCSEmulator) -> None:
    storage = _gcs(services)
    assert (storage.bucket_name, storage.prefix) == (gcs_emulator.bucket, PREFIX)
    assert storage.cache_dir == services.settings.cache_dir


def test_a_deploy_stores_the_object_under_its_content_key(
    client: TestClient, fleet: Fleet, services: Services, gcs_emulator: GCSEmulator
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("1.0.0", code_size=100_000)

    body = deploy(client, owner, group, "1.0.0", code_size=100_000)

    assert gcs_emulator.object_names() == [_object_name(image)]
    assert _uploads(gcs_emulator) == 1
    sha256 = hashlib.sha256(image).hexdigest()
    assert body["ota"]["sha256"] == sha256
    listing = client.get("/v1/ota/group", headers=owner.headers).json()
    (ota,) = listing["otas"]
    assert (ota["version"], ota["sha256"], ota["md5"], ota["size"]) == (
        "1.0.0",
        sha256,
        hashlib.md5(image).hexdigest(),
        len(image),
    )
    assert ota["path"] == f"ota/group/{group.id}{group.token}/firmware.bin"
    # The spool file is gone, and nothing was cached: no device asked yet.
    assert list(services.settings.tmp_dir.iterdir()) == []
    assert _media_gets(gcs_emulator) == 0

    # The same image deployed to another group is the same object: not uploaded again.
    other = fleet.group(owner, name="other")
    deploy(client, owner, other, "1.0.0", code_size=100_000)
    assert gcs_emulator.object_names() == [_object_name(image)]
    assert _uploads(gcs_emulator) == 1


def test_devices_download_through_the_receiver(
    client: TestClient, fleet: Fleet, gcs_emulator: GCSEmulator
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("2.0.0", code_size=300_000)
    deploy(client, owner, group, "2.0.0", code_size=300_000)
    url = _download_url(group)
    etag = f'"{hashlib.sha256(image).hexdigest()}"'

    full = client.get(url)
    assert full.status_code == 200
    assert full.content == image
    assert full.headers["content-type"] == "application/octet-stream"
    assert full.headers["content-length"] == str(len(image))
    assert full.headers["x-md5"] == hashlib.md5(image).hexdigest()
    assert full.headers["etag"] == etag
    assert full.headers["accept-ranges"] == "bytes"

    part = client.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.content == image[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(image)}"
    assert part.headers["x-md5"] == hashlib.md5(image).hexdigest()
    # A device resuming with If-Range gets the rest only while the image is the same.
    resumed = client.get(url, headers={"Range": "bytes=200000-", "If-Range": etag})
    assert resumed.status_code == 206 and resumed.content == image[200000:]
    changed = client.get(url, headers={"Range": "bytes=200000-", "If-Range": '"other"'})
    assert changed.status_code == 200 and changed.content == image
    head = client.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(image))

    # Five requests, one read from GCS.
    assert _media_gets(gcs_emulator) == 1


@pytest.mark.anyio
async def test_a_burst_of_downloads_costs_one_gcs_read_per_image(
    fleet: Fleet, services: Services, settings: Settings, gcs_emulator: GCSEmulator
) -> None:
    owner = fleet.owner()
    groups = [fleet.group(owner, name="a"), fleet.group(owner, name="b")]
    images = [build_image("1.0.0", code_size=500_000, seed=n) for n in range(2)]
    app = create_app(settings, services=services)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        for group, image in zip(groups, images, strict=True):
            response = await http.post(
                "/v1/ota/group",
                headers=owner.headers,
                data={"group": group.id, "token": group.token, "version": "1.0.0"},
                files={"firmware": ("firmware.bin", image)},
            )
            assert response.status_code == 201, response.text

        # Every device asks while the first GCS read is still running.
        gcs_emulator.delay = 0.3

        async def device(n: int) -> tuple[int, bytes]:
            response = await http.get(_download_url(groups[n % 2]))
            assert response.status_code == 200, response.text
            return n % 2, response.content

        started = time.monotonic()
        results = await asyncio.gather(*(device(n) for n in range(40)))
        elapsed = time.monotonic() - started
        assert all(content == images[which] for which, content in results)
        assert _media_gets(gcs_emulator) == 2
        # They waited for the shared reads, not for one read each in turn.
        assert elapsed < 5, elapsed

        # Later devices are served from the cache.
        again = await asyncio.gather(*(device(n) for n in range(10)))
        assert all(content == images[which] for which, content in again)
    assert _media_gets(gcs_emulator) == 2


def test_a_cache_file_evicted_before_it_is_opened_is_fetched_again(
    client: TestClient,
    fleet: Fleet,
    services: Services,
    gcs_emulator: GCSEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("1.0.0", code_size=50_000)
    deploy(client, owner, group, "1.0.0", code_size=50_000)
    storage = _gcs(services)
    real_local_path = storage.local_path
    evicted: list[Path] = []

    def evicted_once(key: str) -> Path:
        path = real_local_path(key)
        if not evicted:
            # Another request's download evicted it meanwhile (the request was held
            # up past the grace window).
            path.unlink()
            evicted.append(path)
        return path

    monkeypatch.setattr(storage, "local_path", evicted_once)
    response = client.get(_download_url(group))
    assert response.status_code == 200
    assert response.content == image
    assert response.headers["content-length"] == str(len(image))
    assert evicted and evicted[0].exists()
    assert _media_gets(gcs_emulator) == 2


def test_eviction_keeps_serving_every_image(
    client: TestClient,
    fleet: Fleet,
    services: Services,
    gcs_emulator: GCSEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A cache too small for two images: each download evicts the other one.
    storage = _gcs(services)
    monkeypatch.setattr(storage, "cache_bytes", 150_000)
    monkeypatch.setattr(storage, "evict_grace", 0.0)
    owner = fleet.owner()
    groups = [fleet.group(owner, name="a"), fleet.group(owner, name="b")]
    images = [build_image("1.0.0", code_size=100_000, seed=n) for n in range(2)]
    for n, group in enumerate(groups):
        deploy(client, owner, group, "1.0.0", code_size=100_000, seed=n)
    for n in (0, 1, 0, 1):
        response = client.get(_download_url(groups[n]))
        assert response.status_code == 200 and response.content == images[n]
    cached = [p for p in storage.cache_dir.iterdir() if not p.name.startswith(".")]
    assert len(cached) == 1
    assert _media_gets(gcs_emulator) == 4


def test_a_gcs_outage_during_a_deploy_is_a_quick_500_and_changes_nothing(
    client: TestClient, fleet: Fleet, services: Services, gcs_emulator: GCSEmulator
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    old = build_image("1.0.0", code_size=20_000)
    deploy(client, owner, group, "1.0.0", code_size=20_000)
    assert client.get(_download_url(group)).content == old  # cached on this replica
    gcs_emulator.stop()

    started = time.monotonic()
    response = post(
        client, owner, {"group": group.id, "token": group.token, "version": "1.1.0"}, build_image("1.1.0")
    )
    elapsed = time.monotonic() - started

    assert response.status_code == 500
    body = response.json()
    assert body["message"] == UPLOAD_ERROR
    assert body["error"].startswith("StorageError: Cloud Storage")
    assert "cannot connect" in body["error"]
    # Bounded by the client's retry deadline, not the library's two minutes.
    assert elapsed < 8, elapsed
    assert _records(services) == ([("1.0.0", 0)], 1)
    assert list(services.settings.tmp_dir.iterdir()) == []
    # Devices still get the previous firmware, from the cache.
    assert client.get(f"/v1/ota/group/latest/{group.id}").json() == {"ver": "1.0.0"}
    served = client.get(_download_url(group))
    assert served.status_code == 200 and served.content == old

    # A replica without the image cached answers the spec's kind of 500, quickly.
    for cached in _gcs(services).cache_dir.iterdir():
        cached.unlink()
    started = time.monotonic()
    missing = client.get(_download_url(group))
    assert missing.status_code == 500
    assert missing.json()["message"] == "Error when reading firmware file"
    assert "cannot connect" in missing.json()["error"]
    assert time.monotonic() - started < 8

    # Back up: nothing half-written was left, and the deploy goes through.
    gcs_emulator.start()
    assert gcs_emulator.object_names() == [_object_name(old)]
    deploy(client, owner, group, "1.1.0")
    assert client.get(_download_url(group)).content == build_image("1.1.0")
    assert _records(services) == ([("1.1.0", 1)], 2)


class _FailingFrom(list[tuple[str, str]]):
    """The emulator's request log; from the `nth` request matching, every request fails.

    Raising in the emulator's handler drops the connection without an answer, as a
    network failure would.
    """

    def __init__(self, method: str, fragment: str, nth: int) -> None:
        super().__init__()
        self.match = (method, fragment)
        self.left = nth
        self.failing = False

    def append(self, request: tuple[str, str]) -> None:
        super().append(request)
        if request[0] == self.match[0] and self.match[1] in request[1]:
            self.left -= 1
            self.failing = self.failing or self.left <= 0
        if self.failing:
            raise ConnectionAbortedError("simulated network failure")


def test_gcs_failing_in_the_middle_of_an_upload_leaves_no_record(
    client: TestClient, fleet: Fleet, services: Services, gcs_emulator: GCSEmulator
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    deploy(client, owner, group, "1.0.0")
    big = build_image("1.1.0", code_size=9 * MiB)  # two chunks of a resumable upload
    assert gcs_emulator._httpd is not None
    # The dropped connections are the point; the emulator need not print them.
    gcs_emulator._httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]  # silence the server on purpose
    # The first 8 MiB chunk is stored; the request with the rest never gets an answer.
    failing = gcs_emulator.requests = _FailingFrom("PUT", "upload_id=", nth=2)

    response = post(client, owner, {"group": group.id, "token": group.token, "version": "1.1.0"}, big)
    gcs_emulator.requests = list(failing)  # the network is back

    assert response.status_code == 500, response.text
    assert response.json()["message"] == UPLOAD_ERROR
    assert "Cloud Storage upload failed" in response.json()["error"]
    assert gcs_emulator.count("PUT", "upload_id=") >= 2
    assert _records(services) == ([("1.0.0", 0)], 1)
    assert list(services.settings.tmp_dir.iterdir()) == []
    assert gcs_emulator.object_names() == [_object_name(build_image("1.0.0"))]
    assert client.get(f"/v1/ota/group/latest/{group.id}").json() == {"ver": "1.0.0"}
    assert client.get(_download_url(group)).content == build_image("1.0.0")


def _multipart(fields: dict[str, str], image: bytes, boundary: str) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="firmware"; filename="firmware.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts)


@pytest.mark.anyio
async def test_an_upload_interrupted_by_the_client_leaves_no_record(
    fleet: Fleet, services: Services, settings: Settings, gcs_emulator: GCSEmulator
) -> None:
    owner: Owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("1.0.0", code_size=1 * MiB)
    boundary = "otaship-test-boundary"
    body = _multipart({"group": group.id, "token": group.token, "version": "1.0.0"}, image, boundary)
    cut = len(body) // 2  # inside the firmware part
    app = create_app(settings, services=services)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/ota/group",
        "raw_path": b"/v1/ota/group",
        "root_path": "",
        "query_string": b"",
        "server": ("test", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"host", b"test"),
            (b"authorization", f"Bearer {owner.api_key}".encode()),
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "state": {},
    }
    chunks: Iterator[dict[str, Any]] = iter(
        [
            {"type": "http.request", "body": body[: cut // 2], "more_body": True},
            {"type": "http.request", "body": body[cut // 2 : cut], "more_body": True},
        ]
    )

    async def receive() -> dict[str, Any]:
        # Then the connection drops.
        return next(chunks, {"type": "http.disconnect"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # Nobody is listening for an answer any more; what matters is what the
    # request leaves behind.
    with contextlib.suppress(ClientDisconnect):
        await app(scope, receive, send)  # type: ignore[arg-type]
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] != [201]

    assert _records(services) == ([], 0)
    assert gcs_emulator.object_names() == []
    assert _uploads(gcs_emulator) == 0
    # The half-written spool file is gone.
    assert list(settings.tmp_dir.iterdir()) == []
