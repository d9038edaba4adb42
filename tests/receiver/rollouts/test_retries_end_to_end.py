"""Retries end to end: a real receiver (`otaship serve`), Mosquitto, and
simulated IoTaaP OS devices that fail their download once, or every time.

A device in a group can only be reached again through its group's trigger;
these tests check that the receiver publishes it again for a device that
failed, that the device then updates, that one which fails every attempt is
reported failed with its last code, and that nothing is retried when every
device succeeded. Backoffs are one second here so that the tests run quickly.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.action_fixtures import Tenant, make_tenant
from tests.receiver.mqtt.test_fleet import own_mosquitto, run_fleets  # noqa: F401  (a fixture)


@pytest.fixture
def retrying(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Tenant]:
    """A receiver that retries twice, after 1 s and then 2 s, on a Mosquitto of
    its own, so that nothing else on a shared broker can disturb the count of
    triggers and reports."""
    port, _ = request.getfixturevalue("own_mosquitto")
    running = make_tenant(
        tmp_path / "data",
        f"mqtt://127.0.0.1:{port}",
        f"127.0.0.1:{port}",
        OTASHIP_TRIGGER_RETRIES="2",
        OTASHIP_TRIGGER_RETRY_BACKOFF="1",
        # One worker: /metrics counts per worker process, and these tests read it.
        OTASHIP_WORKERS="1",
    )
    yield running
    running.receiver.stop()


def counters(tenant: Tenant) -> dict[str, float]:
    """The retry counters of the receiver's /metrics."""
    text = httpx.get(f"{tenant.url}/metrics", timeout=10).text
    names = ("otaship_device_retries_scheduled", "otaship_device_retries", "otaship_retry_triggers")
    found = {}
    for name in names:
        match = re.search(rf"^{name}_total (\S+)$", text, re.MULTILINE)
        assert match is not None, f"{name}_total is not in /metrics"
        found[name] = float(match.group(1))
    return found


def devices_of(state: dict[str, Any], stage: str) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in state["devices"] if d["stage"] == stage}


def canary_rollout(t: Tenant) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A fleet group with a canary subgroup (one good device) and a `rest` subgroup."""
    fleet = t.group("fleet")
    canary = t.group("canary", parent=fleet)
    rest = t.group("rest", parent=fleet)
    return fleet, canary, rest


def test_a_device_whose_download_fails_once_is_retried_and_updates(retrying: Tenant) -> None:
    t = retrying
    fleet, canary, rest = canary_rollout(t)
    canary_ids = t.devices(canary, 1, "1.0.0", "canary")
    good_ids = t.devices(rest, 2, "1.0.0", "good")
    (flaky,) = t.devices(rest, 1, "1.0.0", "flaky")
    fleets = [
        t.sim(canary, canary_ids, "1.0.0"),
        t.sim(rest, good_ids, "1.0.0"),
        t.sim(rest, [flaky], "1.0.0", download_failures=1),
    ]
    rollout_id, (_, good, flaky_fleet) = asyncio.run(
        run_fleets(t, fleets, lambda: t.deploy(fleet, "1.1.0", canary=canary["id"])["rollout"]["id"])
    )
    state = t.rollout(rollout_id)
    assert state["state"] == "complete", state
    fleet_stage = state["stages"][1]
    assert (fleet_stage["succeeded"], fleet_stage["failed"], fleet_stage["retrying"]) == (4, 0, 0)
    assert fleet_stage["retries"] == 1
    devices = devices_of(state, "fleet")
    assert (devices[flaky]["outcome"], devices[flaky]["retries"]) == ("succeeded", 1)
    assert devices[flaky]["next_retry_at"] is None
    assert all(devices[d]["retries"] == 0 for d in canary_ids + good_ids)
    # The flaky device failed its first download (203), and updated on the retry.
    (device,) = flaky_fleet.devices
    assert (device.triggers, device.errors, device.updates, device.version) == (2, 1, 1, "1.1.0")
    # The good devices of its group were asked too: one `latest` check and a 202 each.
    assert [(d.triggers, d.updates, d.last_code) for d in good.devices] == [(2, 1, 202), (2, 1, 202)]
    assert t.versions()[flaky] == "1.1.0"
    assert counters(t) == {
        "otaship_device_retries_scheduled": 1,
        "otaship_device_retries": 1,
        "otaship_retry_triggers": 1,
    }


def test_a_device_that_fails_every_attempt_is_reported_failed_with_its_last_code(retrying: Tenant) -> None:
    t = retrying
    fleet, canary, rest = canary_rollout(t)
    canary_ids = t.devices(canary, 1, "1.0.0", "canary")
    (broken,) = t.devices(rest, 1, "1.0.0", "broken")
    fleets = [t.sim(canary, canary_ids, "1.0.0"), t.sim(rest, [broken], "1.0.0", download_failures=100)]
    rollout_id, (_, broken_fleet) = asyncio.run(
        run_fleets(t, fleets, lambda: t.deploy(fleet, "1.1.0", canary=canary["id"])["rollout"]["id"])
    )
    state = t.rollout(rollout_id)
    # The fleet stage ends once nothing is pending or waiting for a retry.
    assert state["state"] == "complete", state
    assert state["reason"] == "all 2 device(s) reported"
    device = devices_of(state, "fleet")[broken]
    assert {k: device[k] for k in ("outcome", "code", "retries", "fw_version", "next_retry_at")} == {
        "outcome": "failed",
        "code": 203,
        "retries": 2,
        "fw_version": "1.0.0",
        "next_retry_at": None,
    }
    assert state["stages"][1]["failed"] == 1
    # The first trigger and two retries: three attempts, three 203s.
    (simulated,) = broken_fleet.devices
    assert (simulated.triggers, simulated.errors, simulated.version) == (3, 3, "1.0.0")
    assert counters(t) == {
        "otaship_device_retries_scheduled": 2,
        "otaship_device_retries": 2,
        "otaship_retry_triggers": 2,
    }


def test_nothing_is_retried_when_every_device_succeeded(retrying: Tenant) -> None:
    t = retrying
    fleet, canary, rest = canary_rollout(t)
    canary_ids = t.devices(canary, 2, "1.0.0", "canary")
    rest_ids = t.devices(rest, 3, "1.0.0", "rest")
    fleets = [t.sim(canary, canary_ids, "1.0.0"), t.sim(rest, rest_ids, "1.0.0")]
    rollout_id, (canary_fleet, rest_fleet) = asyncio.run(
        run_fleets(t, fleets, lambda: t.deploy(fleet, "1.1.0", canary=canary["id"])["rollout"]["id"])
    )
    state = t.rollout(rollout_id)
    assert state["state"] == "complete", state
    assert [(s["retries"], s["retrying"]) for s in state["stages"]] == [(0, 0), (0, 0)]
    assert {d["retries"] for d in state["devices"]} == {0}
    assert [d.triggers for d in canary_fleet.devices + rest_fleet.devices] == [1] * 5
    assert set(counters(t).values()) == {0}


def newest_deploy(t: Tenant, group: dict[str, Any]) -> dict[str, Any]:
    """The group's newest plain deploy, with its devices, as GET /v1/deployments/<id> shows it."""
    listing = httpx.get(
        f"{t.url}/v1/deployments", params={"group": group["id"]}, headers=t.headers, timeout=10
    )
    assert listing.status_code == 200, listing.text
    newest = listing.json()["deployments"][0]["id"]
    body: dict[str, Any] = httpx.get(f"{t.url}/v1/deployments/{newest}", headers=t.headers, timeout=10).json()
    return body


