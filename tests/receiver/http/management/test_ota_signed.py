"""POST /v1/ota/group into a group with signing keys: verified before anything is stored."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from otaship.firmware.signing_keys import Scheme, load_public_key
from otaship.receiver.db.models import Group
from otaship.receiver.services import Services
from otaship.receiver.storage import object_key
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image
from tests.signing import blocks, private_pem, public_pem, sign, with_sector


def post(client: TestClient, owner: Owner, group: Group, version: str, firmware: bytes) -> httpx.Response:
    response: httpx.Response = client.post(
        "/v1/ota/group",
        data={"group": group.id, "token": group.token, "version": version},
        files={"firmware": ("firmware.bin", firmware, "application/octet-stream")},
        headers=owner.headers,
    )
    return response


def register(client: TestClient, owner: Owner, group: Group, scheme: Scheme, name: str = "a") -> str:
    pem = public_pem(private_pem(scheme, name)).decode()
    response = client.post(f"/v1/groups/{group.id}/keys", json={"public_key": pem}, headers=owner.headers)
    assert response.status_code == 201, response.text
    digest: str = response.json()["digest"]
    return digest


def digest_of(scheme: Scheme, name: str = "a") -> str:
    return load_public_key(public_pem(private_pem(scheme, name))).digest


def refused(
    client: TestClient, services: Services, owner: Owner, group: Group, firmware: bytes, message: str
) -> None:
    response = post(client, owner, group, "1.0.0", firmware)
    assert (response.status_code, response.json()) == (400, {"message": message})
    # Nothing reached the storage devices download from, and no record was written.
    assert not services.storage.exists(object_key(hashlib.sha256(firmware).hexdigest()))
    assert client.get("/v1/ota/group", headers=owner.headers).json()["recordsTotal"] == 0


def ota_of(client: TestClient, owner: Owner, group: Group) -> dict[str, Any]:
    otas = client.get("/v1/ota/group", headers=owner.headers, params={"limit": 100}).json()["otas"]
    (ota,) = [o for o in otas if o["group"] == group.id]
    return ota  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("scheme", "chip"),
    [
        (Scheme.RSA_3072, "esp32s3"),
        (Scheme.ECDSA_P256, "esp32c6"),
        (Scheme.ECDSA_P384, "esp32c5"),
        (Scheme.ECDSA_P256, "esp32c61"),
    ],
)
def test_a_signed_image_is_deployed_and_recorded_as_signed(
    client: TestClient, fleet: Fleet, services: Services, scheme: Scheme, chip: str
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner, chip=chip)
    digest = register(client, owner, group, scheme)
    signed = sign(build_image("1.0.0", chip=chip), private_pem(scheme))
    response = post(client, owner, group, "1.0.0", signed)
    assert response.status_code == 201, response.text
    ota = response.json()["ota"]
    assert (ota["signed"], ota["signed_by"], ota["size"]) == (True, digest, len(signed))
    assert ota_of(client, owner, group) == ota
    # Devices download the signed file itself, signature sector and all.
    download = client.get(f"/v1/ota/group/download/{group.id}{group.token}")
    assert download.content == signed


def test_refusals_each_say_what_is_wrong(client: TestClient, fleet: Fleet, services: Services) -> None:
    owner = fleet.owner()
    group = fleet.group(owner, chip="esp32c6")
    digest = register(client, owner, group, Scheme.ECDSA_P256)
    image = build_image("1.0.0", chip="esp32c6", code_size=8192)
    signed = sign(image, private_pem(Scheme.ECDSA_P256))

    refused(
        client,
        services,
        owner,
        group,
        image,
        "Firmware is not signed: this group accepts only images with a Secure Boot V2 signature block by "
        f"one of its keys ({digest}); sign it with espsecure sign-data --version 2",
    )
    stranger = digest_of(Scheme.ECDSA_P256, "stranger")
    refused(
        client,
        services,
        owner,
        group,
        sign(image, private_pem(Scheme.ECDSA_P256, "stranger")),
        f"Firmware is not signed by a key registered for this group: block 0 by key {stranger}; "
        f"the group's keys are {digest}",
    )
    # A byte of the signature flipped, and its CRC made right: well-formed, and false.
    block = bytearray(blocks(signed)[0])
    block[150] ^= 0x01
    import struct
    import zlib

    block[1196:1200] = struct.pack("<I", zlib.crc32(bytes(block[:1196])))
    refused(
        client,
        services,
        owner,
        group,
        with_sector(signed, [bytes(block), b"", b""]),
        f"Firmware signature does not verify: block 0 by registered key {digest} does not match the image "
        "(the image or its signature changed after signing)",
    )
    refused(
        client,
        services,
        owner,
        group,
        signed[:-100],
        "Firmware is not a valid ESP application image: the signature sector at offset "
        f"0x{len(signed) - 4096:X} is truncated: the file holds 3996 of its 4096 bytes; upload the whole "
        "signed file",
    )


def test_three_blocks_of_which_only_the_third_is_valid_is_accepted(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    # ESP32 reads only the first block (its test is in tests/firmware/test_signatures.py).
    group = fleet.group(owner, chip="esp32s3")
    digest = register(client, owner, group, Scheme.RSA_3072)
    image = build_image("1.0.0", chip="esp32s3")
    signed = sign(image, private_pem(Scheme.RSA_3072))
    damaged = bytearray(blocks(signed)[0])
    damaged[500] ^= 0xFF
    other = blocks(sign(image, private_pem(Scheme.RSA_3072, "other")))[0]
    three = with_sector(signed, [bytes(damaged), other, blocks(signed)[0]])
    response = post(client, owner, group, "1.0.0", three)
    assert response.status_code == 201, response.text
    assert response.json()["ota"]["signed_by"] == digest


def test_a_group_without_keys_takes_unsigned_and_subgroups_inherit_keys(
    client: TestClient, fleet: Fleet, services: Services
) -> None:
    owner = fleet.owner()
    parent = fleet.group(owner)
    child = fleet.group(owner, name="canary", parent=parent)
    response = post(client, owner, parent, "1.0.0", build_image("1.0.0"))
    assert response.status_code == 201
    assert (response.json()["ota"]["signed"], response.json()["ota"]["signed_by"]) == (False, None)
    # A signed image into a group without keys is taken, and recorded unsigned: nothing checked it.
    signed = sign(build_image("1.0.1"), private_pem(Scheme.RSA_3072))
    assert post(client, owner, parent, "1.0.1", signed).json()["ota"]["signed"] is False

    digest = register(client, owner, parent, Scheme.RSA_3072)
    unsigned = post(client, owner, child, "1.0.2", build_image("1.0.2"))
    assert (unsigned.status_code, unsigned.json()["message"].split(":")[0]) == (400, "Firmware is not signed")
    taken = post(client, owner, child, "1.0.3", sign(build_image("1.0.3"), private_pem(Scheme.RSA_3072)))
    assert (taken.status_code, taken.json()["ota"]["signed_by"]) == (201, digest)


def test_rotation_end_to_end(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner, chip="esp32s3")
    old = register(client, owner, group, Scheme.RSA_3072, "old")
    image = build_image("1.0.0", chip="esp32s3")
    assert (
        post(client, owner, group, "1.0.0", sign(image, private_pem(Scheme.RSA_3072, "old"))).status_code
        == 201
    )

    # The new key is added, and images carry both blocks while devices move over.
    new = register(client, owner, group, Scheme.RSA_3072, "new")

    def both(version: str) -> bytes:
        return sign(
            build_image(version, chip="esp32s3"),
            private_pem(Scheme.RSA_3072, "old"),
            private_pem(Scheme.RSA_3072, "new"),
        )

    assert post(client, owner, group, "1.1.0", both("1.1.0")).json()["ota"]["signed_by"] == old
    assert client.delete(f"/v1/groups/{group.id}/keys/{old}", headers=owner.headers).status_code == 200
    assert post(client, owner, group, "1.2.0", both("1.2.0")).json()["ota"]["signed_by"] == new
    only_old = sign(build_image("1.3.0", chip="esp32s3"), private_pem(Scheme.RSA_3072, "old"))
    response = post(client, owner, group, "1.3.0", only_old)
    assert (response.status_code, response.json()["message"]) == (
        400,
        f"Firmware is not signed by a key registered for this group: block 0 by key {old}; "
        f"the group's keys are {new}",
    )
    # Once neither key is registered, the two-block image is refused too.
    third = register(client, owner, group, Scheme.RSA_3072, "third")
    assert client.delete(f"/v1/groups/{group.id}/keys/{new}", headers=owner.headers).status_code == 200
    response = post(client, owner, group, "1.4.0", both("1.4.0"))
    assert (response.status_code, response.json()["message"]) == (
        400,
        f"Firmware is not signed by a key registered for this group: block 0 by key {old}, block 1 by key "
        f"{new}; the group's keys are {third}",
    )


def test_anti_rollback_refuses_a_lower_secure_version(
    client: TestClient, fleet: Fleet, services: Services, tmp_path: Path
) -> None:
    from otaship.receiver.db.engine import write_session

    owner = fleet.owner()
    group = fleet.group(owner)
    child = fleet.group(owner, name="canary", parent=group)
    assert post(client, owner, group, "1.0.0", build_image("1.0.0", secure_version=3)).status_code == 201
    # Off: a lower secure_version is taken.
    assert post(client, owner, group, "1.0.1", build_image("1.0.1", secure_version=2)).status_code == 201
    with write_session(services.engine) as session:
        row = session.get(Group, group.id)
        assert row is not None
        row.anti_rollback = True
        session.add(row)
    response = post(client, owner, group, "1.0.2", build_image("1.0.2", secure_version=1))
    assert (response.status_code, response.json()["message"]) == (
        400,
        f"Firmware secure_version 1 is lower than 2, the secure_version this group runs: anti-rollback is on "
        f"(set on group {group.id}); build it with a secure_version of at least 2",
    )
    # The subgroup runs its parent's firmware, and follows its setting.
    response = post(client, owner, child, "1.0.2", build_image("1.0.2", secure_version=1))
    assert response.status_code == 400
    assert post(client, owner, group, "1.0.3", build_image("1.0.3", secure_version=2)).status_code == 201
    assert post(client, owner, group, "1.0.4", build_image("1.0.4", secure_version=4)).status_code == 201
