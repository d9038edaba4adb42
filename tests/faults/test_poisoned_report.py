"""One tenant's poisoned status report must not cost another tenant theirs.

The real app on a PostgreSQL database of its own, with its embedded MQTT
broker; owners publish over MQTT as their devices do. Owner B publishes a
report for B's own device that PostgreSQL cannot store, in the same window as
owner A's ten valid reports, so that all eleven reach the ingester before it
writes: the test holds the row lock of A's first device, the ingester's first
batch waits on it, and the rest queue up behind it into one batch.

Two kinds of poison: a NUL in a string (PostgreSQL refuses it in text; it
must be caught before it is queued), and a value only the database refuses
(a CHECK constraint the test adds: nothing before the database can know),
where the batch is stored again without it. Either way every one of A's
reports is stored, and the dropped one is counted by its reason in /metrics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlmodel import col, select
from starlette.testclient import TestClient

from otaship.receiver.app import build_services, create_app
from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.models import Device
from otaship.receiver.mqtt.reports import ReportIngester
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from tests.conftest import Fleet, Owner
from tests.postgres import OwnDatabase
from tests.services import free_port
from tests.waiting import eventually

pytestmark = pytest.mark.postgres

VALID_REPORTS = 10
REPORTED = "2.0.0"


@dataclass
class Tenants:
    client: TestClient
    services: Services
    database: OwnDatabase
    mqtt_port: int
    a: Owner
    b: Owner
    a_devices: list[Device]
    b_device: Device
    received: list[str]

    @property
    def ingester(self) -> ReportIngester:
        ingester: ReportIngester = self.client.app.state.background.ingester  # type: ignore[attr-defined]
        return ingester


@pytest.fixture
def tenants(
    own_postgres_database: OwnDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Tenants]:
    received: list[str] = []
    submit = ReportIngester.submit

    def counted(self: ReportIngester, topic: str, payload: bytes) -> None:
        # Every message that reaches the ingester, whatever it then makes of it.
        received.append(topic)
        submit(self, topic, payload)

    monkeypatch.setattr(ReportIngester, "submit", counted)
    port = free_port()
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=own_postgres_database.url,
        mqtt_url=f"embedded://127.0.0.1:{port}",
    )
    services = build_services(settings)
    fleet = Fleet(services)
    a, b = fleet.owner(), fleet.owner()
    a_group, b_group = fleet.group(a, name="a"), fleet.group(b, name="b")
    a_devices = [fleet.device(a_group, name=f"a{n}", firmware_version="1.0.0") for n in range(VALID_REPORTS)]
    b_device = fleet.device(b_group, name="b0", firmware_version="1.0.0")
    try:
        with TestClient(create_app(settings, services=services)) as client:
            eventually(lambda: client.get("/readyz").status_code == 200, "the MQTT link")
            yield Tenants(client, services, own_postgres_database, port, a, b, a_devices, b_device, received)
    finally:
        services.storage.close()
        services.engine.dispose()


def publisher(t: Tenants, owner: Owner) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{owner.user.mqtt_user}-tool", protocol=mqtt.MQTTv311
    )
    client.username_pw_set(owner.user.mqtt_user, owner.mqtt_password)
    client.connect("127.0.0.1", t.mqtt_port)
    client.loop_start()
    return client


def publish(client: mqtt.Client, owner: Owner, device: Device, body: dict[str, Any]) -> None:
    topic = f"/{owner.user.mqtt_user}/devices/{device.id}/status"
    client.publish(topic, json.dumps(body), qos=1).wait_for_publish(10)


def dropped(t: Tenants, reason: str) -> float:
    scrape = t.client.get("/metrics").text
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            if sample.name == "otaship_device_reports_dropped_total" and sample.labels == {"reason": reason}:
                return float(sample.value)
    raise AssertionError(f"no otaship_device_reports_dropped_total{{reason={reason!r}}} in /metrics")


def versions(t: Tenants) -> dict[str, str | None]:
    with read_session(t.services.engine) as session:
        return dict(session.exec(select(Device.id, Device.firmware_version)).all())


def report_in_one_window(t: Tenants, poison: dict[str, Any]) -> None:
    """A's first report, held up by a row lock; then B's poison and A's nine others behind it."""
    a_client, b_client = publisher(t, t.a), publisher(t, t.b)
    try:
        with write_session(t.services.engine) as session:
            first = t.a_devices[0].id
            session.exec(select(Device).where(col(Device.id) == first).with_for_update()).one()
            publish(a_client, t.a, t.a_devices[0], {"fw_version": REPORTED, "uptime": 5})
            eventually(lambda: t.database.waiting_on_locks() == 1, "the ingester to wait on the row lock")
            publish(b_client, t.b, t.b_device, poison)
            for device in t.a_devices[1:]:
                publish(a_client, t.a, device, {"fw_version": REPORTED, "uptime": 5})
            eventually(lambda: len(t.received) == VALID_REPORTS + 1, "every report to reach the ingester")
        # The lock is gone with its transaction: the held batch goes, then the rest in one.
        eventually(
            lambda: (
                t.database.waiting_on_locks() == 0 and not t.ingester._queue and t.ingester._idle.is_set()
            ),
            "the ingester to store what it has",
        )
    finally:
        for client in (a_client, b_client):
            client.disconnect()
            client.loop_stop()


@pytest.mark.parametrize(
    ("poison", "reason", "constraint"),
    [
        pytest.param({"fw_version": "9.9.9\u0000", "uptime": 5}, "invalid", None, id="nul-in-a-string"),
        pytest.param(
            {"fw_version": "6.6.6", "uptime": 5},
            "store_failed",
            "ALTER TABLE devices ADD CONSTRAINT no_666 CHECK (firmware_version IS DISTINCT FROM '6.6.6')",
            id="refused-by-the-database",
        ),
    ],
)
def test_a_poisoned_report_costs_no_other_tenant_a_report(
    tenants: Tenants, poison: dict[str, Any], reason: str, constraint: str | None
) -> None:
    t = tenants
    if constraint is not None:
        with write_session(t.services.engine) as session:
            session.execute(text(constraint))

    report_in_one_window(t, poison)

    stored = versions(t)
    lost = sum(1 for device in t.a_devices if stored[device.id] != REPORTED)
    print(
        f"\n{reason}: owner A's reports sent {VALID_REPORTS}, lost {lost}; "
        f"B's poisoned report dropped as {reason}: {dropped(t, reason) if lost == 0 else 'n/a'}"
    )
    assert lost == 0, f"{lost} of owner A's {VALID_REPORTS} reports were lost"
    assert stored[t.b_device.id] == "1.0.0"
    assert dropped(t, reason) == 1
    others = {"invalid", "not_owned", "queue_full", "store_failed"} - {reason}
    assert {other: dropped(t, other) for other in others} == dict.fromkeys(others, 0)
    # The receiver goes on: B's next, valid report is stored.
    b_client = publisher(t, t.b)
    try:
        publish(b_client, t.b, t.b_device, {"fw_version": "1.0.1", "uptime": 6})
    finally:
        b_client.disconnect()
        b_client.loop_stop()
    eventually(lambda: versions(t)[t.b_device.id] == "1.0.1", "B's next report to be stored")