def deploy_devices(t: Tenant, group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {device["id"]: device for device in newest_deploy(t, group)["devices"]}


def followed_until_the_end(t: Tenant, group: dict[str, Any]) -> bool:
    state: str = newest_deploy(t, group)["state"]
    return state == "ended"


def test_a_plain_deploy_retries_a_device_that_failed_once_and_one_that_always_fails(retrying: Tenant) -> None:
    t = retrying
    group = t.group("fleet")
    good_ids = t.devices(group, 2, "1.0.0", "good")
    (flaky,) = t.devices(group, 1, "1.0.0", "flaky")
    (broken,) = t.devices(group, 1, "1.0.0", "broken")
    fleets = [
        t.sim(group, good_ids, "1.0.0"),
        t.sim(group, [flaky], "1.0.0", download_failures=1),
        t.sim(group, [broken], "1.0.0", download_failures=100),
    ]

    def deploy() -> tuple[None, Any]:
        t.deploy(group, "1.1.0")
        return None, lambda: followed_until_the_end(t, group)

    _, (good, flaky_fleet, broken_fleet) = asyncio.run(run_fleets(t, fleets, deploy))
    rows = deploy_devices(t, group)
    assert {d: (r["outcome"], r["retries"], r["fw_version"]) for d, r in rows.items()} == {
        good_ids[0]: ("succeeded", 0, "1.1.0"),
        good_ids[1]: ("succeeded", 0, "1.1.0"),
        flaky: ("succeeded", 1, "1.1.0"),
        broken: ("failed", 2, "1.0.0"),
    }
    # The last code: the good ones answered the retry of their group with a 202,
    # the broken one failed its last attempt with a 203.
    assert (rows[good_ids[0]]["code"], rows[good_ids[1]]["code"], rows[broken]["code"]) == (202, 202, 203)
    followed = newest_deploy(t, group)
    assert followed["reason"] == "all 4 device(s) reported"
    counts = ("targeted", "succeeded", "failed", "retrying", "pending", "retries")
    assert {k: followed[k] for k in counts} == {
        "targeted": 4,
        "succeeded": 3,
        "failed": 1,
        "retrying": 0,
        "pending": 0,
        "retries": 3,
    }
    (simulated_flaky,) = flaky_fleet.devices
    assert (simulated_flaky.errors, simulated_flaky.updates, simulated_flaky.version) == (1, 1, "1.1.0")
    (simulated_broken,) = broken_fleet.devices
    assert (simulated_broken.triggers, simulated_broken.errors, simulated_broken.version) == (3, 3, "1.0.0")
    assert {d.version for d in good.devices} == {"1.1.0"}
    versions = t.versions()
    assert (versions[flaky], versions[broken]) == ("1.1.0", "1.0.0")
    retried = counters(t)
    # Both failed on the first trigger: one retry trigger carried both; the broken one needed a second.
    assert retried["otaship_device_retries"] == 3
    assert retried["otaship_device_retries_scheduled"] == 3
    assert retried["otaship_retry_triggers"] in (2, 3)


def test_a_plain_deploy_where_every_device_succeeded_retries_nothing(retrying: Tenant) -> None:
    t = retrying
    group = t.group("fleet")
    ids = t.devices(group, 3, "1.0.0", "good")

    def deploy() -> tuple[None, Any]:
        t.deploy(group, "1.1.0")
        return None, lambda: followed_until_the_end(t, group)

    _, (fleet,) = asyncio.run(run_fleets(t, [t.sim(group, ids, "1.0.0")], deploy))
    rows = deploy_devices(t, group)
    assert {(r["outcome"], r["retries"]) for r in rows.values()} == {("succeeded", 0)}
    assert [d.triggers for d in fleet.devices] == [1, 1, 1]
    assert set(counters(t).values()) == {0}
