"""Staged rollouts through the real app and database, with reports fed straight in.

The MQTT transport is covered in test_fleet_mqtt.py; here the reports go into
the same ReportIngester the subscriber feeds, so every decision is exact.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import col, select
from starlette.testclient import TestClient

from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.models import Deployment, Device, Group, Rollout, TriggerMessage
from otaship.receiver.ids import utcnow
from otaship.receiver.mqtt.reports import ReportIngester
from otaship.receiver.rollouts.store import FOLLOW_AFTER_END, active_rollout_states, evaluate
from otaship.receiver.services import Services
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image


@dataclass
class Setup:
    owner: Owner
    group: Group
    canary: Group
    rest: Group
    canary_devices: list[Device]
    fleet_devices: list[Device]


@pytest.fixture
def services(services: Services) -> Services:
    """Deploys write triggers, as with a broker configured."""
    return dataclasses.replace(services, notify=True)


@pytest.fixture
def setup(fleet: Fleet, services: Services) -> Setup:
    owner = fleet.owner()
    group = fleet.group(owner, name="fleet")
    canary = fleet.group(owner, name="canary", parent=group)
    rest = fleet.group(owner, name="rest", parent=group)
    canary_devices = [fleet.device(canary, name=f"c{i}", firmware_version="1.0.0") for i in range(2)]
    fleet_devices = [fleet.device(rest, name=f"r{i}", firmware_version="1.0.0") for i in range(3)]
    fleet_devices.append(fleet.device(group, name="direct", firmware_version="1.0.0"))
    return Setup(owner, group, canary, rest, canary_devices, fleet_devices)


def post_rollout(client: TestClient, s: Setup, version: str = "1.1.0", seed: int = 0, **fields: Any) -> Any:
    data = {"group": s.group.id, "token": s.group.token, "version": version, "canary": s.canary.id, **fields}
    return client.post(
        "/v1/ota/group",
        headers=s.owner.headers,
        data=data,
        files={"firmware": ("firmware.bin", build_image(version, seed=seed))},
    )


def report(services: Services, s: Setup, device: Device, kind: str, body: dict[str, Any]) -> None:
    ReportIngester(services.engine).ingest_messages(
        [(f"/{s.owner.user.mqtt_user}/devices/{device.id}/{kind}", json.dumps(body).encode())]
    )


def tick(services: Services, *, after: float = 0) -> None:
    """One pass of the rollout clock, `after` seconds from now.

    The app's own clock runs too (a deploy wakes it); when it holds a
    rollout's row lock, evaluate() skips the row, so try again until this
    pass really evaluated it.
    """
    with read_session(services.engine) as session:
        ids = [rollout_id for rollout_id, _ in active_rollout_states(session=session)]
    for rollout_id in ids:
        for _ in range(200):
            with write_session(services.engine) as session:
                state = evaluate(
                    session=session,
                    rollout_id=rollout_id,
                    notify=True,
                    now=utcnow() + timedelta(seconds=after),
                )
            if state is not None:
                break
            time.sleep(0.01)
        else:
            raise AssertionError(f"rollout {rollout_id} stayed locked")
    # As the running receiver does after each pass: forget cached answers.
    services.catalog.invalidate()


def rollout(client: TestClient, s: Setup, rollout_id: str) -> Any:
    response = client.get(f"/v1/rollouts/{rollout_id}", headers=s.owner.headers)
    assert response.status_code == 200, response.text
    return response.json()


def latest(client: TestClient, group: Group) -> str | None:
    ver: str | None = client.get(f"/v1/ota/group/latest/{group.id}").json().get("ver")
    return ver


def trigger_topics(services: Services) -> list[tuple[str, str]]:
    with read_session(services.engine) as session:
        return [
            (m.topic, m.payload)
            for m in session.exec(select(TriggerMessage).order_by(col(TriggerMessage.id)))
        ]


def succeed(services: Services, s: Setup, devices: list[Device], version: str = "1.1.0") -> None:
    for device in devices:
        report(services, s, device, "update-response", {"code": 201})
        report(
            services,
            s,
            device,
            "status",
            {"fw_version": version, "uptime": 1, "battery": 90, "core_version": "1.0"},
        )


def test_a_healthy_canary_is_promoted_and_the_fleet_completes(
    client: TestClient, services: Services, setup: Setup
) -> None:
    s = setup
    response = post_rollout(client, s)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["message"] == (
        f"Firmware successfully deployed to canary subgroup {s.canary.id} of group {s.group.id}; "
        "the whole group gets it once the canary is healthy"
    )
    assert body["rollout"]["state"] == "canary"
    rollout_id = body["rollout"]["id"]

    # Canary stage: only the canary sees the version, and only it is triggered.
    assert latest(client, s.canary) == "1.1.0"
    assert latest(client, s.group) is None and latest(client, s.rest) is None
    mqtt_user = s.owner.user.mqtt_user
    assert trigger_topics(services) == [
        (f"/{mqtt_user}/groups/{s.canary.id}/update-trigger", '{"version": "1.1.0"}')
    ]
    state = rollout(client, s, rollout_id)
    assert state["state"] == "canary"
    assert state["stages"][0] | {"started_at": None, "ended_at": None} == {
        "name": "canary",
        "wave": 1,
        "group": s.canary.id,
        "state": "running",
        "targeted": 2,
        "succeeded": 0,
        "failed": 0,
        "timed_out": 0,
        "stopped": 0,
        "retrying": 0,
        "retries": 0,
        "pending": 2,
        "failed_by_reason": {},
        "started_at": None,
        "ended_at": None,
    }

    succeed(services, s, s.canary_devices[:1])
    tick(services)
    assert rollout(client, s, rollout_id)["state"] == "canary"
    succeed(services, s, s.canary_devices[1:])
    tick(services)

    state = rollout(client, s, rollout_id)
    assert state["state"] == "fleet"
    assert [st["state"] for st in state["stages"]] == ["passed", "running"]
    fleet_stage = state["stages"][1]
    # The whole group: its own device, the rest subgroup, and the canary (already done).
    assert (fleet_stage["targeted"], fleet_stage["succeeded"], fleet_stage["pending"]) == (6, 2, 4)
    assert latest(client, s.group) == latest(client, s.rest) == "1.1.0"
    topics = [t for t, _ in trigger_topics(services)]
    assert topics[1:] == [
        f"/{mqtt_user}/groups/{s.group.id}/update-trigger",
        f"/{mqtt_user}/groups/{s.rest.id}/update-trigger",
    ]  # the canary's effective version did not change, so it is not triggered again

    # The promotion deployed the stored image: no upload, the same bytes.
    listing = client.get("/v1/ota/group", headers=s.owner.headers).json()
    by_group = {o["group"]: o for o in listing["otas"]}
    assert by_group[s.group.id]["sha256"] == by_group[s.canary.id]["sha256"]

    succeed(services, s, s.fleet_devices)
    tick(services)
    state = rollout(client, s, rollout_id)
    assert state["state"] == "complete"
    assert state["reason"] == "all 6 device(s) reported"
    assert {d["outcome"] for d in state["devices"]} == {"succeeded"}


def test_a_failing_canary_halts_and_the_fleet_never_sees_the_version(
    client: TestClient, services: Services, setup: Setup
) -> None:
    s = setup
    rollout_id = post_rollout(client, s).json()["rollout"]["id"]
    succeed(services, s, s.canary_devices[:1])
    report(services, s, s.canary_devices[1], "update-response", {"code": 203})
    tick(services)
    state = rollout(client, s, rollout_id)
    assert state["state"] == "halted"
    assert state["reason"] == "1 canary device(s) failed; error_threshold tolerates 0"
    assert [st["state"] for st in state["stages"]] == ["failed", "skipped"]
    assert latest(client, s.group) is None and latest(client, s.rest) is None
    assert latest(client, s.canary) == "1.1.0"  # the canary keeps what it has
    assert all(s.canary.id in t for t, _ in trigger_topics(services))
    tick(services, after=10_000)
    assert rollout(client, s, rollout_id)["state"] == "halted"
    assert latest(client, s.group) is None


def test_a_device_that_boot_loops_back_fails_the_canary(
    client: TestClient, services: Services, setup: Setup
) -> None:
    s = setup
    rollout_id = post_rollout(client, s, error_threshold="0").json()["rollout"]["id"]
    device = s.canary_devices[0]
    report(services, s, device, "status", {"fw_version": "1.0.0", "uptime": 500})
    report(services, s, device, "update-response", {"code": 201})
    report(services, s, device, "status", {"fw_version": "1.0.0", "uptime": 505})  # downloading
    tick(services)
    assert rollout(client, s, rollout_id)["state"] == "canary"
    # Rebooted, on the old version. Uptime 0: its reports come a moment apart
    # here, and a boot before its 201 is no reboot after it.
    report(services, s, device, "status", {"fw_version": "1.0.0", "uptime": 0})
    tick(services)
    state = rollout(client, s, rollout_id)
    assert state["state"] == "halted"
    assert {d["id"]: d["outcome"] for d in state["devices"]}[device.id] == "failed"


def test_a_device_back_on_the_old_version_fails_the_canary_when_other_workers_took_its_reports(
    client: TestClient, services: Services, setup: Setup
) -> None:
    """A shared subscription splits a device's reports between the workers:
    the one that takes its 201 may never have seen a status of it, and a
    device busy flashing sends none before it boots back on the old version.
    Each report here goes to a worker of its own (`report`): the boot before
    the 201 comes from the device's row, and the first status after it is not
    taken for the device's boot before its update."""
    s = setup
    rollout_id = post_rollout(client, s).json()["rollout"]["id"]
    device = s.canary_devices[0]
    report(services, s, device, "status", {"fw_version": "1.0.0", "uptime": 500})
    report(services, s, device, "update-response", {"code": 201})
    # Rebooted, on the old version. Uptime 0: its reports come a moment apart
    # here, and a boot before its 201 is no reboot after it.
    report(services, s, device, "status", {"fw_version": "1.0.0", "uptime": 0})
    report(services, s, device, "status", {"fw_version": "1.0.0", "uptime": 1})
    tick(services)
    state = rollout(client, s, rollout_id)
    assert (state["state"], state["reason"]) == (
        "halted",
        "1 canary device(s) failed; error_threshold tolerates 0",
    )
    rows = {d["id"]: (d["outcome"], d["reason"]) for d in state["devices"] if d["stage"] == "canary"}
    assert rows == {device.id: ("failed", "reverted"), s.canary_devices[1].id: ("stopped", None)}


