"""`latest` and `download`, as the IoTaaP OS library calls them."""

from __future__ import annotations

import hashlib

from starlette.testclient import TestClient

from tests.conftest import Fleet
from tests.esp_image import build_image
from tests.receiver.http.management.test_ota import deploy


def test_latest_is_404_until_something_is_deployed(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    response = client.get(f"/v1/ota/group/latest/{group.id}")
    assert response.status_code == 404
    assert response.json() == {"message": "No firmware for this group"}
    assert client.get("/v1/ota/group/latest/" + "0" * 24).json() == {"message": "No such group"}
    assert client.get("/v1/ota/group/latest/nonsense").status_code == 404

    deploy(client, owner, group, "1.4.0")
    response = client.get(f"/v1/ota/group/latest/{group.id}")
    assert response.status_code == 200
    assert response.json() == {"ver": "1.4.0"}


def test_the_newest_deploy_among_group_and_ancestors_wins(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    fleet_group = fleet.group(owner, name="fleet")
    canary = fleet.group(owner, name="canary", parent=fleet_group)
    nested = fleet.group(owner, name="bench", parent=canary)
    sibling = fleet.group(owner, name="rest", parent=fleet_group)

    def versions() -> list[object]:
        return [
            client.get(f"/v1/ota/group/latest/{g.id}").json().get("ver")
            for g in (fleet_group, canary, nested, sibling)
        ]

    deploy(client, owner, fleet_group, "1.0.0")
    assert versions() == ["1.0.0", "1.0.0", "1.0.0", "1.0.0"]
    deploy(client, owner, canary, "1.1.0")
    assert versions() == ["1.0.0", "1.1.0", "1.1.0", "1.0.0"]
    deploy(client, owner, fleet_group, "1.2.0")
    assert versions() == ["1.2.0", "1.2.0", "1.2.0", "1.2.0"]


def test_download_serves_the_image_with_its_headers(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("2.0.0", code_size=200_000)
    deploy(client, owner, group, "2.0.0", code_size=200_000)
    url = f"/v1/ota/group/download/{group.id}{group.token}"
    response = client.get(url)
    assert response.status_code == 200
    assert response.content == image
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-length"] == str(len(image))
    assert response.headers["x-md5"] == hashlib.md5(image).hexdigest()
    assert response.headers["etag"] == f'"{hashlib.sha256(image).hexdigest()}"'
    assert response.headers["accept-ranges"] == "bytes"

    head = client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(image))


def test_download_of_a_subgroup_serves_the_effective_image(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    parent = fleet.group(owner)
    child = fleet.group(owner, parent=parent)
    deploy(client, owner, parent, "3.0.0")
    response = client.get(f"/v1/ota/group/download/{child.id}{child.token}")
    assert response.status_code == 200
    assert response.content == build_image("3.0.0")


def test_range_requests(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("2.0.0")
    deploy(client, owner, group, "2.0.0")
    url = f"/v1/ota/group/download/{group.id}{group.token}"

    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == image[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(image)}"

    tail = client.get(url, headers={"Range": "bytes=-16"})
    assert tail.status_code == 206 and tail.content == image[-16:]

    beyond = client.get(url, headers={"Range": f"bytes={len(image) + 10}-"})
    assert beyond.status_code == 416


def test_a_range_it_cannot_serve_gets_the_whole_image(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("2.0.0")
    deploy(client, owner, group, "2.0.0")
    url = f"/v1/ota/group/download/{group.id}{group.token}"
    # Another unit, no unit, no range at all, an end before the start, not numbers.
    for unusable in ("items=0-9", "0-9", "bytes=", "bytes=5-1", "bytes=a-b"):
        for method in ("GET", "HEAD"):
            response = client.request(method, url, headers={"Range": unusable})
            assert response.status_code == 200, (unusable, method, response.text)
            assert response.headers["content-length"] == str(len(image))
            assert "content-range" not in response.headers
            assert response.content == (image if method == "GET" else b"")


def test_download_refuses_wrong_credentials_alike(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    empty = fleet.group(owner, name="empty")
    deploy(client, owner, group, "1.0.0")
    wrong_token = ("a" if group.token[0] != "a" else "b") + group.token[1:]
    for credentials in (
        f"{group.id}{wrong_token}",
        f"{'0' * 24}{group.token}",
        f"{group.id}{group.token}x",
        f"{group.id}",
        f"{empty.id}{empty.token}",  # right credentials, nothing deployed
    ):
        response = client.get(f"/v1/ota/group/download/{credentials}")
        assert response.status_code == 404, credentials
        assert response.json() == {"message": "Not found"}
