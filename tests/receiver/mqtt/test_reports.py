"""receiver/mqtt/reports.py on its own: what a message becomes, who may speak for a
device, and which reports cost a write. On both databases, without a broker."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from otaship.protocol import RESPONSE, STATUS, report_topic, response_topic, status_topic
from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.models import Device
from otaship.receiver.ids import utcnow
from otaship.receiver.metrics import Metrics
from otaship.receiver.mqtt.reports import (
    LAST_SEEN_RESOLUTION,
    BadReport,
    Report,
    ReportIngester,
    parse_report,
)
from otaship.receiver.services import Services
from tests.conftest import Fleet

USER = "5e10fc5e77ba18070312e171"


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def counted(metrics: Metrics, kind: str, result: str) -> float:
    return sample(metrics, "otaship_device_reports_total", kind=kind, result=result)


def dropped(metrics: Metrics, reason: str) -> float:
    return sample(metrics, "otaship_device_reports_dropped_total", reason=reason)


def stored(services: Services, device_id: str) -> tuple[str | None, int | None, bool]:
    """A device row's version, last code, and whether it was ever seen."""
    with read_session(services.engine) as session:
        device = session.get(Device, device_id)
        assert device is not None
        return device.firmware_version, device.last_code, device.last_seen is not None


def without_time(report: Report) -> tuple[object, ...]:
    return (report.mqtt_user, report.device_id, report.kind, report.fw_version, report.uptime, report.code)


# --- parse_report ---------------------------------------------------------------------------


def test_a_status_message_becomes_a_report() -> None:
    before = utcnow()
    report = parse_report(
        status_topic(USER, "dev-1"), b'{"battery":87,"uptime":65,"core_version":"1.0.0","fw_version":"1.2.7"}'
    )
    assert without_time(report) == (USER, "dev-1", STATUS, "1.2.7", 65.0, None)
    assert type(report.uptime) is float
    assert before <= report.at <= utcnow()


def test_an_update_response_becomes_a_report() -> None:
    report = parse_report(response_topic(USER, "dev-1"), b'{"code": 203}')
    assert without_time(report) == (USER, "dev-1", RESPONSE, None, None, 203)


@pytest.mark.parametrize(
    ("topic", "payload", "message"),
    [
        (report_topic("alice", "dev-1", "other"), b"{}", "not a report topic: '/alice/devices/dev-1/other'"),
        (
            status_topic("alice", "dev 1"),
            b"{}",
            "not a user and device id in the topic: '/alice/devices/dev 1/status'",
        ),
        # Quoted, and cut short.
        (report_topic(USER, "dev-1", "other"), b"{}", f"not a report topic: '/{USER}/device'"),
        (status_topic("", "dev-1"), b"{}", "not a user and device id in the topic: '//devices/dev-1/status'"),
        (status_topic(USER, "dev-1"), b"{}", "fw_version must be a string of 1 to 64 characters, not 'None'"),
        (
            status_topic(USER, "dev-1"),
            b'{"fw_version": "1.0", "uptime": -5}',
            "uptime must be a number of seconds from 0 to 3153600000, not '-5'",
        ),
        (
            response_topic(USER, "dev-1"),
            b'{"code": 204}',
            "code must be one of 200, 201, 202, 203, not '204'",
        ),
        (
            response_topic(USER, "dev-1"),
            b'{"code": [201]}',
            "code must be one of 200, 201, 202, 203, not list",
        ),
        (response_topic(USER, "dev-1"), b'"201"', "payload is not a JSON object"),
    ],
)
def test_what_a_refusal_says(topic: str, payload: bytes, message: str) -> None:
    with pytest.raises(BadReport) as refused:
        parse_report(topic, payload)
    assert str(refused.value) == message


# --- submit: parsed on paho's thread, queued, or dropped and counted -----------------------


