"""Logs of real requests: one JSON object a line (or text), access lines, and never a secret."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from otaship.receiver.app import create_app, describe_backends
from otaship.receiver.logs import configure_logging, redact
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from otaship.receiver.storage import Storage, StorageError
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image
from tests.receiver.http.management.test_ota import deploy, post
from tests.receiver_process import SERVERS, ReceiverProcess, migrated_env, otaship_json
from tests.services import free_port

DOWNLOAD_ROUTE = "/v1/ota/group/download/{credentials}"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide loggers; put them back for the next test."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"]
    saved = {
        name: (
            list(logging.getLogger(name).handlers),
            logging.getLogger(name).level,
            logging.getLogger(name).propagate,
        )
        for name in names
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def capture(settings: Settings, log_format: str) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(settings.with_overrides(log_format=log_format, log_level="info"), stream=stream)
    return stream


class BrokenPath(Storage):
    """Storage whose reads fail with an exception the app does not expect."""

    def __init__(self, inner: Storage, message: str | None = None) -> None:
        # No message: reads work, until a test sets one.
        self.inner, self.message = inner, message

    def put(self, key: str, source: Path) -> None:
        self.inner.put(key, source)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def local_path(self, key: str) -> Path:
        if self.message is None:
            return self.inner.local_path(key)
        raise RuntimeError(self.message)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def check(self) -> None:
        self.inner.check()


def traffic(client: TestClient, fleet: Fleet, services: Services) -> tuple[Owner, Any, list[str]]:
    """Requests that carry every kind of secret; returns the secrets."""
    owner = fleet.owner()
    group = fleet.group(owner)
    deploy(client, owner, group, "1.0.0")
    client.get("/v1/ota/group", headers=owner.headers)
    client.get(f"/v1/ota/group/latest/{group.id}")
    assert client.get(f"/v1/ota/group/download/{group.id}{group.token}").status_code == 200
    client.head(f"/v1/ota/group/download/{group.id}{group.token}")
    client.get(f"/v1/ota/group/download/{group.id}WrongTokenWrong1")
    rejected_key = "osk_" + "A" * 43
    client.get("/v1/ota/group", headers={"Authorization": f"Bearer {rejected_key}"})
    client.get("/healthz")
    # An unexpected failure on the download route: its log line quotes the URL,
    # and the exception's own text names the IoTaaP path with the token in it.
    assert isinstance(services.storage, BrokenPath)
    services.storage.message = f"cannot open ota/group/{group.id}{group.token}/firmware.bin"
    assert client.get(f"/v1/ota/group/download/{group.id}{group.token}").status_code == 500
    return owner, group, [owner.api_key, group.token, rejected_key, owner.mqtt_password]


def test_json_lines_from_real_requests_carry_no_secret(
    settings: Settings, services: Services, fleet: Fleet, restore_logging: None
) -> None:
    stream = capture(settings, "json")
    services = dataclasses.replace(services, storage=BrokenPath(services.storage))
    with TestClient(create_app(settings, services=services), raise_server_exceptions=False) as client:
        _owner, group, secrets = traffic(client, fleet, services)
    output = stream.getvalue()
    for secret in secrets:
        assert secret not in output

    lines = [json.loads(line) for line in output.splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    access = [line for line in lines if line["logger"] == "otaship.access" and "method" in line]
    assert [(a["method"], a["route"], a["status"]) for a in access] == [
        ("POST", "/v1/ota/group", 201),
        ("GET", "/v1/ota/group", 200),
        # GET latest is logged at debug level, and counted in a summary line.
        ("GET", DOWNLOAD_ROUTE, 200),
        ("HEAD", DOWNLOAD_ROUTE, 200),
        ("GET", DOWNLOAD_ROUTE, 404),
        ("GET", "/v1/ota/group", 401),
        # /healthz is logged at debug level: probes would flood the log.
        ("GET", DOWNLOAD_ROUTE, 500),
    ]
    download = access[2]
    assert download["path"] == f"/v1/ota/group/download/{group.id}[redacted]"
    assert download["message"].startswith(f"GET /v1/ota/group/download/{group.id}[redacted] 200 ")
    assert isinstance(download["duration_ms"], float) and download["duration_ms"] > 0
    assert download["client"] == "testclient"

    [checks] = [line for line in lines if line.get("event") == "device_checks"]
    assert checks["logger"] == "otaship.access" and checks["level"] == "INFO"
    assert re.fullmatch(r"device checks \(GET latest\) in the last \d+ s: 1 \(200=1\)", checks["message"])
    assert (checks["count"], checks["by_status"]) == (1, {"200": 1})

    [crash] = [line for line in lines if line["message"].startswith("unhandled error")]
    assert crash["level"] == "ERROR"
    assert crash["message"] == f"unhandled error on GET /v1/ota/group/download/{group.id}[redacted]"
    assert "RuntimeError: cannot open ota/group/" in crash["exception"]
    assert f"ota/group/{group.id}[redacted]/firmware.bin" in crash["exception"]


def test_text_lines_carry_no_secret(
    settings: Settings, services: Services, fleet: Fleet, restore_logging: None
) -> None:
    stream = capture(settings, "text")
    services = dataclasses.replace(services, storage=BrokenPath(services.storage))
    with TestClient(create_app(settings, services=services), raise_server_exceptions=False) as client:
        _, group, secrets = traffic(client, fleet, services)
    output = stream.getvalue()
    for secret in secrets:
        assert secret not in output
    line = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: .*")
    starts = [text for text in output.splitlines() if not text.startswith((" ", "Traceback", "\t"))]
    assert [text for text in starts if re.match(r"\d{4}-", text) and not line.fullmatch(text)] == []
    assert f"INFO otaship.access: GET /v1/ota/group/download/{group.id}[redacted] 200 " in output


def test_access_lines_follow_the_level(settings: Settings, services: Services, restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(settings.with_overrides(log_format="json", log_level="warning"), stream=stream)
    with TestClient(create_app(settings, services=services)) as client:
        client.get("/v1/ota/group/latest/" + "0" * 24)
    assert stream.getvalue() == ""
    configure_logging(settings.with_overrides(log_format="json", log_level="debug"), stream=stream)
    with TestClient(create_app(settings, services=services)) as client:
        client.get("/healthz")
    assert any(json.loads(line).get("route") == "/healthz" for line in stream.getvalue().splitlines())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET /v1/ota/group/download/0123456789abcdef01234567AATluvfLURijoH9d HTTP/1.1",
            "GET /v1/ota/group/download/0123456789abcdef01234567[redacted] HTTP/1.1",
        ),
        ("/v1/ota/group/download/garbage?x=1", "/v1/ota/group/download/[redacted]?x=1"),
        ("route /v1/ota/group/download/{credentials}", "route /v1/ota/group/download/{credentials}"),
        (
            "ota/group/5e1b76bc4315b70eb242567aAATluvfLURijoH9d/firmware.bin",
            "ota/group/5e1b76bc4315b70eb242567a[redacted]/firmware.bin",
        ),
        ("/v1/ota/group/latest/5e1b76bc4315b70eb242567a", "/v1/ota/group/latest/5e1b76bc4315b70eb242567a"),
        ("Authorization: Bearer osk_abcDEF123-_xyz", "Authorization: Bearer [redacted]"),
        ("authorization: bearer some-opaque-token", "authorization: bearer [redacted]"),
        ("key osk_abcDEF123-_xyz rotated", "key osk_[redacted] rotated"),
        (
            "mqtts://devices:hunter2-pw@broker.example.com:8883",
            "mqtts://devices:[redacted]@broker.example.com:8883",
        ),
        (
            "postgresql+psycopg://otaship:p%40ss@db:5432/otaship",
            "postgresql+psycopg://otaship:[redacted]@db:5432/otaship",
        ),
        ("basic checks passed", "basic checks passed"),
        # The id and token on a route that does not take them, in the access
        # line and in uvicorn's trace of the scope (raw_path is bytes there).
        (
            "GET /v1/ota/group/latest/5e1b76bc4315b70eb242567aAATluvfLURijoH9d 404",
            "GET /v1/ota/group/latest/5e1b76bc4315b70eb242567a[redacted] 404",
        ),
        (
            "'raw_path': b'/v1/rollouts/5e1b76bc4315b70eb242567aAATluvfLURijoH9d/promote'",
            "'raw_path': b'/v1/rollouts/5e1b76bc4315b70eb242567a[redacted]/promote'",
        ),
        ("/5e1b76bc4315b70eb242567aAATluvfLURijoH9d.bin", "/5e1b76bc4315b70eb242567a[redacted].bin"),
        # Not that shape: an object key's sha256, an id and something shorter or longer.
        ("firmware/sha256/" + "9f" * 32 + ".bin", "firmware/sha256/" + "9f" * 32 + ".bin"),
        (
            "/v1/rollouts/5e1b76bc4315b70eb242567aAATluvfLURijoH9",
            "/v1/rollouts/5e1b76bc4315b70eb242567aAATluvfLURijoH9",
        ),
        (
            "/v1/rollouts/5e1b76bc4315b70eb242567aAATluvfLURijoH9dX",
            "/v1/rollouts/5e1b76bc4315b70eb242567aAATluvfLURijoH9dX",
        ),
        (
            "PUT https://storage.googleapis.com/upload/storage/v1/b/fw/o?uploadType=resumable&upload_id=ADPyc-x9",
            "PUT https://storage.googleapis.com/upload/storage/v1/b/fw/o?uploadType=resumable&upload_id=[redacted]",
        ),
        # GitHub tokens and the webhook secrets `github bind` makes.
        ("token ghp_16C7e42F292c6912E7710c838347Ae178B4a", "token ghp_[redacted]"),
        ("github_pat_11ABCDEFG0_xyz", "github_pat_[redacted]"),
        ("secret oshk_Zm9vYmFy-_x ok", "secret oshk_[redacted] ok"),
        ("ghp_", "ghp_"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


# The server's own lines (startup, shutdown) come through the same formatter on each server.
SERVER_LINES = {
    "uvicorn": ("uvicorn.error", "uvicorn.access", "Uvicorn running on"),
    "granian": ("_granian", "granian.access", "Listening at: http://"),
}


@pytest.mark.parametrize("server", SERVERS)
def test_otaship_serve_writes_json_lines_through_one_formatter(tmp_path: Path, server: str) -> None:
    broker_password = "broker-secret-pw"
    env = migrated_env(
        tmp_path / "data",
        server=server,
        OTASHIP_LOG_FORMAT="json",
        OTASHIP_MQTT_URL=f"mqtt://receiver:{broker_password}@127.0.0.1:{free_port()}",
        # One worker, so one startup line: each worker says what it works with.
        OTASHIP_WORKERS="1",
    )
    user = otaship_json(env, "user", "create", "ops@example.com", "--plan", "pro")
    group = otaship_json(env, "group", "create", "fleet", "--owner", "ops@example.com")
    receiver = ReceiverProcess(env).start()
    try:
        download = f"{receiver.url}/v1/ota/group/download/{group['id']}{group['token']}"
        assert httpx.get(download, timeout=10).status_code == 404
        headers = {"Authorization": f"Bearer {user['api_key']}"}
        assert httpx.get(f"{receiver.url}/v1/ota/group", headers=headers, timeout=10).status_code == 200
    finally:
        output = receiver.stop()
    for secret in (group["token"], user["api_key"], user["mqtt_password"], broker_password):
        assert secret not in output
    lines = [json.loads(line) for line in output.splitlines()]
    loggers = {line["logger"] for line in lines}
    server_logger, server_access_logger, running = SERVER_LINES[server]
    assert {server_logger, "otaship.access"} <= loggers
    assert server_access_logger not in loggers
    assert any(line["message"].startswith(running) for line in lines)
    paths = [line["path"] for line in lines if line["logger"] == "otaship.access"]
    assert f"/v1/ota/group/download/{group['id']}[redacted]" in paths
    # What it works with, once at startup, at info, the broker's password redacted.
    data = (tmp_path / "data").resolve()
    using = [line for line in lines if line["message"].startswith("using ")]
    assert [(line["level"], line["logger"], line["message"]) for line in using] == [
        (
            "INFO",
            "otaship",
            f"using database sqlite:///{data / 'otaship.db'}, storage {(data / 'objects').as_uri()}, "
            f"MQTT {env['OTASHIP_MQTT_URL'].replace(broker_password, '[redacted]')}",
        )
    ]


def test_the_backends_line_redacts_every_password(tmp_path: Path) -> None:
    settings = Settings(
        database_url="postgresql+psycopg://otaship:db-secret@db.internal:5432/otaship",
        storage_url="gs://acme-firmware/otaship",
        mqtt_url="mqtts://otaship:mq-secret@mqtt.example.com:8883",
    )
    assert describe_backends(settings) == (
        "database postgresql+psycopg://otaship:[redacted]@db.internal:5432/otaship, "
        "storage gs://acme-firmware/otaship, MQTT mqtts://otaship:[redacted]@mqtt.example.com:8883"
    )
    without_broker = Settings(data_dir=tmp_path / "data", mqtt_url="none")
    assert describe_backends(without_broker).endswith(
        f"storage {(tmp_path / 'data' / 'objects').resolve().as_uri()}, MQTT none (devices poll)"
    )


def test_a_token_put_on_another_route_by_mistake_is_redacted(
    settings: Settings, services: Services, fleet: Fleet, restore_logging: None
) -> None:
    """A device configured with `<id><token>` as its group id asks `latest` with both."""
    # At debug level, where the device checks have their own access lines too.
    stream = io.StringIO()
    configure_logging(settings.with_overrides(log_format="json", log_level="debug"), stream=stream)
    owner = fleet.owner()
    group = fleet.group(owner)
    pair = f"{group.id}{group.token}"
    with TestClient(create_app(settings, services=services)) as client:
        assert client.get(f"/v1/ota/group/latest/{pair}").status_code == 404
        assert client.get(f"/v1/rollouts/{pair}", headers=owner.headers).status_code == 404
        assert client.post(f"/v1/rollouts/{pair}/abort", headers=owner.headers).status_code == 404
        assert client.get(f"/no/such/route/{pair}").status_code == 404
    output = stream.getvalue()
    assert group.token not in output
    lines = [json.loads(line) for line in output.splitlines()]
    paths = [line["path"] for line in lines if line["logger"] == "otaship.access" and "path" in line]
    assert paths == [
        f"/v1/ota/group/latest/{group.id}[redacted]",
        f"/v1/rollouts/{group.id}[redacted]",
        f"/v1/rollouts/{group.id}[redacted]/abort",
        f"/no/such/route/{group.id}[redacted]",
    ]


class FailingPut(BrokenPath):
    """Storage whose writes fail with an error quoting the IoTaaP path, token and all."""

    def put(self, key: str, source: Path) -> None:
        raise StorageError(self.message)


def test_a_server_error_redacts_its_cause_for_the_client_and_the_log(
    settings: Settings, services: Services, fleet: Fleet, restore_logging: None
) -> None:
    stream = capture(settings, "text")
    owner = fleet.owner()
    group = fleet.group(owner)
    services = dataclasses.replace(
        services,
        storage=FailingPut(services.storage, f"cannot write ota/group/{group.id}{group.token}/firmware.bin"),
    )
    with TestClient(create_app(settings, services=services)) as client:
        response = post(
            client, owner, {"group": group.id, "token": group.token, "version": "1.0.0"}, build_image("1.0.0")
        )
    assert response.status_code == 500
    assert response.json() == {
        "message": "Error when uploading firmware file",
        "error": f"StorageError: cannot write ota/group/{group.id}[redacted]/firmware.bin",
    }
    assert group.token not in stream.getvalue()
    assert f"cannot write ota/group/{group.id}[redacted]/firmware.bin" in stream.getvalue()


def test_the_cli_redacts_what_python_logs_for_it_unconfigured(tmp_path: Path) -> None:
    """Admin commands and `simulate` configure no logging: their warnings and
    errors reach stderr through Python's last-resort handler, redacted."""
    script = (
        "import logging, sys\n"
        "from otaship.receiver.cli import main\n"
        "assert main(['user', 'list']) == 0\n"
        "logging.getLogger('otaship.simulator.cli').error(\n"
        "    'simulation failed: GET http://h/v1/ota/group/download/5e1b76bc4315b70eb242567aAATluvfLURijoH9d')\n"
        "logging.getLogger('otaship.simulator.cli').info('info lines stay quiet osk_abcdefgh')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=migrated_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stderr
        == "simulation failed: GET http://h/v1/ota/group/download/5e1b76bc4315b70eb242567a[redacted]\n"
    )
