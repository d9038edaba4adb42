"""Retries inside a rollout stage and a plain deploy, with reports fed straight
into the ingester and the clock passed by hand, on SQLite and PostgreSQL:
a device that comes back on another version is reached again, and two clocks
(replicas) on one database retry a rollout's device once."""

from __future__ import annotations

import threading
import time

from sqlmodel import col, select

from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.groups import lock_tree
from otaship.receiver.db.models import Device, Group, Rollout, RolloutDevice, TriggerMessage
from otaship.receiver.ids import utcnow
from otaship.receiver.mqtt.reports import ReportIngester
from otaship.receiver.rollouts.clock import RolloutRunner
from otaship.receiver.rollouts.policy import Policy, RetryPolicy
from otaship.receiver.rollouts.store import start_rollout
from otaship.receiver.services import Services
from tests.conftest import Fleet, Owner
from tests.receiver.rollouts.test_plain import deploy, firmware, rows, say, tick_until, triggers


def start(services: Services, group: Group, canary: Group, version: str = "1.1.0") -> str:
    """A canary rollout, started as a POST with `canary` starts it."""
    with write_session(services.engine) as session:
        assert lock_tree(session=session, group_id=group.id)
        started = start_rollout(
            session=session,
            group=group,
            canary=canary,
            version=version,
            firmware=firmware(version),
            # Two devices, one failure tolerated: a retry, not a halt, decides.
            policy=Policy(error_threshold=1, canary_timeout=600),
            commit=None,
            notify=True,
            now=utcnow(),
        )
        return started.rollout.id


def canary_rows(services: Services, rollout_id: str) -> dict[str, tuple[str, int | None, int]]:
    """Each canary device's (outcome, code, retries)."""
    with read_session(services.engine) as session:
        return {
            r.device_id: (r.outcome, r.code, r.retries)
            for r in session.exec(select(RolloutDevice).where(col(RolloutDevice.rollout_id) == rollout_id))
        }


def boots_back_on_the_old_version(ingester: ReportIngester, owner: Owner, device: Device) -> None:
    """What ESP-IDF's app rollback looks like from the receiver: a 201, then a
    fresh boot (uptime reset) still on the version it ran before. Uptime 0:
    the reports come a moment apart here, and a boot before the 201 is none after it."""
    say(ingester, owner, device, ("status", {"fw_version": "1.0.0", "uptime": 500}))
    say(ingester, owner, device, ("update-response", {"code": 200}), ("update-response", {"code": 201}))
    say(ingester, owner, device, ("status", {"fw_version": "1.0.0", "uptime": 0}))


def updates(ingester: ReportIngester, owner: Owner, device: Device, uptime: int = 1) -> None:
    say(ingester, owner, device, ("update-response", {"code": 200}), ("update-response", {"code": 201}))
    say(ingester, owner, device, ("status", {"fw_version": "1.1.0", "uptime": uptime}))