def test_submit_queues_what_parses_and_counts_what_does_not(services: Services) -> None:
    metrics = Metrics()
    ingester = ReportIngester(services.engine, metrics=metrics)
    ingester.submit(status_topic(USER, "dev-1"), b'{"fw_version": "1.0.0", "uptime": 3}')
    ingester.submit(status_topic(USER, "dev-1"), b"{not json")
    ingester.submit(response_topic(USER, "dev-1"), b'{"code": 500}')
    ingester.submit(report_topic(USER, "dev-1", "other"), b"{}")
    ingester.submit(response_topic(USER, "dev-2"), b'{"code": 202}')

    assert [without_time(r) for r in ingester._take()] == [
        (USER, "dev-1", STATUS, "1.0.0", 3.0, None),
        (USER, "dev-2", RESPONSE, None, None, 202),
    ]
    assert (ingester.accepted, ingester.dropped) == (0, 3)
    assert dropped(metrics, "invalid") == 3
    assert counted(metrics, "status", "dropped") == 1
    assert counted(metrics, "update-response", "dropped") == 1
    assert counted(metrics, "unknown", "dropped") == 1
    # Accepted only once stored.
    assert counted(metrics, "status", "accepted") == 0


# --- ingest: the owner's login only, and a write only when something changed ----------------


def test_only_the_owners_login_speaks_for_its_devices(services: Services, fleet: Fleet) -> None:
    alice, bob = fleet.owner(), fleet.owner()
    device = fleet.device(fleet.group(alice), name="kitchen", firmware_version="1.0.0")
    alice_user, bob_user = alice.user.mqtt_user, bob.user.mqtt_user
    metrics = Metrics()
    ingester = ReportIngester(services.engine, metrics=metrics)

    assert (
        ingester.ingest_messages(
            [
                (status_topic(bob_user, device.id), b'{"fw_version": "6.6.6"}'),
                (response_topic(bob_user, device.id), b'{"code": 203}'),
                (status_topic(alice_user, "no-such-device"), b'{"fw_version": "1.0.0"}'),
                (status_topic("nobody", device.id), b'{"fw_version": "6.6.6"}'),
            ]
        )
        is True
    )
    assert stored(services, device.id) == ("1.0.0", None, False)
    assert (ingester.accepted, ingester.dropped, ingester.writes) == (0, 4, 0)
    assert dropped(metrics, "not_owned") == 4

    assert (
        ingester.ingest_messages(
            [
                (status_topic(alice_user, device.id), b'{"fw_version": "1.1.0", "uptime": 2}'),
                (response_topic(alice_user, device.id), b'{"code": 202}'),
            ]
        )
        is True
    )
    assert stored(services, device.id) == ("1.1.0", 202, True)
    assert (ingester.accepted, ingester.dropped, ingester.writes) == (2, 4, 1)
    assert counted(metrics, "status", "accepted") == 1
    assert counted(metrics, "update-response", "accepted") == 1
    assert counted(metrics, "status", "dropped") == 3
    assert counted(metrics, "update-response", "dropped") == 1


def test_a_report_that_changes_nothing_costs_no_write(services: Services, fleet: Fleet) -> None:
    owner = fleet.owner()
    device = fleet.device(fleet.group(owner), name="d", firmware_version="1.0.0")
    user = owner.user.mqtt_user
    ingester = ReportIngester(services.engine)
    at = utcnow()

    def status(version: str, seconds: float) -> Report:
        return Report(
            user, device.id, STATUS, fw_version=version, uptime=seconds, at=at + timedelta(seconds=seconds)
        )

    def response(code: int, seconds: float) -> Report:
        return Report(user, device.id, RESPONSE, code=code, at=at + timedelta(seconds=seconds))

    steps: list[tuple[Report, int, tuple[str | None, int | None, bool]]] = [
        (status("1.0.0", 0), 1, ("1.0.0", None, True)),  # first seen
        (status("1.0.0", 5), 1, ("1.0.0", None, True)),  # nothing new
        (response(200, 6), 2, ("1.0.0", 200, True)),
        (response(200, 7), 2, ("1.0.0", 200, True)),
        (status("1.1.0", 8), 3, ("1.1.0", 200, True)),
        # Unchanged, but last_seen is getting stale.
        (status("1.1.0", LAST_SEEN_RESOLUTION.total_seconds()), 3, ("1.1.0", 200, True)),
        (status("1.1.0", 8 + LAST_SEEN_RESOLUTION.total_seconds()), 4, ("1.1.0", 200, True)),
    ]
    for report, writes, row in steps:
        ingester.ingest([report])
        assert (ingester.writes, stored(services, device.id)) == (writes, row), report
    with read_session(services.engine) as session:
        seen = session.get(Device, device.id)
        assert seen is not None and seen.last_seen is not None
        assert abs(
            seen.last_seen.replace(tzinfo=None) - (at + timedelta(seconds=68)).replace(tzinfo=None)
        ) < (timedelta(milliseconds=1))
    assert ingester.accepted == len(steps)


