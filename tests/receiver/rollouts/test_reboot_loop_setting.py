"""OTASHIP_REBOOT_LOOP_BOOTS reaches the reports: a canary device that keeps
booting into the new version fails as a reboot loop on the boot after the
setting's count, and stays failed when it reports the version between two
crashes.

The reports go through the receiver's own ReportIngester into the real
database. Their boot times come from uptimes that drop at each report (a
device that booted 800 s ago, then 600 s ago...), so each report is a later
boot without waiting for the clock.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from otaship.receiver.background import Background
from otaship.receiver.mqtt.reports import ReportIngester
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from tests.conftest import Fleet
from tests.esp_image import build_image


def test_the_receiver_gives_its_ingester_the_setting(services: Services) -> None:
    chosen = Settings.from_env({"OTASHIP_REBOOT_LOOP_BOOTS": "7"}).reboot_loop_boots
    configured = dataclasses.replace(
        services, settings=dataclasses.replace(services.settings, reboot_loop_boots=chosen)
    )
    assert Background(configured).ingester.reboot_loop_boots == 7
    assert Background(services).ingester.reboot_loop_boots == 3


@pytest.mark.parametrize("limit", [1, 3])
def test_a_canary_device_fails_on_the_boot_after_the_settings_count(
    client: TestClient, services: Services, fleet: Fleet, limit: int
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner, name="fleet")
    canary = fleet.group(owner, name="canary", parent=group)
    looping = fleet.device(canary, name="looping", firmware_version="1.0.0")
    fleet.device(canary, name="slow", firmware_version="1.0.0")
    # Held for a promote: the canary stays judged however its devices do.
    answer = client.post(
        "/v1/ota/group",
        headers=owner.headers,
        data={
            "group": group.id,
            "token": group.token,
            "version": "1.1.0",
            "canary": canary.id,
            "auto_promote": "false",
            "error_threshold": "5",
        },
        files={"firmware": ("firmware.bin", build_image("1.1.0"))},
    )
    assert answer.status_code == 201, answer.text
    rollout_id = answer.json()["rollout"]["id"]
    ingester = ReportIngester(services.engine, reboot_loop_boots=limit)
    prefix = f"/{owner.user.mqtt_user}/devices/{looping.id}"

    def send(kind: str, body: dict[str, Any]) -> None:
        assert ingester.ingest_messages([(f"{prefix}/{kind}", json.dumps(body).encode())])

    def device() -> tuple[str, str | None]:
        state = client.get(f"/v1/rollouts/{rollout_id}", headers=owner.headers).json()
        (row,) = [d for d in state["devices"] if d["name"] == "looping"]
        return row["outcome"], row["reason"]

    send("status", {"fw_version": "1.0.0", "uptime": 5000})
    send("update-response", {"code": 201})
    uptimes = iter(range(1000, 0, -100))
    send("status", {"fw_version": "1.1.0", "uptime": next(uptimes)})  # its boot into 1.1.0
    assert device() == ("succeeded", None)
    for _ in range(limit):
        send("status", {"fw_version": "1.1.0", "uptime": next(uptimes)})
        assert device() == ("succeeded", None)
    send("status", {"fw_version": "1.1.0", "uptime": next(uptimes)})
    assert device() == ("failed", "reboot-loop")
    # Up again on 1.1.0 between two crashes: still failed.
    send("status", {"fw_version": "1.1.0", "uptime": next(uptimes)})
    assert device() == ("failed", "reboot-loop")
    stage = client.get(f"/v1/rollouts/{rollout_id}", headers=owner.headers).json()["stages"][0]
    assert (stage["failed"], stage["failed_by_reason"]) == (1, {"reboot-loop": 1})