def test_a_plain_deploy_retries_a_device_that_came_back_on_the_old_version(
    services: Services, fleet: Fleet
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    device = fleet.device(group, name="reverts", firmware_version="1.0.0")
    ingester = ReportIngester(services.engine)
    runner = RolloutRunner(
        services.engine, notify=True, retry=RetryPolicy(attempts=2, backoff=0.005, dark_after=600)
    )
    deployment_id = deploy(services, group, "1.1.0")
    topic = f"/{owner.user.mqtt_user}/groups/{group.id}/update-trigger"

    boots_back_on_the_old_version(ingester, owner, device)
    assert rows(services, deployment_id)[device.id][0] == "failed"
    tick_until(runner, lambda: rows(services, deployment_id)[device.id][2] == 1)
    assert rows(services, deployment_id)[device.id] == ("pending", 201, 1)
    assert triggers(services) == [topic, topic]

    # The retry's trigger reaches it, and this time the new image stays.
    updates(ingester, owner, device, uptime=3)
    assert rows(services, deployment_id)[device.id] == ("succeeded", 201, 1)


def test_a_rollout_retries_a_canary_device_that_came_back_on_the_old_version(
    services: Services, fleet: Fleet
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner, name="fleet")
    canary = fleet.group(owner, name="canary", parent=group)
    reverts, healthy = (fleet.device(canary, name=n, firmware_version="1.0.0") for n in ("reverts", "ok"))
    ingester = ReportIngester(services.engine)
    runner = RolloutRunner(
        services.engine, notify=True, retry=RetryPolicy(attempts=2, backoff=0.005, dark_after=600)
    )
    rollout_id = start(services, group, canary)
    canary_topic = f"/{owner.user.mqtt_user}/groups/{canary.id}/update-trigger"
    assert triggers(services) == [canary_topic]

    updates(ingester, owner, healthy)
    boots_back_on_the_old_version(ingester, owner, reverts)
    assert canary_rows(services, rollout_id)[reverts.id][0] == "failed"
    tick_until(runner, lambda: canary_rows(services, rollout_id)[reverts.id][2] == 1)
    assert canary_rows(services, rollout_id)[reverts.id] == ("pending", 201, 1)
    # The canary group's trigger, queued again: the fleet's is not touched.
    assert triggers(services) == [canary_topic, canary_topic]

    updates(ingester, owner, reverts, uptime=4)
    assert canary_rows(services, rollout_id) == {
        reverts.id: ("succeeded", 201, 1),
        healthy.id: ("succeeded", 201, 0),
    }


def test_two_clocks_retry_a_rollout_device_once(services: Services, fleet: Fleet) -> None:
    """Two clocks on one database passing at the same moments: the rollout's
    row lock lets one of them retry, and the other skips it."""
    owner = fleet.owner()
    group = fleet.group(owner, name="fleet")
    canary = fleet.group(owner, name="canary", parent=group)
    device = fleet.device(canary, name="fails", firmware_version="1.0.0")
    fleet.device(canary, name="silent", firmware_version="1.0.0")
    policy = RetryPolicy(attempts=3, backoff=0.05, dark_after=600)
    clocks = [RolloutRunner(services.engine, notify=True, retry=policy) for _ in range(2)]
    rollout_id = start(services, group, canary)
    say(ReportIngester(services.engine), owner, device, ("update-response", {"code": 203}))
    clocks[0].evaluate_all()
    assert canary_rows(services, rollout_id)[device.id] == ("retrying", 203, 0)

    def both_pass() -> None:
        barrier = threading.Barrier(2)
        failures: list[BaseException] = []

        def run(clock: RolloutRunner) -> None:
            try:
                barrier.wait(5)
                clock.evaluate_all()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=run, args=(c,)) for c in clocks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert failures == []

    deadline = time.monotonic() + 10
    while canary_rows(services, rollout_id)[device.id][2] == 0:
        assert time.monotonic() < deadline, "never retried"
        both_pass()
    # The next retry is due only 0.1 s after the device fails again, which it
    # does not: more passes change nothing.
    for _ in range(5):
        both_pass()
    assert canary_rows(services, rollout_id)[device.id] == ("pending", 203, 1)
    assert len(triggers(services)) == 2


def test_a_failure_that_halts_its_wave_is_not_retried_and_its_group_hears_next_of_the_rollback(
    services: Services, fleet: Fleet
) -> None:
    """A wave judges the image: a failure counts at once, retry or not. The
    clock's pass that gives the device its retry (before the decision, so
    that it counts as retrying) halts the wave with error_threshold 0, and
    rolls it back: the retry never comes due, and the device's group is
    triggered next with the version it goes back to."""
    owner = fleet.owner()
    group = fleet.group(owner, name="fleet")
    canary = fleet.group(owner, name="canary", parent=group)
    reverts, healthy = (fleet.device(canary, name=n, firmware_version="1.0.0") for n in ("reverts", "ok"))
    deploy(services, group, "1.0.0")  # what the canary goes back to
    ingester = ReportIngester(services.engine)
    runner = RolloutRunner(
        services.engine, notify=True, retry=RetryPolicy(attempts=1, backoff=0.005, dark_after=600)
    )
    with write_session(services.engine) as session:
        assert lock_tree(session=session, group_id=group.id)
        rollout_id = start_rollout(
            session=session,
            group=group,
            canary=canary,
            version="1.1.0",
            firmware=firmware("1.1.0"),
            policy=Policy(error_threshold=0, canary_timeout=600),
            commit=None,
            notify=True,
            now=utcnow(),
            rollback=True,
        ).rollout.id
    updates(ingester, owner, healthy)
    boots_back_on_the_old_version(ingester, owner, reverts)
    assert canary_rows(services, rollout_id)[reverts.id] == ("failed", 201, 0)

    runner.evaluate_all()
    with read_session(services.engine) as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        assert (rollout.state, rollout.reason) == (
            "rolled_back",
            "1 canary device(s) failed; error_threshold tolerates 0",
        )
        row = session.get(RolloutDevice, (rollout_id, "canary", reverts.id))
        assert row is not None
        assert (row.outcome, row.reason, row.retries, row.retry_at) == ("failed", "reverted", 0, None)
    canary_topic = f"/{owner.user.mqtt_user}/groups/{canary.id}/update-trigger"

    def canary_triggers() -> list[str]:
        with read_session(services.engine) as session:
            return list(
                session.exec(
                    select(TriggerMessage.payload)
                    .where(col(TriggerMessage.topic) == canary_topic)
                    .order_by(col(TriggerMessage.id))
                )
            )

    # The plain deploy's, the rollout's, the rollback's.
    sent = ['{"version": "1.0.0"}', '{"version": "1.1.0"}', '{"version": "1.0.0"}']
    assert canary_triggers() == sent
    # Long past the retry's time: nothing more for the canary's group.
    time.sleep(0.05)
    for _ in range(3):
        runner.evaluate_all()
    assert canary_triggers() == sent
