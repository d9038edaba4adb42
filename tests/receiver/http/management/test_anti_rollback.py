"""GET and PUT /v1/groups/{group_id}/anti-rollback, and the rule checked again
inside the deploy's own transaction."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from otaship.receiver.db.engine import write_session
from otaship.receiver.db.models import Group
from otaship.receiver.ids import utcnow
from otaship.receiver.rollouts.deploy import StoredFirmware, deploy_firmware
from otaship.receiver.services import Services
from otaship.receiver.storage import object_key
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image
from tests.receiver.http.management.test_ota_signed import post

BAD_BODY = 'Expected a JSON object {"enabled": true} or {"enabled": false}'


def path(group: Group) -> str:
    return f"/v1/groups/{group.id}/anti-rollback"


def put(client: TestClient, owner: Owner, group: Group, body: Any) -> httpx.Response:
    response: httpx.Response = client.put(path(group), json=body, headers=owner.headers)
    return response


def setting(group: Group, enabled: bool, set_by: Group | None, secure_version: int | None) -> dict[str, Any]:
    return {
        "group": group.id,
        "enabled": enabled,
        "set_by": set_by.id if set_by is not None else None,
        "secure_version": secure_version,
    }


def test_it_is_read_turned_on_and_off_and_subgroups_follow(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    child = fleet.group(owner, name="canary", parent=group)
    read = client.get(path(group), headers=owner.headers)
    assert (read.status_code, read.json()) == (200, setting(group, False, None, None))

    assert post(client, owner, group, "1.0.0", build_image("1.0.0", secure_version=2)).status_code == 201
    on = put(client, owner, group, {"enabled": True})
    assert (on.status_code, on.json()) == (200, setting(group, True, group, 2))
    assert client.get(path(group), headers=owner.headers).json() == setting(group, True, group, 2)
    # The subgroup runs its parent's firmware and follows its setting; its own
    # setting off does not undo its parent's.
    assert client.get(path(child), headers=owner.headers).json() == setting(child, False, group, 2)
    assert put(client, owner, child, {"enabled": False}).json() == setting(child, False, group, 2)
    assert put(client, owner, child, {"enabled": True}).json() == setting(child, True, child, 2)

    off = put(client, owner, group, {"enabled": False})
    assert (off.status_code, off.json()) == (200, setting(group, False, None, 2))
    assert client.get(path(child), headers=owner.headers).json() == setting(child, True, child, 2)


def test_what_the_api_turns_on_refuses_a_lower_secure_version(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    assert post(client, owner, group, "1.0.0", build_image("1.0.0", secure_version=3)).status_code == 201
    # Off: a step back is taken.
    assert post(client, owner, group, "1.0.1", build_image("1.0.1", secure_version=2)).status_code == 201
    assert put(client, owner, group, {"enabled": True}).status_code == 200
    response = post(client, owner, group, "1.0.2", build_image("1.0.2", secure_version=1))
    assert (response.status_code, response.json()) == (
        400,
        {
            "message": f"Firmware secure_version 1 is lower than 2, the secure_version this group runs: "
            f"anti-rollback is on (set on group {group.id}); build it with a secure_version of at least 2"
        },
    )
    assert post(client, owner, group, "1.0.3", build_image("1.0.3", secure_version=2)).status_code == 201
    assert put(client, owner, group, {"enabled": False}).status_code == 200
    assert post(client, owner, group, "1.0.4", build_image("1.0.4", secure_version=0)).status_code == 201


def test_another_owners_group_is_404(client: TestClient, fleet: Fleet) -> None:
    owner, stranger = fleet.owner(), fleet.owner()
    group = fleet.group(owner)
    no_group = {"message": "No such group"}
    read = client.get(path(group), headers=stranger.headers)
    assert (read.status_code, read.json()) == (404, no_group)
    changed = put(client, stranger, group, {"enabled": True})
    assert (changed.status_code, changed.json()) == (404, no_group)
    unknown = client.put(
        "/v1/groups/5e1b76bc4315b70eb242567a/anti-rollback", json={"enabled": True}, headers=owner.headers
    )
    assert (unknown.status_code, unknown.json()) == (404, no_group)
    # Nothing changed for the owner.
    assert client.get(path(group), headers=owner.headers).json() == setting(group, False, None, None)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "Invalid JSON: EOF while parsing a value at line 1 column 0"),
        (b"[true]", "Input should be an object"),
        (b"{}", "enabled: Field required"),
        (b'{"enabled": "true"}', "enabled: Input should be a valid boolean"),
        (b'{"enabled": 1}', "enabled: Input should be a valid boolean"),
        (b'{"enabled": null}', "enabled: Input should be a valid boolean"),
        (b'{"enabled": true, "floor": 3}', "floor: Extra inputs are not permitted"),
    ],
)
def test_a_bad_body_is_a_400_that_says_what_is_wrong_and_changes_nothing(
    client: TestClient, fleet: Fleet, body: bytes, error: str
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    response = client.put(
        path(group), content=body, headers={**owner.headers, "Content-Type": "application/json"}
    )
    assert (response.status_code, response.json()) == (400, {"message": f"{BAD_BODY}: {error}"})
    assert client.get(path(group), headers=owner.headers).json() == setting(group, False, None, None)


def test_a_huge_body_is_a_413_and_a_bad_id_a_400(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    response = client.put(path(group), content=b" " * 2000, headers=owner.headers)
    assert (response.status_code, response.json()) == (
        413,
        {"message": "The body is over 1024 bytes; it is one boolean"},
    )
    bad = client.get("/v1/groups/a%01b/anti-rollback", headers=owner.headers)
    assert (bad.status_code, bad.json()) == (400, {"message": "group_id must not contain control characters"})
    unauthorized = client.put(path(group), json={"enabled": True})
    assert unauthorized.status_code == 401


def concurrent_deploy(services: Services, group: Group, secure_version: int, folder: Path) -> StoredFirmware:
    """A deploy of another image to `group`, committed on its own connection."""
    image = build_image("1.0.5", secure_version=secure_version, seed=5)
    source = folder / "concurrent.bin"
    source.write_bytes(image)
    sha256 = hashlib.sha256(image).hexdigest()
    firmware = StoredFirmware(
        object_key=object_key(sha256),
        sha256=sha256,
        md5=hashlib.md5(image).hexdigest(),
        size=len(image),
        chip="esp32",
        secure_version=secure_version,
    )
    services.storage.put(firmware.object_key, source)
    with write_session(services.engine) as session:
        deploy_firmware(session=session, group_id=group.id, version="1.0.5", firmware=firmware, now=utcnow())
    return firmware


@pytest.mark.parametrize("canary", [False, True], ids=["plain", "canary"])
def test_a_floor_raised_while_an_upload_was_checked_is_seen_by_its_transaction(
    client: TestClient,
    fleet: Fleet,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    canary: bool,
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    subgroup = fleet.group(owner, name="canary", parent=group)
    fleet.device(subgroup)
    assert post(client, owner, group, "1.0.0", build_image("1.0.0", secure_version=1)).status_code == 201
    assert put(client, owner, group, {"enabled": True}).status_code == 200

    # The upload passes its checks against secure_version 1; then, while its
    # object is stored (after the checks, before its transaction), another
    # deploy raises the group to 2.
    refresh = services.storage.refresh
    raised: list[StoredFirmware] = []

    def refresh_after_a_deploy(key: str) -> bool:
        if not raised:
            raised.append(concurrent_deploy(services, group, secure_version=2, folder=tmp_path))
        return refresh(key)

    monkeypatch.setattr(services.storage, "refresh", refresh_after_a_deploy)
    fields = {"group": group.id, "token": group.token, "version": "1.0.6"}
    if canary:
        fields["canary"] = subgroup.id
    response = client.post(
        "/v1/ota/group",
        data=fields,
        files={
            "firmware": ("firmware.bin", build_image("1.0.6", secure_version=1), "application/octet-stream")
        },
        headers=owner.headers,
    )
    assert len(raised) == 1, response.text
    assert (response.status_code, response.json()) == (
        400,
        {
            "message": f"Firmware secure_version 1 is lower than 2, the secure_version this group runs: "
            f"anti-rollback is on (set on group {group.id}); build it with a secure_version of at least 2"
        },
    )
    # The group runs the concurrent deploy, and no rollout started.
    assert client.get(f"/v1/ota/group/latest/{group.id}").json() == {"ver": "1.0.5"}
    assert client.get(f"/v1/ota/group/latest/{subgroup.id}").json() == {"ver": "1.0.5"}
    rollouts = client.get("/v1/rollouts", params={"group": group.id}, headers=owner.headers).json()
    assert rollouts["rollouts"] == []


def test_anti_rollback_turned_on_while_an_upload_was_checked_is_seen_by_its_transaction(
    client: TestClient, fleet: Fleet, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    assert post(client, owner, group, "1.0.0", build_image("1.0.0", secure_version=2)).status_code == 201
    refresh = services.storage.refresh

    def refresh_after_turning_it_on(key: str) -> bool:
        with write_session(services.engine) as session:
            row = session.get(Group, group.id)
            assert row is not None
            row.anti_rollback = True
            session.add(row)
        return refresh(key)

    monkeypatch.setattr(services.storage, "refresh", refresh_after_turning_it_on)
    response = post(client, owner, group, "1.0.1", build_image("1.0.1", secure_version=1))
    assert response.status_code == 400
    assert response.json()["message"].startswith("Firmware secure_version 1 is lower than 2")
    assert client.get(f"/v1/ota/group/latest/{group.id}").json() == {"ver": "1.0.0"}
