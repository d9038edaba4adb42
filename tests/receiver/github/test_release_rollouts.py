"""A published release, end to end, to a fleet of devices and back to GitHub.

`otaship serve` runs in a subprocess on SQLite or PostgreSQL, with its embedded
broker; the binding is made with `otaship github bind`; the delivery is signed
as GitHub signs it; simulated devices (otaship.simulator, real MQTT and HTTP)
take the image from the receiver as devices do. GitHub itself is the one thing
mocked, since it cannot run here: tests/github_standin.py stands in for its
REST API and for the host its asset downloads redirect to, and records every
request, so that the tests assert what GitHub would have been sent.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from otaship.github_deployments import KEY_FIELD
from otaship.receiver.github.signature import signature_of
from tests.action.test_canary import with_devices
from tests.action_fixtures import OWNER, Tenant, make_tenant
from tests.esp_image import build_image
from tests.github_standin import GithubStandIn, github_standin, release_payload
from tests.receiver_process import otaship_json
from tests.services import free_port
from tests.waiting import eventually

KEY = "test-secret-key-" + "e" * 32
TOKEN = "ghp_" + "E2eT0kenE2eT0kenE2eT0kenE2eT0kenE2e1"
COMMIT = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
REPO = "octo-org/thermostat"
TERMINAL = ("complete", "halted", "aborted", "rolled_back")


@pytest.fixture
def standin() -> Iterator[GithubStandIn]:
    with github_standin() as running:
        running.commits["v1.4.0"] = COMMIT
        running.host.assets[71] = build_image("1.4.0")
        yield running


@pytest.fixture
def t(tmp_path: Path, database_url: str, standin: GithubStandIn) -> Iterator[Tenant]:
    """A receiver with its embedded broker, the stand-in as its GitHub."""
    port = free_port()
    running = make_tenant(
        tmp_path / "data",
        f"embedded://127.0.0.1:{port}",
        f"127.0.0.1:{port}",
        OTASHIP_DATABASE_URL=database_url,
        OTASHIP_SECRET_KEY=KEY,
        OTASHIP_GITHUB_API_URL=standin.api_url,
    )
    yield running
    running.receiver.stop()


def bind(t: Tenant, group: dict[str, Any], *args: str) -> dict[str, Any]:
    """`otaship github bind`, the token from an environment variable as the docs say."""
    env = {**t.env, "THERMOSTAT_TOKEN": TOKEN}
    bound: dict[str, Any] = otaship_json(
        env,
        "github",
        "bind",
        "--owner",
        OWNER,
        "--repo",
        REPO,
        "--group",
        group["id"],
        "--asset",
        "firmware*.bin",
        "--token-env",
        "THERMOSTAT_TOKEN",
        "--report-deployments",
        *args,
    )
    return bound


def deliver_release(t: Tenant, bound: dict[str, Any]) -> str:
    """A `release` `published` delivery, signed with the binding's secret; its delivery id."""
    body = json.dumps(
        release_payload(assets=[(71, "firmware-esp32.bin", 1), (72, "firmware.elf", 10)])
    ).encode()
    delivery = str(uuid.uuid4())
    url = urlsplit(bound["webhook_url"])
    response = httpx.post(
        f"{t.url}{url.path}?{url.query}",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "release",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature_of(bound["secret"], body),
            "User-Agent": "GitHub-Hookshot/044aadd",
        },
        timeout=10,
    )
    assert (response.status_code, response.json()["outcome"]) == (202, "queued"), response.text
    return delivery


def delivered(t: Tenant, delivery: str) -> dict[str, Any]:
    """The delivery once its job has run."""
    found: dict[str, Any] = {}

    def done() -> bool:
        rows = httpx.get(f"{t.url}/v1/webhooks/github/deliveries", headers=t.headers, timeout=10).json()
        for row in rows["deliveries"]:
            if row["id"] == delivery and row["outcome"] != "queued":
                found.update(row)
                return True
        return False

    eventually(done, f"delivery {delivery} to be deployed", timeout=60)
    return found