def test_a_worker_that_missed_a_reboot_does_not_take_the_device_for_reverted(
    client: TestClient, services: Services, setup: Setup
) -> None:
    """The worker that takes the 201 last saw the device before a reboot that
    another worker saw: the boot before the 201 is the later one, from the
    device's row, and the device downloading is not taken for one that
    booted back on the old version."""
    s = setup
    rollout_id = post_rollout(client, s).json()["rollout"]["id"]
    device = s.canary_devices[0]
    first, second = ReportIngester(services.engine), ReportIngester(services.engine)

    def say(worker: ReportIngester, kind: str, body: dict[str, Any]) -> None:
        topic = f"/{s.owner.user.mqtt_user}/devices/{device.id}/{kind}"
        assert worker.ingest_messages([(topic, json.dumps(body).encode())])

    say(first, "status", {"fw_version": "1.0.0", "uptime": 500})
    say(second, "status", {"fw_version": "1.0.0", "uptime": 0})  # power-cycled
    say(first, "update-response", {"code": 201})
    say(first, "status", {"fw_version": "1.0.0", "uptime": 1})  # downloading
    tick(services)
    state = rollout(client, s, rollout_id)
    assert state["state"] == "canary"
    rows = {d["id"]: (d["outcome"], d["reason"]) for d in state["devices"] if d["stage"] == "canary"}
    assert rows[device.id] == ("pending", None)
    say(second, "status", {"fw_version": "1.1.0", "uptime": 0})
    tick(services)
    state = rollout(client, s, rollout_id)
    rows = {d["id"]: (d["outcome"], d["reason"]) for d in state["devices"] if d["stage"] == "canary"}
    assert rows[device.id] == ("succeeded", None)


