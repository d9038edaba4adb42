"""Rollouts in waves through the real app and database, reports fed straight in
(as in test_rollouts.py): each wave sees the version only when it starts, a
wave's policy and the failure rate halt it, a pause stops the clock."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from otaship.receiver.db.engine import write_session
from otaship.receiver.db.models import Device, Group
from otaship.receiver.ids import utcnow
from otaship.receiver.rollouts.policy import RetryPolicy
from otaship.receiver.rollouts.retries import fail_dark_devices
from otaship.receiver.rollouts.store import lock_rollout, pause, resume
from otaship.receiver.services import Services
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image
from tests.receiver.rollouts.test_rollouts import latest, report, rollout, tick, trigger_topics


@pytest.fixture
def services(services: Services) -> Services:
    """Deploys write triggers, as with a broker configured."""
    return dataclasses.replace(services, notify=True)


@dataclass
class Waves:
    owner: Owner
    group: Group
    waves: list[Group]
    rest: Group
    devices: list[list[Device]]
    fleet_devices: list[Device]

    # test_rollouts.report takes a setup with an owner.


@pytest.fixture
def w(fleet: Fleet, services: Services) -> Waves:
    owner = fleet.owner()
    group = fleet.group(owner, name="fleet")
    waves = [fleet.group(owner, name=f"wave{i + 1}", parent=group) for i in range(3)]
    rest = fleet.group(owner, name="rest", parent=group)
    devices = [
        [fleet.device(wave, name=f"w{i}d{j}", firmware_version="1.0.0") for j in range(2)]
        for i, wave in enumerate(waves)
    ]
    fleet_devices = [fleet.device(rest, name=f"r{j}", firmware_version="1.0.0") for j in range(2)]
    return Waves(owner, group, waves, rest, devices, fleet_devices)


def post(client: TestClient, w: Waves, version: str = "1.1.0", **fields: Any) -> Any:
    data = {
        "group": w.group.id,
        "token": w.group.token,
        "version": version,
        "waves": ",".join(g.id for g in w.waves),
        **fields,
    }
    return client.post(
        "/v1/ota/group",
        headers=w.owner.headers,
        data=data,
        files={"firmware": ("firmware.bin", build_image(version))},
    )


def succeed(services: Services, w: Waves, devices: list[Device], version: str = "1.1.0") -> None:
    for device in devices:
        report(services, w, device, "update-response", {"code": 201})  # type: ignore[arg-type]
        report(services, w, device, "status", {"fw_version": version, "uptime": 1})  # type: ignore[arg-type]


def fail(services: Services, w: Waves, devices: list[Device]) -> None:
    for device in devices:
        report(services, w, device, "update-response", {"code": 203})  # type: ignore[arg-type]


def seen(client: TestClient, w: Waves) -> list[str | None]:
    """What each wave, and then the rest of the group, is offered."""
    return [latest(client, g) for g in [*w.waves, w.rest]]


def test_three_healthy_waves_then_the_fleet_each_see_the_version_only_when_their_wave_starts(
    client: TestClient, services: Services, w: Waves
) -> None:
    response = post(client, w)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["message"] == (
        f"Firmware successfully deployed to canary subgroup {w.waves[0].id} of group {w.group.id}; "
        "the whole group gets it once its 3 waves are healthy, in order"
    )
    rollout_id = body["rollout"]["id"]
    assert seen(client, w) == ["1.1.0", None, None, None]
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert (state["state"], state["wave"], state["waves"]) == ("canary", 1, [g.id for g in w.waves])
    assert [(s["name"], s["wave"], s["state"], s["targeted"]) for s in state["stages"]] == [
        ("canary", 1, "running", 2),
        ("wave", 2, "pending", 0),
        ("wave", 3, "pending", 0),
        ("fleet", None, "pending", 0),
    ]

    succeed(services, w, w.devices[0])
    tick(services)
    assert seen(client, w) == ["1.1.0", "1.1.0", None, None]
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert (state["state"], state["wave"], state["reason"]) == ("canary", 2, "canary healthy: 2/2 succeeded")
    assert [s["state"] for s in state["stages"]] == ["passed", "running", "pending", "pending"]

    # Wave 1's devices reporting again changes nothing: their wave is closed.
    succeed(services, w, w.devices[0])
    succeed(services, w, w.devices[1])
    tick(services)
    assert seen(client, w) == ["1.1.0", "1.1.0", "1.1.0", None]
    succeed(services, w, w.devices[2])
    tick(services)
    assert seen(client, w) == ["1.1.0"] * 4
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert state["state"] == "fleet" and state["wave"] is None
    assert [s["state"] for s in state["stages"]] == ["passed", "passed", "passed", "running"]
    mqtt_user = w.owner.user.mqtt_user
    assert [t for t, _ in trigger_topics(services)] == [
        f"/{mqtt_user}/groups/{w.waves[0].id}/update-trigger",
        f"/{mqtt_user}/groups/{w.waves[1].id}/update-trigger",
        f"/{mqtt_user}/groups/{w.waves[2].id}/update-trigger",
        f"/{mqtt_user}/groups/{w.group.id}/update-trigger",
        f"/{mqtt_user}/groups/{w.rest.id}/update-trigger",
    ]
    succeed(services, w, w.fleet_devices)
    tick(services)
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert (state["state"], state["reason"]) == ("complete", "all 8 device(s) reported")
    assert {d["wave"] for d in state["devices"] if d["stage"] == "canary"} == {1, 2, 3}


def test_a_failing_second_wave_halts_and_the_later_waves_never_see_the_version(
    client: TestClient, services: Services, w: Waves
) -> None:
    rollout_id = post(client, w).json()["rollout"]["id"]
    succeed(services, w, w.devices[0])
    tick(services)
    succeed(services, w, w.devices[1][:1])
    fail(services, w, w.devices[1][1:])
    tick(services)
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert (state["state"], state["reason"]) == (
        "halted",
        "1 wave 2 device(s) failed; error_threshold tolerates 0",
    )
    assert [s["state"] for s in state["stages"]] == ["passed", "failed", "skipped", "skipped"]
    assert state["stages"][1]["failed_by_reason"] == {"code": 1}
    assert seen(client, w) == ["1.1.0", "1.1.0", None, None]
    tick(services, after=10_000)
    assert seen(client, w) == ["1.1.0", "1.1.0", None, None]


def test_a_wave_is_judged_by_its_own_overrides(client: TestClient, services: Services, w: Waves) -> None:
    """Wave 2 tolerates one failure and needs half its devices; wave 3 soaks."""
    response = post(
        client,
        w,
        **{"wave2.error_threshold": "1", "wave2.success_threshold": "0.5", "wave3.soak": "60"},
    )
    rollout_id = response.json()["rollout"]["id"]
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert [
        (p["wave"], p["error_threshold"], p["success_threshold"], p["soak"]) for p in state["wave_policies"]
    ] == [
        (1, 0, 1.0, 0),
        (2, 1, 0.5, 0),
        (3, 0, 1.0, 60),
    ]
    succeed(services, w, w.devices[0])
    tick(services)
    succeed(services, w, w.devices[1][:1])
    fail(services, w, w.devices[1][1:])
    tick(services)
    assert rollout(client, w, rollout_id)["wave"] == 3  # type: ignore[arg-type]
    succeed(services, w, w.devices[2])
    tick(services)
    tick(services, after=30)
    assert rollout(client, w, rollout_id)["wave"] == 3  # type: ignore[arg-type]
    tick(services, after=61)
    assert rollout(client, w, rollout_id)["state"] == "fleet"  # type: ignore[arg-type]


def test_the_failure_rate_halts_a_wave_once_enough_devices_finished(
    client: TestClient, services: Services, fleet: Fleet, w: Waves
) -> None:
    for j in range(2, 6):
        w.devices[0].append(fleet.device(w.waves[0], name=f"w0d{j}", firmware_version="1.0.0"))
    rollout_id = post(
        client,
        w,
        error_threshold="5",
        success_threshold="0.5",
        max_failure_rate="0.3",
        min_devices="3",
    ).json()["rollout"]["id"]
    fail(services, w, w.devices[0][:1])
    succeed(services, w, w.devices[0][1:2])
    tick(services)
    assert rollout(client, w, rollout_id)["state"] == "canary"  # type: ignore[arg-type]
    succeed(services, w, w.devices[0][2:3])
    tick(services)
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert (state["state"], state["reason"]) == (
        "halted",
        "canary: 1 of 3 finished device(s) failed, over max_failure_rate 0.3 (min_devices 3)",
    )
    assert state["policy"]["max_failure_rate"] == 0.3 and state["policy"]["min_devices"] == 3


def test_a_pause_stops_the_clock_and_a_resume_starts_it_where_it_stopped(
    client: TestClient, services: Services, w: Waves
) -> None:
    rollout_id = post(client, w, canary_timeout="100").json()["rollout"]["id"]
    succeed(services, w, w.devices[0])
    tick(services)
    paused = client.post(f"/v1/rollouts/{rollout_id}/pause", headers=w.owner.headers)
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True
    again = client.post(f"/v1/rollouts/{rollout_id}/pause", headers=w.owner.headers)
    assert (again.status_code, again.json()["message"]) == (409, "the rollout is already paused")
    # Devices go on updating while paused; wave 2 is complete, but does not advance.
    succeed(services, w, w.devices[1])
    tick(services, after=10_000)
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert (state["state"], state["wave"], state["paused"]) == ("canary", 2, True)
    assert state["stages"][1]["succeeded"] == 2
    assert seen(client, w) == ["1.1.0", "1.1.0", None, None]
    promoted = client.post(f"/v1/rollouts/{rollout_id}/promote", headers=w.owner.headers)
    assert (promoted.status_code, promoted.json()["message"]) == (
        409,
        "the rollout is paused: resume it first",
    )

    resumed = client.post(f"/v1/rollouts/{rollout_id}/resume", headers=w.owner.headers)
    assert resumed.status_code == 200, resumed.text
    body = resumed.json()
    assert body["paused"] is False
    assert [(c["action"], c["by"]) for c in body["controls"]] == [
        ("pause", w.owner.user.email),
        ("resume", w.owner.user.email),
    ]
    assert body["controls"][0]["at"] <= body["controls"][1]["at"]
    tick(services)
    assert rollout(client, w, rollout_id)["wave"] == 3  # type: ignore[arg-type]
    not_paused = client.post(f"/v1/rollouts/{rollout_id}/resume", headers=w.owner.headers)
    assert (not_paused.status_code, not_paused.json()["message"]) == (409, "the rollout is not paused")


def test_a_paused_stage_does_not_time_out(client: TestClient, services: Services, w: Waves) -> None:
    """Paused after 50 of its 100 s, then held for an hour: after the resume,
    the wave still has its 50 s. The pause and resume run at chosen times."""
    rollout_id = post(client, w, canary_timeout="100").json()["rollout"]["id"]
    start = utcnow()
    tick(services, after=50)
    with write_session(services.engine) as session:
        pause(
            session=session,
            rollout_id=rollout_id,
            owner_id=w.owner.user.id,
            actor="ops@example.com",
            now=start + timedelta(seconds=50),
        )
    tick(services, after=3600)
    assert rollout(client, w, rollout_id)["state"] == "canary"  # type: ignore[arg-type]
    with write_session(services.engine) as session:
        resume(
            session=session,
            rollout_id=rollout_id,
            owner_id=w.owner.user.id,
            actor="ops@example.com",
            now=start + timedelta(seconds=3650),
        )
    tick(services, after=3690)
    assert rollout(client, w, rollout_id)["state"] == "canary"  # type: ignore[arg-type]
    tick(services, after=3710)
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert (state["state"], state["reason"]) == (
        "halted",
        "canary timed out after 100 s: 0 of 2 succeeded, 2 needed",
    )
    assert [(c["action"], c["by"]) for c in state["controls"]] == [
        ("pause", "ops@example.com"),
        ("resume", "ops@example.com"),
    ]


def test_another_owner_cannot_pause_and_an_ended_rollout_cannot_be_paused(
    client: TestClient, services: Services, fleet: Fleet, w: Waves
) -> None:
    rollout_id = post(client, w).json()["rollout"]["id"]
    stranger = fleet.owner()
    response = client.post(f"/v1/rollouts/{rollout_id}/pause", headers=stranger.headers)
    assert (response.status_code, response.json()["message"]) == (404, "No such rollout")
    assert client.post(f"/v1/rollouts/{rollout_id}/abort", headers=w.owner.headers).status_code == 200
    response = client.post(f"/v1/rollouts/{rollout_id}/pause", headers=w.owner.headers)
    assert (response.status_code, response.json()["message"]) == (
        409,
        "the rollout has already ended: aborted",
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"waves": "{w0},{w0}"}, "waves: wave 2 ({w0}) is listed twice"),
        ({"waves": "{w0},nope"}, "waves: wave 2 is not a valid group id: 'nope'"),
        ({"waves": "{w0}", "canary": "{w0}"}, "give canary or waves, not both: canary=X is waves=X"),
        ({"waves": "{w0},{group}"}, "wave 2 ({group}) must be a subgroup of the group"),
        (
            {"waves": "{w0},{inner}"},
            "wave 2 ({inner}) overlaps canary ({w0}): waves must be disjoint subtrees",
        ),
        (
            {"waves": "{inner},{w0}"},
            "wave 2 ({w0}) overlaps canary ({inner}): waves must be disjoint subtrees",
        ),
        ({"waves": "{w0},{empty}"}, "wave 2 ({empty}) has no registered devices"),
        ({"waves": "{w0},{w1}", "wave3.soak": "5"}, "wave3.soak: there is no wave 3; the rollout has 2"),
        (
            {"waves": "{w0},{w1}", "wave2.auto_promote": "no"},
            "wave2.auto_promote: a wave may set only "
            "success_threshold, error_threshold, canary_timeout, soak",
        ),
        (
            {"waves": "{w0},{w1}", "wave2.soak": "x"},
            "wave2.soak: soak must be a whole number from 0 to 604800, not 'x'",
        ),
        ({"wave2.soak": "5"}, "wave2.soak only applies to a rollout: add a canary subgroup"),
        ({"max_failure_rate": "0.5"}, "max_failure_rate only applies to a rollout: add a canary subgroup"),
        ({"canary": "{w0}", "max_failure_rate": "1"}, "max_failure_rate must be a fraction in [0, 1)"),
        (
            {"canary": "{w0}", "min_devices": "0"},
            "min_devices must be a whole number from 1 to 1000000, not '0'",
        ),
    ],
)
def test_bad_waves_are_a_400_naming_the_wave_and_store_nothing(
    client: TestClient, services: Services, fleet: Fleet, w: Waves, fields: dict[str, str], message: str
) -> None:
    inner = fleet.group(w.owner, name="inner", parent=w.waves[0])
    fleet.device(inner, name="i0", firmware_version="1.0.0")
    empty = fleet.group(w.owner, name="empty", parent=w.group)
    ids = {
        "w0": w.waves[0].id,
        "w1": w.waves[1].id,
        "group": w.group.id,
        "inner": inner.id,
        "empty": empty.id,
    }
    data = {"group": w.group.id, "token": w.group.token, "version": "1.1.0"}
    data |= {k: v.format(**ids) for k, v in fields.items()}
    response = client.post(
        "/v1/ota/group",
        headers=w.owner.headers,
        data=data,
        files={"firmware": ("firmware.bin", build_image("1.1.0"))},
    )
    assert (response.status_code, response.json()["message"]) == (400, message.format(**ids))
    assert trigger_topics(services) == []
    assert client.get(f"/v1/rollouts?group={w.group.id}", headers=w.owner.headers).json() == {"rollouts": []}


def test_a_device_gone_dark_after_its_201_fails_as_dark_long_before_the_stage_times_out(
    client: TestClient, services: Services, w: Waves
) -> None:
    rollout_id = post(client, w, canary_timeout="1800").json()["rollout"]["id"]
    quiet, fine = w.devices[0]
    report(services, w, quiet, "update-response", {"code": 201})  # type: ignore[arg-type]
    succeed(services, w, [fine])
    # 30 s of silence, and a rate at which the image takes 60 s to download.
    policy = RetryPolicy(dark_after=30, download_rate=len(build_image("1.1.0")) / 60)
    started = utcnow()
    with write_session(services.engine) as session:
        locked = lock_rollout(session, rollout_id, skip_locked=False)
        assert locked is not None
        # Within the window: a download and a reboot take a while.
        later = started + timedelta(seconds=89)
        assert fail_dark_devices(session=session, rollout=locked, policy=policy, now=later) == 0
    with write_session(services.engine) as session:
        locked = lock_rollout(session, rollout_id, skip_locked=False)
        assert locked is not None
        later = utcnow() + timedelta(seconds=91)
        assert fail_dark_devices(session=session, rollout=locked, policy=policy, now=later) == 1
    tick(services)
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert (state["state"], state["reason"]) == (
        "halted",
        "1 canary device(s) failed; error_threshold tolerates 0",
    )
    assert {d["name"]: (d["outcome"], d["reason"]) for d in state["devices"]} == {
        quiet.name: ("failed", "dark"),
        fine.name: ("succeeded", None),
    }
    assert state["stages"][0]["failed_by_reason"] == {"dark": 1}


def test_a_device_rebooting_over_and_over_on_the_new_version_fails_its_wave_as_a_reboot_loop(
    client: TestClient, services: Services, w: Waves
) -> None:
    """While wave 1 soaks, one of its devices keeps booting again: each status
    says it booted ten seconds after the one before."""
    rollout_id = post(client, w, soak="600").json()["rollout"]["id"]
    looping, fine = w.devices[0]
    succeed(services, w, [fine])
    report(services, w, looping, "update-response", {"code": 201})  # type: ignore[arg-type]
    for uptime in (100, 90, 80, 70):
        report(services, w, looping, "status", {"fw_version": "1.1.0", "uptime": uptime})  # type: ignore[arg-type]
    tick(services)
    assert rollout(client, w, rollout_id)["state"] == "canary"  # type: ignore[arg-type]
    report(services, w, looping, "status", {"fw_version": "1.1.0", "uptime": 60})  # type: ignore[arg-type]
    tick(services)
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert state["state"] == "halted"
    assert {d["name"]: d["reason"] for d in state["devices"]}[looping.name] == "reboot-loop"
    assert state["stages"][0]["failed_by_reason"] == {"reboot-loop": 1}
    assert seen(client, w) == ["1.1.0", None, None, None]