def ended(t: Tenant, rollout_id: str, seen: list[tuple[str, int | None]]) -> dict[str, Any]:
    """The rollout once it ended; `seen` gets each (state, wave) it was found in, in order."""
    last: dict[str, Any] = {}

    def over() -> bool:
        last.update(t.rollout(rollout_id))
        now = (last["state"], last.get("wave"))
        if not seen or seen[-1] != now:
            seen.append(now)
        return last["state"] in TERMINAL

    eventually(over, f"rollout {rollout_id} to end", timeout=120, interval=0.1)
    return last


def test_a_release_rolls_out_through_a_healthy_canary_and_github_sees_each_stage(
    t: Tenant, standin: GithubStandIn
) -> None:
    group = t.group("thermostats")
    canary = t.group("canary", parent=group)
    canary_ids = t.devices(canary, 2, "1.0.0", "canary")
    fleet_ids = t.devices(group, 3, "1.0.0", "fleet")
    bound = bind(t, group, "--canary", canary["id"])
    # Devices that take a few seconds to reboot: each stage lasts well longer than
    # the reporter's 2 s pass, on a loaded machine too, so that GitHub is sent
    # every stage, and each stage's first status counts none of its devices yet.
    configs = [
        replace(t.sim(canary, canary_ids, "1.0.0"), reboot_delay=(5.0, 5.5)),
        replace(t.sim(group, fleet_ids, "1.0.0"), reboot_delay=(6.0, 6.5)),
    ]
    states: list[tuple[str, int | None]] = []

    def release_to_the_end() -> tuple[dict[str, Any], dict[str, Any]]:
        row = delivered(t, deliver_release(t, bound))
        rollout = ended(t, row["rollout"], states)
        eventually(lambda: len(standin.statuses) == 3, "the success status", timeout=30)
        return row, rollout

    (row, rollout), _ = asyncio.run(with_devices(t, configs, release_to_the_end))

    assert (row["outcome"], row["version"], row["commit"]) == ("deployed", "1.4.0", COMMIT)
    assert row["reason"].startswith(f"Firmware successfully deployed to canary subgroup {canary['id']}")
    assert rollout["state"] == "complete"
    assert [(s["name"], s["state"], s["targeted"], s["succeeded"]) for s in rollout["stages"]] == [
        ("canary", "passed", 2, 2),
        ("fleet", "complete", 5, 5),
    ]
    assert [state for state, _ in states] == ["canary", "fleet", "complete"]
    # Every device took the image from the receiver.
    versions = t.versions()
    assert {versions[d] for d in canary_ids + fleet_ids} == {"1.4.0"}

    # What GitHub was sent, in order: the tag's commit and the asset (with the
    # binding's token), the Deployment, then a status per stage.
    assert [(seen.method, seen.path) for seen in standin.api_seen] == [
        ("GET", f"/repos/{REPO}/commits/v1.4.0"),
        ("GET", f"/repos/{REPO}/releases/assets/71"),
        ("POST", f"/repos/{REPO}/deployments"),
        *[("POST", f"/repos/{REPO}/deployments/1000/statuses")] * 3,
    ]
    assert {seen.headers["authorization"] for seen in standin.api_seen} == {f"Bearer {TOKEN}"}
    assert standin.api_seen[1].headers["accept"] == "application/octet-stream"
    assert [(seen.path, seen.query) for seen in standin.host.seen] == [("/assets/71", "X-Amz-Signature=abc")]
    assert standin.deployments == [
        {
            "ref": COMMIT,
            "environment": "firmware/thermostats",
            "payload": {"version": "1.4.0", "rollout_id": rollout["id"], KEY_FIELD: row["id"]},
            "description": "otaship 1.4.0",
            "auto_merge": False,
            "required_contexts": [],
            "production_environment": True,
        }
    ]
    log_url = f"{t.url}/v1/rollouts/{rollout['id']}"
    first, fleet, last = standin.statuses
    assert first == (
        1000,
        {"state": "in_progress", "description": "1.4.0: canary, canary 0/2", "log_url": log_url},
    )
    # How many of the fleet had reported when the reporter looked is the devices' business.
    assert fleet[1]["state"] == "in_progress" and fleet[1]["log_url"] == log_url
    assert re.fullmatch(r"1\.4\.0: fleet, canary 2/2, fleet [0-5]/5", fleet[1]["description"])
    assert last == (
        1000,
        {"state": "success", "description": "1.4.0: complete, canary 2/2, fleet 5/5", "log_url": log_url},
    )