def test_the_canary_times_out_short_of_its_threshold(
    client: TestClient, services: Services, setup: Setup
) -> None:
    s = setup
    rollout_id = post_rollout(client, s, canary_timeout="60").json()["rollout"]["id"]
    succeed(services, s, s.canary_devices[:1])
    tick(services, after=30)
    assert rollout(client, s, rollout_id)["state"] == "canary"
    tick(services, after=61)
    state = rollout(client, s, rollout_id)
    assert state["state"] == "halted"
    assert state["reason"] == "canary timed out after 60 s: 1 of 2 succeeded, 2 needed"
    assert {d["outcome"] for d in state["devices"]} == {"succeeded", "timed_out"}


def test_a_halt_before_the_timeout_stops_the_unfinished_devices(
    client: TestClient, services: Services, setup: Setup
) -> None:
    """With canary_timeout=120, a halt after a second used to count the devices
    that still had 119 s as timed_out."""
    s = setup
    rollout_id = post_rollout(client, s, canary_timeout="120").json()["rollout"]["id"]
    report(services, s, s.canary_devices[0], "update-response", {"code": 203})
    tick(services, after=1)
    state = rollout(client, s, rollout_id)
    assert state["state"] == "halted"
    canary = state["stages"][0]
    assert (canary["failed"], canary["timed_out"], canary["stopped"], canary["pending"]) == (1, 0, 1, 0)
    assert {d["id"]: d["outcome"] for d in state["devices"]} == {
        s.canary_devices[0].id: "failed",
        s.canary_devices[1].id: "stopped",
    }


