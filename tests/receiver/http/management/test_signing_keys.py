"""The signing keys API: list, add and remove a group's keys, owner by owner."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.testclient import TestClient

from otaship.firmware.signing_keys import Scheme, load_public_key
from otaship.receiver.db.models import Group
from tests.conftest import Fleet, Owner
from tests.signing import private_pem, public_pem


def public(scheme: Scheme = Scheme.RSA_3072, name: str = "a") -> str:
    return public_pem(private_pem(scheme, name)).decode()


def add(
    client: TestClient, owner: Owner, group: Group | str, key: str, name: str | None = None
) -> httpx.Response:
    group_id = group if isinstance(group, str) else group.id
    body: dict[str, Any] = {"public_key": key} if name is None else {"public_key": key, "name": name}
    response: httpx.Response = client.post(f"/v1/groups/{group_id}/keys", json=body, headers=owner.headers)
    return response


def keys_of(client: TestClient, owner: Owner, group: Group) -> list[dict[str, Any]]:
    response = client.get(f"/v1/groups/{group.id}/keys", headers=owner.headers)
    assert response.status_code == 200, response.text
    keys: list[dict[str, Any]] = response.json()["keys"]
    return keys


def test_a_key_is_added_listed_and_removed(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    pem = public(Scheme.ECDSA_P256)
    digest = load_public_key(pem.encode()).digest
    response = add(client, owner, group, pem, name="release")
    assert response.status_code == 201
    key = response.json()
    assert {k: v for k, v in key.items() if k not in ("id", "created_at")} == {
        "group": group.id,
        "name": "release",
        "scheme": "ecdsa-p256",
        "digest": digest,
        "public_key": pem,
        "inherited_from": None,
    }
    assert keys_of(client, owner, group) == [key]
    # A second key, named after its scheme and digest by default.
    other = add(client, owner, group, public(Scheme.RSA_3072)).json()
    assert other["name"] == f"rsa-3072 {other['digest'][:12]}"
    assert [k["id"] for k in keys_of(client, owner, group)] == [key["id"], other["id"]]

    # By digest, then by id.
    assert client.delete(f"/v1/groups/{group.id}/keys/{digest}", headers=owner.headers).json() == key
    assert (
        client.delete(f"/v1/groups/{group.id}/keys/{other['id']}", headers=owner.headers).status_code == 200
    )
    assert keys_of(client, owner, group) == []
    gone = client.delete(f"/v1/groups/{group.id}/keys/{digest}", headers=owner.headers)
    assert (gone.status_code, gone.json()) == (404, {"message": "No such key"})


def test_another_owners_group_is_404_everywhere(client: TestClient, fleet: Fleet) -> None:
    owner, stranger = fleet.owner(), fleet.owner()
    group = fleet.group(owner)
    key = add(client, owner, group, public()).json()
    no_group = {"message": "No such group"}
    listed = client.get(f"/v1/groups/{group.id}/keys", headers=stranger.headers)
    assert (listed.status_code, listed.json()) == (404, no_group)
    added = add(client, stranger, group, public(Scheme.RSA_3072, "b"))
    assert (added.status_code, added.json()) == (404, no_group)
    removed = client.delete(f"/v1/groups/{group.id}/keys/{key['id']}", headers=stranger.headers)
    assert (removed.status_code, removed.json()) == (404, no_group)
    assert keys_of(client, owner, group) == [key]
    assert client.get(f"/v1/groups/{group.id}/keys").status_code == 401


def test_subgroups_inherit_keys_and_cannot_remove_them(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    parent = fleet.group(owner)
    child = fleet.group(owner, name="canary", parent=parent)
    grandchild = fleet.group(owner, name="bench", parent=child)
    inherited = add(client, owner, parent, public()).json()
    own = add(client, owner, child, public(Scheme.RSA_3072, "child")).json()
    listed = keys_of(client, owner, grandchild)
    assert [(k["id"], k["inherited_from"]) for k in listed] == [
        (inherited["id"], parent.id),
        (own["id"], child.id),
    ]
    assert [k["inherited_from"] for k in keys_of(client, owner, child)] == [parent.id, None]
    refused = client.delete(f"/v1/groups/{child.id}/keys/{inherited['id']}", headers=owner.headers)
    assert (refused.status_code, refused.json()) == (
        400,
        {
            "message": f"key {inherited['id']} belongs to group {parent.id}, an ancestor of this one: a "
            "subgroup cannot remove its ancestors' keys; remove it from that group"
        },
    )
    # The same key again, lower in the tree, adds nothing.
    again = add(client, owner, grandchild, public())
    assert (again.status_code, again.json()["message"]) == (
        400,
        f"The key cannot be registered: this key (digest {inherited['digest']}) is already registered "
        f"for group {parent.id} as {inherited['name']!r}",
    )


def test_a_key_the_chip_cannot_verify_is_refused(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    esp32 = fleet.group(owner, chip="esp32")
    response = add(client, owner, esp32, public(Scheme.ECDSA_P256))
    assert (response.status_code, response.json()) == (
        400,
        {
            "message": "The key cannot be registered: esp32 Secure Boot V2 does not support ecdsa-p256 keys; "
            "it supports rsa-3072"
        },
    )
    c2 = fleet.group(owner, chip="esp32c2")
    assert add(client, owner, c2, public(Scheme.ECDSA_P192)).status_code == 201
    # A group with no chip takes no P-192 key, and none that a subgroup's chip cannot verify.
    loose = fleet.group(owner, name="loose")
    old_boards = fleet.group(owner, name="old boards", parent=loose, chip="esp32s3")
    refused = add(client, owner, loose, public(Scheme.ECDSA_P256))
    assert refused.status_code == 400
    assert refused.json()["message"].startswith(
        "The key cannot be registered: esp32s3 Secure Boot V2 does not support ecdsa-p256 keys"
    )
    assert refused.json()["message"].endswith(f"(subgroup {old_boards.id})")
    assert add(client, owner, loose, public(Scheme.RSA_3072)).status_code == 201


def test_bad_bodies_are_400_and_store_nothing(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    private = private_pem(Scheme.ECDSA_P256).decode()
    cases = {
        "private": (
            {"public_key": private},
            "The key cannot be registered: this is a private key: register its public key instead "
            "(espsecure extract-public-key --version 2 --keyfile key.pem pub.pem), and keep the private key "
            "secret",
        ),
        "missing": (
            {"name": "x"},
            "Expected a JSON object with public_key (PEM) and an optional name: public_key: Field required",
        ),
        "extra": (
            {"public_key": public(), "owner": "x"},
            "Expected a JSON object with public_key (PEM) and an optional name: owner: Extra inputs are not "
            "permitted",
        ),
        "control": ({"public_key": public(), "name": "a\x00b"}, "name must not contain control characters"),
    }
    for body, expected in cases.values():
        response = client.post(f"/v1/groups/{group.id}/keys", json=body, headers=owner.headers)
        assert (response.status_code, response.json()) == (400, {"message": expected})
        # The private key is never echoed, in part or whole.
        assert "PRIVATE" not in response.text and private.splitlines()[1] not in response.text
    not_json = client.post(f"/v1/groups/{group.id}/keys", content=b"{", headers=owner.headers)
    assert not_json.status_code == 400
    assert not_json.json()["message"].startswith("Expected a JSON object with public_key (PEM)")
    huge = client.post(f"/v1/groups/{group.id}/keys", content=b" " * 70_000, headers=owner.headers)
    assert (huge.status_code, huge.json()) == (
        413,
        {"message": "The body is over 65536 bytes; a public key is under 1 KiB"},
    )
    assert keys_of(client, owner, group) == []