def test_a_binding_with_waves_rolls_a_release_out_wave_by_wave(t: Tenant, standin: GithubStandIn) -> None:
    group = t.group("thermostats")
    waves = [t.group(f"wave{n}", parent=group) for n in (1, 2, 3)]
    wave_ids = [t.devices(wave, 2, "1.0.0", f"wave{n}") for n, wave in enumerate(waves, 1)]
    direct_ids = t.devices(group, 2, "1.0.0", "direct")
    bound = bind(t, group, "--waves", ",".join(wave["id"] for wave in waves))
    assert bound["waves"] == ",".join(wave["id"] for wave in waves)
    # Each wave lasts well longer than the reporter's 2 s pass: GitHub is sent every wave.
    configs = [
        *(
            replace(t.sim(wave, ids, "1.0.0"), reboot_delay=(6.0, 6.5))
            for wave, ids in zip(waves, wave_ids, strict=True)
        ),
        replace(t.sim(group, direct_ids, "1.0.0"), reboot_delay=(6.0, 6.5)),
    ]
    states: list[tuple[str, int | None]] = []

    def release_to_the_end() -> tuple[dict[str, Any], dict[str, Any]]:
        row = delivered(t, deliver_release(t, bound))
        rollout = ended(t, row["rollout"], states)
        eventually(lambda: len(standin.statuses) == 5, "the success status", timeout=30)
        return row, rollout

    (row, rollout), _ = asyncio.run(with_devices(t, configs, release_to_the_end))

    assert row["outcome"] == "deployed"
    assert row["reason"] == (
        f"Firmware successfully deployed to canary subgroup {waves[0]['id']} of group {group['id']}; "
        "the whole group gets it once its 3 waves are healthy, in order"
    )
    # Wave by wave, in order, then the whole group.
    assert states == [("canary", 1), ("canary", 2), ("canary", 3), ("fleet", None), ("complete", None)]
    stages = rollout["stages"]
    assert [
        (s["name"], s["wave"], s["group"], s["state"], s["targeted"], s["succeeded"]) for s in stages
    ] == [
        ("canary", 1, waves[0]["id"], "passed", 2, 2),
        ("wave", 2, waves[1]["id"], "passed", 2, 2),
        ("wave", 3, waves[2]["id"], "passed", 2, 2),
        ("fleet", None, group["id"], "complete", 8, 8),
    ]
    # Each wave started once the one before it had ended.
    for before, after in itertools.pairwise(stages):
        assert before["ended_at"] <= after["started_at"]
    versions = t.versions()
    assert {versions[d] for d in [*direct_ids, *(i for ids in wave_ids for i in ids)]} == {"1.4.0"}

    log_url = f"{t.url}/v1/rollouts/{rollout['id']}"
    assert standin.deployments[0]["environment"] == "firmware/thermostats"
    assert {(deployment, body["log_url"]) for deployment, body in standin.statuses} == {(1000, log_url)}
    posted = [(body["state"], body["description"]) for _, body in standin.statuses]
    assert posted[:3] == [
        ("in_progress", "1.4.0: canary, canary 0/2"),
        ("in_progress", "1.4.0: wave 2, canary 2/2, wave 0/2"),
        ("in_progress", "1.4.0: wave 3, canary 2/2, wave 2/2, wave 0/2"),
    ]
    assert posted[3][0] == "in_progress"
    assert re.fullmatch(r"1\.4\.0: fleet, canary 2/2, wave 2/2, wave 2/2, fleet [0-8]/8", posted[3][1])
    assert posted[4] == ("success", "1.4.0: complete, canary 2/2, wave 2/2, wave 2/2, fleet 8/8")