def test_what_devices_run_is_still_recorded_after_a_halt(
    client: TestClient, services: Services, setup: Setup
) -> None:
    s = setup
    rollout_id = post_rollout(client, s).json()["rollout"]["id"]
    failing, late = s.canary_devices
    report(services, s, failing, "update-response", {"code": 203})
    report(services, s, late, "update-response", {"code": 201})
    tick(services)
    assert rollout(client, s, rollout_id)["state"] == "halted"

    # The late one finishes its update anyway; the failed one is put back by hand.
    report(services, s, late, "status", {"fw_version": "1.1.0", "uptime": 1})
    report(services, s, failing, "update-response", {"code": 202})
    report(services, s, failing, "status", {"fw_version": "1.0.1", "uptime": 1})
    devices = {d["id"]: d for d in rollout(client, s, rollout_id)["devices"]}
    assert (devices[late.id]["outcome"], devices[late.id]["fw_version"], devices[late.id]["code"]) == (
        "stopped",
        "1.1.0",
        201,
    )
    assert (
        devices[failing.id]["outcome"],
        devices[failing.id]["fw_version"],
        devices[failing.id]["code"],
    ) == ("failed", "1.0.1", 202)
    counts = rollout(client, s, rollout_id)["stages"][0]
    assert (counts["succeeded"], counts["failed"], counts["stopped"]) == (0, 1, 1)


def test_reports_are_recorded_for_a_day_after_a_rollout_ends(
    client: TestClient, services: Services, setup: Setup
) -> None:
    s = setup
    rollout_id = post_rollout(client, s).json()["rollout"]["id"]
    assert client.post(f"/v1/rollouts/{rollout_id}/abort", headers=s.owner.headers).status_code == 200
    device = s.canary_devices[0]
    report(services, s, device, "status", {"fw_version": "1.0.5", "uptime": 1})
    assert {d["id"]: d["fw_version"] for d in rollout(client, s, rollout_id)["devices"]}[device.id] == "1.0.5"

    with write_session(services.engine) as session:
        ended = session.get(Rollout, rollout_id)
        assert ended is not None and ended.ended_at is not None
        ended.ended_at -= FOLLOW_AFTER_END + timedelta(seconds=1)
        session.add(ended)
    report(services, s, device, "status", {"fw_version": "1.0.6", "uptime": 2})
    with read_session(services.engine) as session:
        stored = session.get(Device, device.id)
    assert stored is not None and stored.firmware_version == "1.0.6"  # the report was taken in
    assert {d["id"]: d["fw_version"] for d in rollout(client, s, rollout_id)["devices"]}[device.id] == "1.0.5"


def test_an_abort_stops_the_unfinished_devices(client: TestClient, services: Services, setup: Setup) -> None:
    s = setup
    rollout_id = post_rollout(client, s).json()["rollout"]["id"]
    succeed(services, s, s.canary_devices[:1])
    aborted = client.post(f"/v1/rollouts/{rollout_id}/abort", headers=s.owner.headers)
    assert aborted.status_code == 200
    canary = aborted.json()["stages"][0]
    assert (canary["succeeded"], canary["stopped"], canary["pending"], canary["timed_out"]) == (1, 1, 0, 0)


