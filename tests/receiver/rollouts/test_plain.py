"""A plain deploy follows the devices it triggered: reports move their
outcomes, the clock retries the failed ones through the outbox and ends the
following; a newer deploy ends it at once. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time

from sqlmodel import col, select

from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.models import DeployDevice, Device, Group, PlainDeploy, TriggerMessage
from otaship.receiver.ids import utcnow
from otaship.receiver.metrics import Metrics
from otaship.receiver.mqtt.reports import ReportIngester
from otaship.receiver.rollouts.clock import RolloutRunner
from otaship.receiver.rollouts.deploy import StoredFirmware, deploy_firmware
from otaship.receiver.rollouts.policy import RetryPolicy
from otaship.receiver.services import Services
from tests.conftest import Fleet, Owner


def firmware(version: str) -> StoredFirmware:
    digest = version.encode().hex().ljust(64, "0")[:64]
    return StoredFirmware(object_key=f"objects/{digest}", sha256=digest, md5=digest[:32], size=1000)


def deploy(services: Services, group: Group, version: str) -> str:
    with write_session(services.engine) as session:
        result = deploy_firmware(
            session=session, group_id=group.id, version=version, firmware=firmware(version), now=utcnow()
        )
        deployment_id = session.exec(
            select(PlainDeploy.deployment_id).order_by(col(PlainDeploy.started_at).desc())
        ).first()
    assert result.deployed and deployment_id is not None
    return deployment_id


def rows(services: Services, deployment_id: str) -> dict[str, tuple[str, int | None, int]]:
    """Each device's (outcome, code, retries)."""
    with read_session(services.engine) as session:
        return {
            r.device_id: (r.outcome, r.code, r.retries)
            for r in session.exec(
                select(DeployDevice).where(col(DeployDevice.deployment_id) == deployment_id)
            )
        }


def following(services: Services, deployment_id: str) -> PlainDeploy:
    with read_session(services.engine) as session:
        plain = session.get(PlainDeploy, deployment_id)
        assert plain is not None
        return plain


def triggers(services: Services) -> list[str]:
    with read_session(services.engine) as session:
        return list(session.exec(select(TriggerMessage.topic).order_by(col(TriggerMessage.id))))


def say(
    ingester: ReportIngester, owner: Owner, device: Device, *reports: tuple[str, dict[str, object]]
) -> None:
    mqtt_user = owner.user.mqtt_user
    assert ingester.ingest_messages(
        (f"/{mqtt_user}/devices/{device.id}/{kind}", json.dumps(body).encode()) for kind, body in reports
    )


def tick_until(runner: RolloutRunner, condition: object, timeout: float = 10) -> None:
    """Clock passes until `condition()` holds: a retry is due a few milliseconds after its failure."""
    deadline = time.monotonic() + timeout
    while True:
        runner.evaluate_all()
        if condition():  # type: ignore[operator]
            return
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.01)