def test_two_workers_sharing_a_devices_reports_leave_its_row_on_the_version_it_reports_last(
    services: Services, fleet: Fleet
) -> None:
    """A shared subscription splits one device's reports between the workers
    (and replicas): the version one of them remembers may be older than its row."""
    owner = fleet.owner()
    device = fleet.device(fleet.group(owner), name="d", firmware_version="1.0.0")
    user = owner.user.mqtt_user
    first, second = ReportIngester(services.engine), ReportIngester(services.engine)
    at = utcnow()

    def status(version: str, seconds: float) -> Report:
        return Report(
            user, device.id, STATUS, fw_version=version, uptime=seconds, at=at + timedelta(seconds=seconds)
        )

    first.ingest([status("1.0.0", 0)])
    second.ingest([status("1.1.0", 1)])  # updated: the other worker's report
    assert stored(services, device.id) == ("1.1.0", None, True)
    # Rolled back: this worker last saw 1.0.0, but the row says 1.1.0.
    first.ingest([status("1.0.0", 2)])
    assert stored(services, device.id) == ("1.0.0", None, True)
    assert (first.writes, second.writes) == (2, 1)
    # A device deleted since is no longer taken for registered.
    with write_session(services.engine) as session:
        row = session.get(Device, device.id)
        assert row is not None
        session.delete(row)
    first.ingest([status("1.0.0", 3)])
    assert (first.accepted, first.dropped) == (2, 1)


def test_a_new_boot_is_written_at_once_for_the_worker_that_takes_the_next_201(
    services: Services, fleet: Fleet
) -> None:
    """The boot before a 201 tells a device that booted back on the old
    version from one still downloading; a shared subscription may give the
    201 to a worker that never saw a status of the device, so the row keeps
    the boot. A status of the same boot costs no write."""
    owner = fleet.owner()
    device = fleet.device(fleet.group(owner), name="d", firmware_version="1.0.0")
    user = owner.user.mqtt_user
    first = ReportIngester(services.engine)
    at = utcnow()

    def status(uptime: float, seconds: float) -> Report:
        return Report(
            user, device.id, STATUS, fw_version="1.0.0", uptime=uptime, at=at + timedelta(seconds=seconds)
        )

    def boot() -> timedelta:
        """The row's boot, from `at`."""
        with read_session(services.engine) as session:
            row = session.get(Device, device.id)
            assert row is not None and row.booted_at is not None
            return row.booted_at.replace(tzinfo=None) - at.replace(tzinfo=None)

    first.ingest([status(100, 100)])
    assert (first.writes, boot()) == (1, timedelta(0))
    # The same boot, seen a few seconds apart: no write.
    first.ingest([status(104, 105), status(110, 110)])
    assert (first.writes, boot()) == (1, timedelta(0))
    # Rebooted on the same version: written at once.
    first.ingest([status(1, 200)])
    assert (first.writes, boot()) == (2, timedelta(seconds=199))
    # Another worker takes a status of it: the same boot, nothing to write.
    second = ReportIngester(services.engine)
    second.ingest([status(3, 202)])
    assert (second.writes, boot()) == (0, timedelta(seconds=199))


def test_a_batch_mixes_owners_and_kinds_in_one_transaction(services: Services, fleet: Fleet) -> None:
    owners = [fleet.owner() for _ in range(3)]
    devices = [
        fleet.device(fleet.group(o), name=f"d{n}", firmware_version="1.0.0") for n, o in enumerate(owners)
    ]
    messages = []
    for owner, device in zip(owners, devices, strict=True):
        messages.append(
            (status_topic(owner.user.mqtt_user, device.id), json.dumps({"fw_version": "2.0.0"}).encode())
        )
        messages.append((response_topic(owner.user.mqtt_user, device.id), b'{"code": 201}'))
    ingester = ReportIngester(services.engine)
    assert ingester.ingest_messages(messages) is True
    assert [stored(services, d.id) for d in devices] == [("2.0.0", 201, True)] * 3
    assert (ingester.accepted, ingester.dropped, ingester.writes) == (6, 0, 3)