def test_a_promotion_short_of_every_device_stops_the_others_in_the_canary(
    client: TestClient, services: Services, setup: Setup
) -> None:
    s = setup
    rollout_id = post_rollout(client, s, success_threshold="0.5").json()["rollout"]["id"]
    succeed(services, s, s.canary_devices[:1])
    tick(services)
    state = rollout(client, s, rollout_id)
    assert state["state"] == "fleet"
    canary, fleet_stage = state["stages"]
    assert (canary["succeeded"], canary["stopped"], canary["timed_out"]) == (1, 1, 0)
    # The fleet stage follows it on.
    assert (fleet_stage["targeted"], fleet_stage["succeeded"], fleet_stage["pending"]) == (6, 1, 5)


def test_a_threshold_below_one_and_tolerated_errors(
    client: TestClient, services: Services, setup: Setup
) -> None:
    s = setup
    rollout_id = post_rollout(client, s, success_threshold="0.5", error_threshold="1").json()["rollout"]["id"]
    report(services, s, s.canary_devices[0], "update-response", {"code": 203})
    succeed(services, s, s.canary_devices[1:])
    tick(services)
    assert rollout(client, s, rollout_id)["state"] == "fleet"


def test_the_fleet_stage_completes_at_its_timeout(
    client: TestClient, services: Services, setup: Setup
) -> None:
    s = setup
    rollout_id = post_rollout(client, s, canary_timeout="60").json()["rollout"]["id"]
    succeed(services, s, s.canary_devices)
    tick(services)
    succeed(services, s, s.fleet_devices[:2])
    tick(services, after=61)
    state = rollout(client, s, rollout_id)
    assert state["state"] == "complete"
    assert state["reason"] == "fleet stage timed out with 2 device(s) pending"
    assert state["stages"][1]["timed_out"] == 2


def test_soak_and_manual_promotion(client: TestClient, services: Services, setup: Setup) -> None:
    s = setup
    rollout_id = post_rollout(client, s, soak="120", auto_promote="false").json()["rollout"]["id"]
    early = client.post(f"/v1/rollouts/{rollout_id}/promote", headers=s.owner.headers)
    assert early.status_code == 409
    assert early.json() == {
        "message": "the canary has not reached its success threshold: 0 of 2 succeeded, 2 needed"
    }
    succeed(services, s, s.canary_devices)
    tick(services)
    tick(services, after=200)
    state = rollout(client, s, rollout_id)
    assert (state["state"], state["reason"]) == ("canary", "canary healthy; waiting for a promote")
    assert latest(client, s.group) is None

    promoted = client.post(f"/v1/rollouts/{rollout_id}/promote", headers=s.owner.headers)
    assert promoted.status_code == 200
    assert promoted.json()["state"] == "fleet"
    assert latest(client, s.group) == "1.1.0"
    assert 'otaship_deploys_total{kind="promotion"} 1.0' in client.get("/metrics").text
    again = client.post(f"/v1/rollouts/{rollout_id}/promote", headers=s.owner.headers)
    assert again.status_code == 409


def test_auto_promotion_waits_for_the_soak(client: TestClient, services: Services, setup: Setup) -> None:
    s = setup
    rollout_id = post_rollout(client, s, soak="60").json()["rollout"]["id"]
    succeed(services, s, s.canary_devices)
    tick(services)
    assert rollout(client, s, rollout_id)["state"] == "canary"
    tick(services, after=61)
    assert rollout(client, s, rollout_id)["state"] == "fleet"


def test_abort(client: TestClient, services: Services, setup: Setup) -> None:
    s = setup
    rollout_id = post_rollout(client, s).json()["rollout"]["id"]
    response = client.post(f"/v1/rollouts/{rollout_id}/abort", headers=s.owner.headers)
    assert response.status_code == 200
    assert (response.json()["state"], response.json()["reason"]) == ("aborted", "aborted by request")
    succeed(services, s, s.canary_devices)
    tick(services)
    assert rollout(client, s, rollout_id)["state"] == "aborted"
    assert latest(client, s.group) is None
    again = client.post(f"/v1/rollouts/{rollout_id}/abort", headers=s.owner.headers)
    assert again.status_code == 409
    assert again.json() == {"message": "the rollout has already ended: aborted"}