def test_a_failed_device_is_retried_until_it_succeeds_or_runs_out_of_attempts(
    services: Services, fleet: Fleet
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    updates, fails, current = (
        fleet.device(group, name=name, firmware_version=version)
        for name, version in (("updates", "1.0.0"), ("fails", "1.0.0"), ("current", "1.1.0"))
    )
    metrics = Metrics()
    ingester = ReportIngester(services.engine, metrics=metrics)
    runner = RolloutRunner(
        services.engine,
        notify=True,
        metrics=metrics,
        retry=RetryPolicy(attempts=2, backoff=0.005, dark_after=600),
    )
    deployment_id = deploy(services, group, "1.1.0")
    topic = f"/{owner.user.mqtt_user}/groups/{group.id}/update-trigger"
    assert triggers(services) == [topic]
    assert rows(services, deployment_id) == {
        updates.id: ("pending", None, 0),
        fails.id: ("pending", None, 0),
        current.id: ("succeeded", None, 0),
    }

    say(ingester, owner, updates, ("status", {"fw_version": "1.0.0", "uptime": 50}))
    say(ingester, owner, updates, ("update-response", {"code": 200}), ("update-response", {"code": 201}))
    say(ingester, owner, updates, ("status", {"fw_version": "1.1.0", "uptime": 1}))
    say(ingester, owner, fails, ("update-response", {"code": 200}), ("update-response", {"code": 203}))
    assert rows(services, deployment_id)[updates.id] == ("succeeded", 201, 0)
    assert rows(services, deployment_id)[fails.id] == ("failed", 203, 0)

    for attempt in (1, 2):
        tick_until(runner, lambda n=attempt: rows(services, deployment_id)[fails.id][2] == n)
        assert rows(services, deployment_id)[fails.id] == ("pending", 203, attempt)
        assert triggers(services) == [topic] * (1 + attempt)
        say(ingester, owner, fails, ("update-response", {"code": 200}), ("update-response", {"code": 203}))

    tick_until(runner, lambda: following(services, deployment_id).ended_at is not None)
    assert rows(services, deployment_id) == {
        updates.id: ("succeeded", 201, 0),
        fails.id: ("failed", 203, 2),
        current.id: ("succeeded", None, 0),
    }
    assert following(services, deployment_id).reason == "all 3 device(s) reported"
    assert len(triggers(services)) == 3
    sample = metrics.registry.get_sample_value
    assert (sample("otaship_device_retries_total"), sample("otaship_retry_triggers_total")) == (2, 2)


def test_a_newer_deploy_ends_the_following_of_the_older(services: Services, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    device = fleet.device(group, name="slow", firmware_version="1.0.0")
    first = deploy(services, group, "1.1.0")
    second = deploy(services, group, "1.2.0")
    plain = following(services, first)
    assert plain.ended_at is not None
    assert plain.reason is not None and plain.reason.startswith(f"superseded by deployment {second} of 1.2.0")
    assert rows(services, first) == {device.id: ("stopped", None, 0)}
    assert following(services, second).ended_at is None
    assert rows(services, second) == {device.id: ("pending", None, 0)}


def test_without_mqtt_nothing_is_followed(services: Services, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    fleet.device(group, name="d", firmware_version="1.0.0")
    with write_session(services.engine) as session:
        deploy_firmware(
            session=session,
            group_id=group.id,
            version="1.1.0",
            firmware=firmware("1.1.0"),
            notify=False,
            now=utcnow(),
        )
    with read_session(services.engine) as session:
        assert session.exec(select(PlainDeploy)).all() == []


def test_two_replicas_retry_a_device_once(services: Services, fleet: Fleet) -> None:
    """Two clocks (replicas) on one database, passing at the same moments: the
    plain deploy's row lock lets one of them retry, and the other skips it."""
    owner = fleet.owner()
    group = fleet.group(owner)
    device = fleet.device(group, name="fails", firmware_version="1.0.0")
    policy = RetryPolicy(attempts=3, backoff=0.05, dark_after=600)
    runners = [RolloutRunner(services.engine, notify=True, retry=policy) for _ in range(2)]
    deployment_id = deploy(services, group, "1.1.0")
    say(ReportIngester(services.engine), owner, device, ("update-response", {"code": 203}))
    runners[0].evaluate_all()
    assert rows(services, deployment_id)[device.id] == ("retrying", 203, 0)

    def both() -> None:
        start = threading.Barrier(2)

        def run(runner: RolloutRunner) -> None:
            start.wait(5)
            runner.evaluate_all()

        workers = [threading.Thread(target=run, args=(r,)) for r in runners]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(10)

    deadline = time.monotonic() + 10
    while rows(services, deployment_id)[device.id][2] == 0:
        assert time.monotonic() < deadline, "never retried"
        both()
    for _ in range(5):
        both()
    assert rows(services, deployment_id)[device.id] == ("pending", 203, 1)
    assert len(triggers(services)) == 2


def test_a_device_silent_after_its_201_is_retried_once_dark_after_passed(
    services: Services, fleet: Fleet
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    device = fleet.device(group, name="dark", firmware_version="1.0.0")
    # 2 s of silence, after a download of the 1,000-byte image at 1,000 bytes a second.
    retry = RetryPolicy(attempts=1, backoff=0.001, dark_after=2, download_rate=1000)
    runner = RolloutRunner(services.engine, notify=True, retry=retry)
    deployment_id = deploy(services, group, "1.1.0")
    say(ReportIngester(services.engine), owner, device, ("update-response", {"code": 201}))
    started = time.monotonic()
    runner.evaluate_all()
    # Still within the window: a download and a reboot take a while.
    assert rows(services, deployment_id)[device.id] == ("pending", 201, 0)
    tick_until(runner, lambda: rows(services, deployment_id)[device.id][2] == 1)
    assert time.monotonic() - started >= 3
    assert rows(services, deployment_id)[device.id] == ("pending", 201, 1)
    assert len(triggers(services)) == 2
    # Silent again on its last attempt: it stays pending, and is not retried again.
    say(ReportIngester(services.engine), owner, device, ("update-response", {"code": 201}))
    # Not a wait for something to happen: the window must pass for the check that nothing does.
    time.sleep(3.1)
    runner.evaluate_all()
    assert rows(services, deployment_id)[device.id] == ("pending", 201, 1)
    assert len(triggers(services)) == 2
