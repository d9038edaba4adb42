"""GET /metrics on the real app: requests by route template, deploys, triggers, reports, rollouts."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import paho.mqtt.client as mqtt
import prometheus_client
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.testclient import TestClient

from otaship.receiver.app import create_app
from otaship.receiver.metrics import Metrics, ObserveRequests
from otaship.receiver.mqtt.reports import ReportIngester
from otaship.receiver.rollouts import clock as rollout_runner
from otaship.receiver.rollouts.clock import RolloutRunner
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from otaship.receiver.targeting.catalog import FirmwareCatalog
from tests.conftest import Fleet
from tests.esp_image import build_image
from tests.receiver.http.management.test_ota import deploy
from tests.services import free_port
from tests.waiting import eventually

LATEST = "/v1/ota/group/latest/{group_id}"


def metrics_of(client: TestClient) -> Metrics:
    metrics: Metrics = client.app.state.metrics  # type: ignore[attr-defined]
    return metrics


def sample(client: TestClient, name: str, **labels: str) -> float:
    value = metrics_of(client).registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def scrape(client: TestClient) -> dict[str, list[Any]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def test_requests_are_counted_by_route_template_not_by_path(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    deploy(client, owner, group, "1.0.0")
    for group_id in (group.id, "0" * 24, "f" * 24):
        client.get(f"/v1/ota/group/latest/{group_id}")
    client.get(f"/v1/ota/group/download/{group.id}{group.token}")
    client.get("/no/such/route/123")
    client.request("BREW", "/healthz")

    assert sample(client, "otaship_http_requests_total", method="GET", route=LATEST, status="200") == 1
    assert sample(client, "otaship_http_requests_total", method="GET", route=LATEST, status="404") == 2
    assert sample(client, "otaship_http_request_duration_seconds_count", method="GET", route=LATEST) == 3
    assert (
        sample(client, "otaship_http_requests_total", method="POST", route="/v1/ota/group", status="201") == 1
    )
    assert sample(client, "otaship_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert sample(client, "otaship_http_requests_total", method="other", route="/healthz", status="405") == 1

    families = scrape(client)
    routes = {s.labels["route"] for s in families["otaship_http_requests"]}
    assert routes == {
        "/v1/ota/group",
        LATEST,
        "/v1/ota/group/download/{credentials}",
        "unmatched",
        "/healthz",
    }
    text = client.get("/metrics").text
    assert group.id not in text and group.token not in text and owner.api_key not in text


def test_latency_buckets_are_cumulative_and_agree_with_the_count() -> None:
    metrics = Metrics()
    for duration in (0.0001, 0.0004, 0.003, 0.2, 100.0):
        metrics.requests.record("GET", LATEST, 200, duration)
    metrics.requests.record("GET", LATEST, 404, 0.0002)

    def bucket(le: str) -> float | None:
        return metrics.registry.get_sample_value(
            "otaship_http_request_duration_seconds_bucket", {"method": "GET", "route": LATEST, "le": le}
        )

    assert [bucket(le) for le in ("0.0005", "0.001", "0.005", "0.25", "60.0", "+Inf")] == [3, 3, 4, 5, 5, 6]
    labels = {"method": "GET", "route": LATEST}
    assert metrics.registry.get_sample_value("otaship_http_request_duration_seconds_count", labels) == 6
    total = metrics.registry.get_sample_value("otaship_http_request_duration_seconds_sum", labels)
    assert total == pytest.approx(100.2037)
    assert metrics.registry.get_sample_value("otaship_http_requests_total", {**labels, "status": "200"}) == 5


def test_each_app_counts_in_its_own_registry(settings: Settings, services: Services) -> None:
    first = TestClient(create_app(settings, services=services))
    second = TestClient(create_app(settings, services=services))
    first.get("/healthz")
    first.get("/healthz")
    second.get("/healthz")
    assert sample(first, "otaship_http_requests_total", method="GET", route="/healthz", status="200") == 2
    assert sample(second, "otaship_http_requests_total", method="GET", route="/healthz", status="200") == 1
    global_names = set(prometheus_client.REGISTRY._names_to_collectors)
    assert not any(name.startswith("otaship") for name in global_names)


def test_the_middleware_is_pure_asgi() -> None:
    # BaseHTTPMiddleware runs every request through an extra task and memory stream.
    assert not issubclass(ObserveRequests, BaseHTTPMiddleware)


def test_deploys_and_upload_bytes(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("2.0.0")
    data = {"group": group.id, "token": group.token, "version": "2.0.0"}
    for _ in range(2):  # the second is a no-op re-post: bytes received, nothing deployed
        response = client.post(
            "/v1/ota/group", headers=owner.headers, data=data, files={"firmware": ("firmware.bin", image)}
        )
        assert response.status_code == 201
    assert sample(client, "otaship_deploys_total", kind="plain") == 1
    assert sample(client, "otaship_upload_bytes_total") == 2 * len(image)
    # A rejected upload was still received.
    response = client.post(
        "/v1/ota/group",
        headers=owner.headers,
        data={**data, "token": "x" * 16},
        files={"firmware": ("firmware.bin", image)},
    )
    assert response.status_code == 400
    assert sample(client, "otaship_upload_bytes_total") == 3 * len(image)
    assert sample(client, "otaship_deploys_total", kind="plain") == 1


def test_canary_deploys_promotions_and_rollouts_by_state(
    client: TestClient, fleet: Fleet, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner, name="fleet")
    canary = fleet.group(owner, name="canary", parent=group)
    rest = fleet.group(owner, name="rest", parent=group)
    bench = fleet.device(canary, name="bench", firmware_version="1.0.0")
    fleet.device(rest, name="field", firmware_version="1.0.0")

    response = client.post(
        "/v1/ota/group",
        headers=owner.headers,
        data={"group": group.id, "token": group.token, "version": "1.1.0", "canary": canary.id},
        files={"firmware": ("firmware.bin", build_image("1.1.0"))},
    )
    assert response.status_code == 201, response.text
    rollout_id = response.json()["rollout"]["id"]
    assert sample(client, "otaship_deploys_total", kind="canary") == 1
    assert sample(client, "otaship_deploys_total", kind="plain") == 0
    states = {s.labels["state"]: s.value for s in scrape(client)["otaship_rollouts"]}
    assert states == {"canary": 1, "fleet": 0, "complete": 0, "halted": 0, "aborted": 0, "rolled_back": 0}

    ReportIngester(services.engine).ingest_messages(
        [(f"/{owner.user.mqtt_user}/devices/{bench.id}/status", json.dumps({"fw_version": "1.1.0"}).encode())]
    )
    background = client.app.state.background  # type: ignore[attr-defined]
    # The app's own runner, now rather than at its next tick; if its loop holds
    # the rollout at this moment, that pass promotes it instead.
    background.runner.evaluate_all()
    eventually(lambda: sample(client, "otaship_deploys_total", kind="promotion") == 1, "the promotion", 10)
    assert sample(client, "otaship_rollouts", state="fleet") == 1
    assert sample(client, "otaship_rollouts", state="canary") == 0

    # A replica that read the rollout list before the promotion still sees "canary"
    # there; it must not count the promotion a second time.
    monkeypatch.setattr(rollout_runner, "active_rollout_states", lambda session: [(rollout_id, "canary")])
    RolloutRunner(services.engine, notify=True, metrics=metrics_of(client)).evaluate_all()
    assert sample(client, "otaship_deploys_total", kind="promotion") == 1

    assert client.post(f"/v1/rollouts/{rollout_id}/abort", headers=owner.headers).status_code == 200
    assert sample(client, "otaship_rollouts", state="aborted") == 1
    assert sample(client, "otaship_rollouts", state="fleet") == 0


def test_a_broken_database_still_scrapes_and_counts_the_500(settings: Settings, services: Services) -> None:
    engine = create_engine(f"sqlite:///{settings.data_dir / 'no-such-dir' / 'x.db'}")
    broken = Services(
        settings=settings, engine=engine, storage=services.storage, catalog=FirmwareCatalog(engine)
    )
    with TestClient(create_app(settings, services=broken), raise_server_exceptions=False) as client:
        response = client.get("/v1/ota/group", headers={"Authorization": "Bearer osk_whatever"})
        assert response.status_code == 500
        families = scrape(client)
    engine.dispose()
    assert "otaship_rollouts" not in families
    assert (
        sample(client, "otaship_http_requests_total", method="GET", route="/v1/ota/group", status="500") == 1
    )


@pytest.fixture
def embedded_client(settings: Settings, services: Services) -> Any:
    settings = settings.with_overrides(mqtt_url=f"embedded://127.0.0.1:{free_port()}")
    services = dataclasses.replace(services, settings=settings, notify=True)
    with TestClient(create_app(settings, services=services)) as client:
        eventually(lambda: client.get("/readyz").status_code == 200, "the MQTT link", 10)
        yield client


def test_triggers_and_device_reports_over_the_embedded_broker(
    embedded_client: TestClient, fleet: Fleet
) -> None:
    client = embedded_client
    owner = fleet.owner()
    group = fleet.group(owner)
    device = fleet.device(group, name="dev", firmware_version="0.9.0")
    deploy(client, owner, group, "1.0.0")
    eventually(lambda: sample(client, "otaship_triggers_published_total") == 1, "the trigger", 10)

    port = int(client.app.state.services.settings.mqtt_url.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    sender.username_pw_set(owner.user.mqtt_user, owner.mqtt_password)
    sender.connect("127.0.0.1", port)
    sender.loop_start()
    try:
        base = f"/{owner.user.mqtt_user}/devices"
        for topic, payload in [
            (f"{base}/{device.id}/status", {"fw_version": "1.0.0", "uptime": 5}),
            (f"{base}/{device.id}/update-response", {"code": 201}),
            (f"{base}/unregistered/status", {"fw_version": "1.0.0"}),
            (f"{base}/{device.id}/status", "not json"),
        ]:
            body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            sender.publish(topic, body, qos=1).wait_for_publish(5)
    finally:
        sender.loop_stop()
        sender.disconnect()

    def counts() -> dict[tuple[str, str], float]:
        return {
            (kind, result): sample(client, "otaship_device_reports_total", kind=kind, result=result)
            for kind in ("status", "update-response")
            for result in ("accepted", "dropped")
        }

    expected = {
        ("status", "accepted"): 1,
        ("status", "dropped"): 2,
        ("update-response", "accepted"): 1,
        ("update-response", "dropped"): 0,
    }
    eventually(lambda: counts() == expected, f"the reports (now {counts()})", 10)