def test_a_new_deploy_supersedes_a_rollout_in_progress(
    client: TestClient, services: Services, setup: Setup
) -> None:
    s = setup
    first = post_rollout(client, s, "1.1.0").json()["rollout"]["id"]
    second = post_rollout(client, s, "1.2.0").json()["rollout"]["id"]
    old = rollout(client, s, first)
    assert old["state"] == "aborted"
    with read_session(services.engine) as session:
        canary_deploy = session.exec(select(Deployment).where(col(Deployment.rollout_id) == second)).one()
    assert old["reason"] == (
        f"superseded by deployment {canary_deploy.id} of 1.2.0 to group {s.canary.id} (rollout {second})"
    )
    # Its canary devices had not finished: stopped, not timed out.
    assert {d["outcome"] for d in old["devices"]} == {"stopped"}
    assert rollout(client, s, second)["state"] == "canary"
    listed = client.get("/v1/rollouts", params={"group": s.group.id}, headers=s.owner.headers).json()
    assert [r["id"] for r in listed["rollouts"]] == [second, first]


def test_a_held_canary_says_where_the_image_went_and_what_it_waits_for(
    client: TestClient, services: Services, setup: Setup
) -> None:
    s = setup
    body = post_rollout(client, s, auto_promote="false").json()
    rollout_id = body["rollout"]["id"]
    assert body["message"] == (
        f"Firmware successfully deployed to canary subgroup {s.canary.id} of group {s.group.id}; "
        f"the whole group gets it when rollout {rollout_id} is promoted"
    )
    assert body["ota"]["group"] == s.canary.id


def test_reposting_a_rollout_is_idempotent(client: TestClient, services: Services, setup: Setup) -> None:
    s = setup
    first = post_rollout(client, s).json()
    again = post_rollout(client, s)
    assert again.status_code == 201
    assert again.json()["deployed"] is False
    assert again.json()["rollout"] == first["rollout"]
    assert again.json()["message"] == first["message"]
    other_bytes = post_rollout(client, s, seed=9)
    assert other_bytes.status_code == 409
    assert "bump the version" in other_bytes.json()["message"]


def test_a_halted_version_cannot_be_rolled_out_again(
    client: TestClient, services: Services, setup: Setup
) -> None:
    s = setup
    rollout_id = post_rollout(client, s).json()["rollout"]["id"]
    report(services, s, s.canary_devices[0], "update-response", {"code": 203})
    tick(services)
    assert rollout(client, s, rollout_id)["state"] == "halted"
    again = post_rollout(client, s)
    assert again.status_code == 409
    assert again.json()["message"].startswith("Version 1.1.0 was halted in its canary")


def test_devices_already_on_the_version_count_as_succeeded(
    client: TestClient, services: Services, setup: Setup, fleet: Fleet
) -> None:
    s = setup
    with write_session(services.engine) as session:
        for device in s.canary_devices:
            row = session.get(Device, device.id)
            assert row is not None
            row.firmware_version = "1.1.0"
            session.add(row)
    rollout_id = post_rollout(client, s).json()["rollout"]["id"]
    tick(services)
    assert rollout(client, s, rollout_id)["state"] == "fleet"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"canary": "nope"}, "Canary ID is not valid"),
        ({"canary": "0" * 24}, "canary must be a subgroup of the group"),
        ({"success_threshold": "0"}, "success_threshold must be a number in (0, 1], not '0'"),
        ({"success_threshold": "1.5"}, "success_threshold must be a number in (0, 1], not '1.5'"),
        ({"success_threshold": "most"}, "success_threshold must be a number in (0, 1], not 'most'"),
        ({"error_threshold": "-1"}, "error_threshold must be a whole number from 0 to 1000000, not '-1'"),
        ({"canary_timeout": "0"}, "canary_timeout must be a whole number from 1 to 604800, not '0'"),
        ({"soak": "1h"}, "soak must be a whole number from 0 to 604800, not '1h'"),
        ({"auto_promote": "maybe"}, "auto_promote must be true or false, not 'maybe'"),
    ],
)
def test_bad_rollout_fields_are_400(
    client: TestClient, setup: Setup, fields: dict[str, Any], message: str
) -> None:
    response = post_rollout(client, setup, **fields)
    assert response.status_code == 400
    assert response.json() == {"message": message}


def test_rollout_fields_without_a_canary_are_400(client: TestClient, setup: Setup) -> None:
    s = setup
    response = client.post(
        "/v1/ota/group",
        headers=s.owner.headers,
        data={"group": s.group.id, "token": s.group.token, "version": "1.1.0", "soak": "10"},
        files={"firmware": ("firmware.bin", build_image("1.1.0"))},
    )
    assert response.status_code == 400
    assert response.json() == {"message": "soak only applies to a rollout: add a canary subgroup"}


