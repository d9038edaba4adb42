"""/healthz and /readyz on the real app: a working receiver, then each dependency broken for real."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from starlette.testclient import TestClient

from otaship.receiver.app import build_services, create_app
from otaship.receiver.http.health import Readiness
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from otaship.receiver.storage import Storage, StorageError
from otaship.receiver.targeting.catalog import FirmwareCatalog
from tests.services import free_port


class FailingStorage(Storage):
    """The real storage, except that its check fails (or hangs) on demand."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.failure: str | None = None
        self.hang = threading.Event()
        self.hanging = False
        self.checks = 0

    def put(self, key: str, source: Path) -> None:
        self.inner.put(key, source)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def local_path(self, key: str) -> Path:
        return self.inner.local_path(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def check(self) -> None:
        self.checks += 1
        if self.hanging:
            self.hang.wait(10)
        if self.failure is not None:
            raise StorageError(self.failure)
        self.inner.check()


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    # The database in a folder of its own, so that a test can take the folder away.
    return Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'db' / 'otaship.db'}",
        mqtt_url="none",
    )


@pytest.fixture
def built(sqlite_settings: Settings) -> Iterator[Services]:
    working = build_services(sqlite_settings)
    services = dataclasses.replace(working, storage=FailingStorage(working.storage))
    yield services
    services.engine.dispose()


def ready(client: TestClient) -> tuple[int, dict[str, Any]]:
    response = client.get("/readyz")
    return response.status_code, response.json()


def test_a_working_receiver_is_live_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert ready(client) == (
        200,
        {"status": "ready", "checks": {"database": "ok", "storage": "ok", "mqtt": "not configured"}},
    )


