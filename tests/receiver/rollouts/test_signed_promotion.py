"""A promotion moves a stored image without verifying it again, but never past a
key the group got since: it is checked against the keys the group has then."""

from __future__ import annotations

import json

import httpx
from starlette.testclient import TestClient

from otaship.firmware.signing_keys import Scheme
from otaship.receiver.db.models import Device, Group
from otaship.receiver.mqtt.reports import ReportIngester
from otaship.receiver.services import Services
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image
from tests.signing import private_pem, public_pem, sign


def start_canary(
    client: TestClient, fleet: Fleet, services: Services, owner: Owner, firmware: bytes
) -> tuple[Group, str]:
    group = fleet.group(owner)
    canary = fleet.group(owner, name="canary", parent=group)
    bench: list[Device] = [fleet.device(canary, name=f"bench{i}", firmware_version="1.0.0") for i in range(2)]
    response = client.post(
        "/v1/ota/group",
        data={
            "group": group.id,
            "token": group.token,
            "version": "2.0.0",
            "canary": canary.id,
            "auto_promote": "false",
        },
        files={"firmware": ("firmware.bin", firmware, "application/octet-stream")},
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    ReportIngester(services.engine).ingest_messages(
        [
            (
                f"/{owner.user.mqtt_user}/devices/{device.id}/status",
                json.dumps({"fw_version": "2.0.0"}).encode(),
            )
            for device in bench
        ]
    )
    return group, response.json()["rollout"]["id"]


def add_key(client: TestClient, owner: Owner, group: Group, name: str) -> str:
    pem = public_pem(private_pem(Scheme.RSA_3072, name)).decode()
    response = client.post(f"/v1/groups/{group.id}/keys", json={"public_key": pem}, headers=owner.headers)
    assert response.status_code == 201
    digest: str = response.json()["digest"]
    return digest


def promote(client: TestClient, owner: Owner, rollout_id: str) -> httpx.Response:
    response: httpx.Response = client.post(f"/v1/rollouts/{rollout_id}/promote", headers=owner.headers)
    return response


def test_a_key_added_after_the_canary_halts_the_promotion(
    client: TestClient, fleet: Fleet, services: Services
) -> None:
    owner = fleet.owner()
    image = build_image("2.0.0")
    group, rollout_id = start_canary(client, fleet, services, owner, image)
    digest = add_key(client, owner, group, "late")
    response = promote(client, owner, rollout_id)
    reason = (
        "the image no longer passes the signature check: the image "
        f"{__import__('hashlib').sha256(image).hexdigest()[:12]} is not signed by any key group {group.id} "
        f"has now ({digest}); upload it again signed by one of them"
    )
    assert (response.status_code, response.json()) == (409, {"message": f"the rollout was halted: {reason}"})
    rollout = client.get(f"/v1/rollouts/{rollout_id}", headers=owner.headers).json()
    assert (rollout["state"], rollout["reason"]) == ("halted", reason)
    # The whole group never got it.
    otas = client.get("/v1/ota/group", headers=owner.headers).json()["otas"]
    assert [o["group"] for o in otas] != [group.id] and group.id not in [o["group"] for o in otas]


def test_a_signed_image_is_promoted_while_its_key_is_the_groups(
    client: TestClient, fleet: Fleet, services: Services
) -> None:
    owner = fleet.owner()
    # The key is on the fleet group before the upload: the canary's deploy verified it.
    group = fleet.group(owner)
    digest = add_key(client, owner, group, "release")
    canary = fleet.group(owner, name="canary", parent=group)
    bench = fleet.device(canary, name="bench", firmware_version="1.0.0")
    signed = sign(build_image("2.0.0"), private_pem(Scheme.RSA_3072, "release"))
    response = client.post(
        "/v1/ota/group",
        data={
            "group": group.id,
            "token": group.token,
            "version": "2.0.0",
            "canary": canary.id,
            "auto_promote": "false",
        },
        files={"firmware": ("firmware.bin", signed, "application/octet-stream")},
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    assert response.json()["ota"]["signed_by"] == digest
    ReportIngester(services.engine).ingest_messages(
        [(f"/{owner.user.mqtt_user}/devices/{bench.id}/status", json.dumps({"fw_version": "2.0.0"}).encode())]
    )
    # A second key added meanwhile changes nothing: one valid block by one of its keys is enough.
    add_key(client, owner, group, "next")
    promoted = promote(client, owner, response.json()["rollout"]["id"])
    assert (promoted.status_code, promoted.json()["state"]) == (200, "fleet")
    otas = client.get("/v1/ota/group", headers=owner.headers).json()["otas"]
    (fleet_ota,) = [o for o in otas if o["group"] == group.id]
    assert (fleet_ota["signed"], fleet_ota["signed_by"]) == (True, digest)