def test_the_canary_must_be_a_descendant_with_devices(client: TestClient, fleet: Fleet, setup: Setup) -> None:
    s = setup
    unrelated = fleet.group(s.owner, name="unrelated")
    empty = fleet.group(s.owner, name="empty", parent=s.group)
    stranger = fleet.owner()
    foreign = fleet.group(stranger, name="foreign")
    for canary, message in (
        (unrelated, "canary must be a subgroup of the group"),
        (s.group, "canary must be a subgroup of the group"),
        (foreign, "canary must be a subgroup of the group"),
        (empty, "the canary subgroup has no registered devices"),
    ):
        response = post_rollout(client, s, canary=canary.id)
        assert response.status_code == 400
        assert response.json() == {"message": message}


def test_rollouts_are_scoped_to_their_owner(client: TestClient, fleet: Fleet, setup: Setup) -> None:
    s = setup
    rollout_id = post_rollout(client, s).json()["rollout"]["id"]
    stranger = fleet.owner()
    for response in (
        client.get(f"/v1/rollouts/{rollout_id}", headers=stranger.headers),
        client.post(f"/v1/rollouts/{rollout_id}/promote", headers=stranger.headers),
        client.post(f"/v1/rollouts/{rollout_id}/abort", headers=stranger.headers),
        client.get(f"/v1/rollouts/{'0' * 24}", headers=s.owner.headers),
    ):
        assert response.status_code == 404
        assert response.json() == {"message": "No such rollout"}
    listed = client.get("/v1/rollouts", params={"group": s.group.id}, headers=stranger.headers)
    assert listed.status_code == 404
    assert client.get(f"/v1/rollouts/{rollout_id}").status_code == 401
    assert rollout(client, s, rollout_id)["state"] == "canary"


def test_reports_from_strangers_and_garbage_are_ignored(
    client: TestClient, services: Services, setup: Setup, fleet: Fleet
) -> None:
    s = setup
    stranger = fleet.owner()
    device = s.canary_devices[0]
    ingester = ReportIngester(services.engine)
    ingester.ingest_messages(
        [
            (f"/{stranger.user.mqtt_user}/devices/{device.id}/status", b'{"fw_version": "6.6.6"}'),
            (f"/{s.owner.user.mqtt_user}/devices/{device.id}/status", b"{not json"),
            (f"/{s.owner.user.mqtt_user}/devices/{device.id}/status", b'{"fw_version": 7}'),
            (f"/{s.owner.user.mqtt_user}/devices/{device.id}/status", b"[1, 2]"),
            (f"/{s.owner.user.mqtt_user}/devices/{device.id}/update-response", b'{"code": "201"}'),
            (f"/{s.owner.user.mqtt_user}/devices/{device.id}/update-response", b'{"code": 500}'),
            (f"/{s.owner.user.mqtt_user}/devices/unknown-device/status", b'{"fw_version": "1.0.0"}'),
            (f"/{s.owner.user.mqtt_user}/devices/{device.id}/other", b"{}"),
            (
                f"/{s.owner.user.mqtt_user}/devices/{device.id}/status",
                b'{"fw_version": "1.0.1", "uptime": 3}',
            ),
        ]
    )
    assert (ingester.accepted, ingester.dropped) == (1, 8)
    with read_session(services.engine) as session:
        stored = session.get(Device, device.id)
    assert stored is not None and stored.firmware_version == "1.0.1"


def test_unchanged_status_reports_do_not_write(services: Services, setup: Setup) -> None:
    s = setup
    ingester = ReportIngester(services.engine)
    topic = f"/{s.owner.user.mqtt_user}/devices/{s.canary_devices[0].id}/status"
    ingester.ingest_messages([(topic, b'{"fw_version": "1.0.0", "uptime": 1}')])
    writes = ingester.writes
    for uptime in range(2, 20):
        ingester.ingest_messages([(topic, json.dumps({"fw_version": "1.0.0", "uptime": uptime}).encode())])
    assert ingester.writes == writes
    ingester.ingest_messages([(topic, b'{"fw_version": "1.0.2", "uptime": 30}')])
    assert ingester.writes == writes + 1