def test_a_broker_not_configured_is_never_said_to_be_back(
    sqlite_settings: Settings, built: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with TestClient(create_app(sqlite_settings, services=built)) as client:
        for _ in range(3):
            assert ready(client) == (
                200,
                {"status": "ready", "checks": {"database": "ok", "storage": "ok", "mqtt": "not configured"}},
            )
    said = [r.getMessage() for r in caplog.records if r.name == "otaship.health"]
    assert said == []


def test_a_database_that_goes_away_is_named_and_comes_back(
    tmp_path: Path, sqlite_settings: Settings, built: Services
) -> None:
    with TestClient(create_app(sqlite_settings, services=built)) as client:
        assert ready(client)[0] == 200
        # Pooled connections keep their open file: drop them, then take the folder away.
        built.engine.dispose()
        (tmp_path / "db").rename(tmp_path / "db-away")
        status, body = ready(client)
        assert status == 503
        assert body["failed"] == ["database"]
        assert body["checks"]["storage"] == "ok"
        assert (
            body["checks"]["database"]
            == "OperationalError: (sqlite3.OperationalError) unable to open database file"
        )
        # Liveness does not care: restarting the process would not bring the database back.
        assert client.get("/healthz").status_code == 200

        (tmp_path / "db-away").rename(tmp_path / "db")
        assert ready(client)[0] == 200


def test_a_database_server_that_refuses_connections_is_named_without_its_password(
    sqlite_settings: Settings, built: Services
) -> None:
    engine = create_engine(
        f"postgresql+psycopg://otaship:pg-secret-pw@127.0.0.1:{free_port()}/otaship",
        connect_args={"connect_timeout": 2},
    )
    broken = Services(
        settings=sqlite_settings, engine=engine, storage=built.storage, catalog=FirmwareCatalog(engine)
    )
    with TestClient(create_app(sqlite_settings, services=broken)) as client:
        response = client.get("/readyz")
    engine.dispose()
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["database"]
    assert body["checks"]["database"].startswith("OperationalError: ")
    assert "refused" in body["checks"]["database"].lower()
    assert "pg-secret-pw" not in response.text
    assert "Traceback" not in response.text and "\n" not in body["checks"]["database"]


def test_failing_storage_is_named_with_its_reason(sqlite_settings: Settings, built: Services) -> None:
    storage = built.storage
    assert isinstance(storage, FailingStorage)
    storage.failure = "bucket otaship-firmware is not reachable"
    with TestClient(create_app(sqlite_settings, services=built)) as client:
        status, body = ready(client)
    assert status == 503
    assert body == {
        "status": "unavailable",
        "failed": ["storage"],
        "checks": {
            "database": "ok",
            "storage": "bucket otaship-firmware is not reachable",
            "mqtt": "not configured",
        },
    }


def test_real_local_storage_that_cannot_be_written_is_named(
    tmp_path: Path, sqlite_settings: Settings
) -> None:
    objects = tmp_path / "objects"
    settings = sqlite_settings.with_overrides(storage_url=objects.as_uri())
    services = build_services(settings)
    if objects.is_dir():
        objects.rmdir()
    objects.write_text("a file where the storage folder should be")
    try:
        with TestClient(create_app(settings, services=services)) as client:
            status, body = ready(client)
    finally:
        services.engine.dispose()
    assert status == 503
    assert body["failed"] == ["storage"]
    assert body["checks"]["storage"] == f"storage root {objects} is not a directory"


def test_a_hung_check_times_out_and_is_not_started_twice(sqlite_settings: Settings, built: Services) -> None:
    storage = built.storage
    assert isinstance(storage, FailingStorage)
    storage.hanging = True
    app = create_app(sqlite_settings, services=built)
    app.state.readiness = Readiness(timeout=0.2)
    try:
        with TestClient(app) as client:
            started = time.monotonic()
            first = ready(client)
            second = ready(client)
            elapsed = time.monotonic() - started
            assert (
                first
                == second
                == (
                    503,
                    {
                        "status": "unavailable",
                        "failed": ["storage"],
                        "checks": {
                            "database": "ok",
                            "storage": "no answer within 0.2 s",
                            "mqtt": "not configured",
                        },
                    },
                )
            )
            assert elapsed < 2
            # The second probe waited on the first attempt instead of starting another.
            assert storage.checks == 1

            storage.hanging = False
            storage.hang.set()
            deadline = time.monotonic() + 5
            while ready(client)[0] != 200:
                assert time.monotonic() < deadline, "readiness did not recover after the hang ended"
                time.sleep(0.05)
    finally:
        storage.hang.set()


def test_a_broker_that_is_down_is_named_without_the_url_credentials(
    sqlite_settings: Settings, built: Services
) -> None:
    # Not a broker: a port that takes the connection and drops it at once, so that
    # the test knows paho has tried before it asks.
    with socket.create_server(("127.0.0.1", 0)) as down:
        port = down.getsockname()[1]
        settings = sqlite_settings.with_overrides(mqtt_url=f"mqtt://receiver:mqtt-secret-pw@127.0.0.1:{port}")
        built = dataclasses.replace(built, settings=settings, notify=True)
        with TestClient(create_app(settings, services=built)) as client:
            down.settimeout(10)
            attempt, _ = down.accept()
            attempt.close()
            response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "failed": ["mqtt"],
        "checks": {
            "database": "ok",
            "storage": "ok",
            "mqtt": f"not connected to the broker at 127.0.0.1:{port}",
        },
    }
    assert "mqtt-secret-pw" not in response.text and "receiver" not in response.text


def test_the_embedded_broker_link_counts_once_connected(sqlite_settings: Settings, built: Services) -> None:
    settings = sqlite_settings.with_overrides(mqtt_url=f"embedded://127.0.0.1:{free_port()}")
    built = dataclasses.replace(built, settings=settings, notify=True)
    with TestClient(create_app(settings, services=built)) as client:
        deadline = time.monotonic() + 10
        while (answer := ready(client))[0] != 200:
            assert answer[1]["failed"] == ["mqtt"], answer
            assert time.monotonic() < deadline, f"the link never came up: {answer}"
            time.sleep(0.05)
        assert answer[1]["checks"] == {"database": "ok", "storage": "ok", "mqtt": "ok"}


def test_a_normal_shutdown_is_not_a_lost_broker(
    sqlite_settings: Settings, built: Services, caplog: pytest.LogCaptureFixture
) -> None:
    # Leaving the client runs the lifespan's shutdown, as Ctrl+C on `otaship serve` does.
    caplog.set_level(logging.INFO)
    settings = sqlite_settings.with_overrides(mqtt_url=f"embedded://127.0.0.1:{free_port()}")
    built = dataclasses.replace(built, settings=settings, notify=True)
    with TestClient(create_app(settings, services=built)) as client:
        deadline = time.monotonic() + 10
        while ready(client)[0] != 200:
            assert time.monotonic() < deadline, "the link never came up"
            time.sleep(0.05)
    link = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "otaship.mqtt"]
    assert [line for line in link if line[0] != "INFO"] == []
    assert link[-1][1] == f"disconnected from MQTT broker {settings.mqtt_url}"
