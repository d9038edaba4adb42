"""Storing report batches when something fails: halves down to the one bad report,
or the whole batch kept while the database is away."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from sqlalchemy import create_engine

from otaship.receiver.db.engine import read_session
from otaship.receiver.db.models import Device
from otaship.receiver.metrics import Metrics
from otaship.receiver.mqtt import reports
from otaship.receiver.mqtt.reports import Report, ReportIngester, split_on_failure
from otaship.receiver.services import Services
from tests.conftest import Fleet


def report(n: int) -> Report:
    return Report("user", f"dev-{n}", "status", fw_version="1.0.0")


def test_a_failed_part_is_halved_down_to_one_report_then_dropped() -> None:
    batch = [report(n) for n in range(5)]
    assert split_on_failure(batch, database_up=True) == [batch[:2], batch[2:]]
    assert split_on_failure(batch[:1], database_up=True) == []
    # The database away: nothing is dropped, whatever the size.
    assert split_on_failure(batch, database_up=False) is None
    assert split_on_failure(batch[:1], database_up=False) is None


def dropped(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("otaship_device_reports_dropped_total", {"reason": reason})
    assert value is not None, generate_latest(metrics.registry).decode()
    return value


def test_reports_wait_in_memory_while_the_database_is_away(
    services: Services, fleet: Fleet, tmp_path: Path
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    devices = [fleet.device(group, name=f"d{n}", firmware_version="1.0.0") for n in range(3)]
    messages = [
        (f"/{owner.user.mqtt_user}/devices/{d.id}/status", json.dumps({"fw_version": "1.1.0"}).encode())
        for d in devices
    ]
    metrics = Metrics()
    away = create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    ingester = ReportIngester(away, metrics=metrics)
    try:
        assert ingester.ingest_messages(messages) is False
        assert [r.device_id for r in ingester._queue] == [d.id for d in devices]
        # Back: the same reports, in their order, and nothing counted twice.
        ingester.engine = services.engine
        assert ingester.ingest_messages([]) is True
    finally:
        away.dispose()
    assert not ingester._queue
    with read_session(services.engine) as session:
        assert {session.get(Device, d.id).firmware_version for d in devices} == {"1.1.0"}  # type: ignore[union-attr]
    assert (ingester.accepted, ingester.dropped) == (3, 0)
    assert (
        metrics.registry.get_sample_value(
            "otaship_device_reports_total", {"kind": "status", "result": "accepted"}
        )
        == 3
    )
    assert all(
        dropped(metrics, reason) == 0 for reason in ("invalid", "not_owned", "queue_full", "store_failed")
    )


def test_reports_past_the_queue_bound_are_dropped_and_counted(
    services: Services, fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reports, "MAX_QUEUE", 2)
    owner = fleet.owner()
    device = fleet.device(fleet.group(owner), name="d")
    topic = f"/{owner.user.mqtt_user}/devices/{device.id}/status"
    metrics = Metrics()
    away = create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    try:
        ingester = ReportIngester(away, metrics=metrics)
        for version in ("1.0.1", "1.0.2"):
            ingester.submit(topic, json.dumps({"fw_version": version}).encode())
        batch = ingester._take()
        ingester.submit(topic, b'{"fw_version": "1.0.3"}')
        assert ingester.store(batch) is False
        ingester.submit(topic, b'{"fw_version": "1.0.4"}')
    finally:
        away.dispose()
    # The oldest are kept, in order: 1.0.3 made way for the batch put back,
    # 1.0.4 found the queue full. Both are counted.
    assert [r.fw_version for r in ingester._queue] == ["1.0.1", "1.0.2"]
    assert dropped(metrics, "queue_full") == 2
