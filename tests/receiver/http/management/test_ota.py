"""The seed API, POST and GET /v1/ota/group, against the real app on SQLite."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from otaship.receiver.db.models import Group
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image

FREE_PLAN = "Group OTA update is not available in free model. Please upgrade your account."
ISO_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def post(
    client: TestClient,
    owner: Owner | None,
    data: dict[str, str],
    firmware: bytes | None = None,
    filename: str = "firmware.bin",
) -> httpx.Response:
    files = {"firmware": (filename, firmware, "application/octet-stream")} if firmware is not None else None
    response: httpx.Response = client.post(
        "/v1/ota/group", data=data, files=files, headers=owner.headers if owner else {}
    )
    return response


def deploy(client: TestClient, owner: Owner, group: Group, version: str, **image_args: Any) -> dict[str, Any]:
    image = build_image(version, **image_args)
    response = post(client, owner, {"group": group.id, "token": group.token, "version": version}, image)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# --- auth -------------------------------------------------------------------------


NOT_BEARER = (
    'Bearer realm="otaship", error="invalid_request", '
    'error_description="send the API key as Authorization: Bearer <key>"'
)


@pytest.mark.parametrize(
    ("header", "challenge"),
    [
        (None, 'Bearer realm="otaship"'),
        ("Bearer", NOT_BEARER),
        ("Bearer nope", 'Bearer realm="otaship", error="invalid_token"'),
        ("Basic abc", NOT_BEARER),
        ("bearer  ", NOT_BEARER),
        ("osk_" + "k" * 40, NOT_BEARER),
    ],
)
def test_requests_without_a_valid_key_are_unauthorized(
    client: TestClient, header: str | None, challenge: str
) -> None:
    headers = {} if header is None else {"Authorization": header}
    for response in (
        client.get("/v1/ota/group", headers=headers),
        client.post("/v1/ota/group", headers=headers, data={"group": "x"}),
    ):
        assert response.status_code == 401
        # The spec's body, unchanged; what to do is in the challenge.
        assert response.json() == {"message": "Unauthorized"}
        assert response.headers["WWW-Authenticate"] == challenge


def test_a_key_sent_without_bearer_is_logged_at_info_without_the_key(
    client: TestClient, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    owner = fleet.owner()
    key = owner.headers["Authorization"].removeprefix("Bearer ")
    caplog.set_level(logging.INFO, logger="otaship.auth")
    response = client.get("/v1/ota/group", headers={"Authorization": key})
    assert (response.status_code, response.headers["WWW-Authenticate"]) == (401, NOT_BEARER)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "otaship.auth"]
    assert said == [
        (
            "INFO",
            "401 for GET /v1/ota/group: the Authorization header is a bare API key, without Bearer; "
            "send Authorization: Bearer <key>",
        )
    ]
    assert key not in caplog.text
    # A key that is simply wrong is the bad-key rate limit's business, not a line each.
    caplog.clear()
    assert client.get("/v1/ota/group", headers={"Authorization": "Bearer osk_wrong"}).status_code == 401
    assert [r for r in caplog.records if r.name == "otaship.auth"] == []


def test_a_rotated_key_stops_working(client: TestClient, fleet: Fleet) -> None:
    from otaship.receiver.db.engine import write_session
    from otaship.receiver.db.users import issue_api_key

    owner = fleet.owner()
    assert client.get("/v1/ota/group", headers=owner.headers).status_code == 200
    with write_session(fleet.services.engine) as session:
        new_key = issue_api_key(session=session, user=owner.user, revoke_existing=True)
    assert client.get("/v1/ota/group", headers=owner.headers).status_code == 401
    assert client.get("/v1/ota/group", headers={"Authorization": f"Bearer {new_key}"}).status_code == 200


def test_api_keys_are_stored_hashed(client: TestClient, fleet: Fleet) -> None:
    from sqlmodel import select

    from otaship.receiver.db.engine import read_session
    from otaship.receiver.db.models import ApiKey, User

    owner = fleet.owner()
    with read_session(fleet.services.engine) as session:
        keys = session.exec(select(ApiKey)).all()
        user = session.exec(select(User)).one()
    assert [k.key_hash for k in keys] == [hashlib.sha256(owner.api_key.encode()).hexdigest()]
    assert owner.api_key not in {k.key_hash for k in keys}
    assert owner.mqtt_password not in user.mqtt_password_hash


# --- POST: validation, in the documented order -------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"token": "t", "version": "1.0.0"}, "group is a mandatory field"),
        ({"group": "", "token": "t", "version": "1.0.0"}, "group is a mandatory field"),
        ({"group": "5e1dce30005aff52dbf0f3fd", "version": "1.0.0"}, "token is a mandatory field"),
        ({"group": "5e1dce30005aff52dbf0f3fd", "token": "t"}, "version is a mandatory field"),
        ({"group": "not-an-id", "token": "t", "version": "1.0.0"}, "Group ID is not valid"),
        ({"group": "5E1DCE30005AFF52DBF0F3FD", "token": "t", "version": "1.0.0"}, "Group ID is not valid"),
    ],
)
def test_missing_or_malformed_fields_are_400(
    client: TestClient, fleet: Fleet, data: dict[str, str], expected: str
) -> None:
    # A free owner: the 400 comes before the 403.
    owner = fleet.owner(plan="free")
    response = post(client, owner, data, build_image("1.0.0"))
    assert response.status_code == 400
    assert response.json() == {"message": expected}


def test_a_post_without_a_file_is_400(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    fields = {"group": group.id, "token": group.token, "version": "1.0.0"}
    usage = "send the image as a file in the form field firmware (curl -F firmware=@firmware.bin)"
    for response, hint in (
        (post(client, owner, fields), usage),
        # The firmware sent as a plain text field (curl -F firmware=fw.bin, no @) is not a file either.
        (
            client.post("/v1/ota/group", headers=owner.headers, data={**fields, "firmware": "abc"}),
            f"firmware came as text, not a file: {usage}",
        ),
        (client.post("/v1/ota/group", headers=owner.headers, data=fields), usage),  # urlencoded
    ):
        assert response.status_code == 400
        # The spec's message, unchanged; the hint beside it.
        assert response.json() == {"message": "No file uploaded", "hint": hint}


def test_a_file_in_another_field_names_the_firmware_field(client: TestClient, fleet: Fleet) -> None:
    # curl -F file=@firmware.bin
    owner = fleet.owner()
    group = fleet.group(owner)
    response = client.post(
        "/v1/ota/group",
        headers=owner.headers,
        data={"group": group.id, "token": group.token, "version": "1.0.0"},
        files={"file": ("firmware.bin", build_image("1.0.0"), "application/octet-stream")},
    )
    assert (response.status_code, response.json()) == (
        400,
        {"message": "Unexpected file part 'file': only 'firmware' carries a file"},
    )


def test_a_json_body_reports_the_first_mandatory_field(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    response = client.post("/v1/ota/group", headers=owner.headers, json={"group": "x"})
    assert response.status_code == 400
    assert response.json() == {"message": "group is a mandatory field"}


def test_free_plan_is_403(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner(plan="free")
    group = fleet.group(owner)
    response = post(
        client, owner, {"group": group.id, "token": group.token, "version": "1.0.0"}, build_image()
    )
    assert response.status_code == 403
    assert response.json() == {"message": FREE_PLAN}


def test_unknown_and_foreign_groups_are_the_same_404(client: TestClient, fleet: Fleet) -> None:
    alice, mallory = fleet.owner(), fleet.owner()
    alices = fleet.group(alice)
    foreign = post(
        client, mallory, {"group": alices.id, "token": alices.token, "version": "1.0.0"}, build_image()
    )
    unknown = post(
        client, mallory, {"group": "0" * 24, "token": alices.token, "version": "1.0.0"}, build_image()
    )
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == unknown.json() == {"message": "No such group"}
    assert client.get("/v1/ota/group", headers=alice.headers).json()["recordsTotal"] == 0


def test_wrong_token_is_400(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    wrong = ("A" if group.token[0] != "A" else "B") + group.token[1:]
    response = post(client, owner, {"group": group.id, "token": wrong, "version": "1.0.0"}, build_image())
    assert response.status_code == 400
    assert response.json() == {"message": "Group token is not valid"}


@pytest.mark.parametrize("version", ["v1.0.0", "1.0", "latest", "1.0.0.0", "01.2.3", "1.2.3-" + "x" * 70])
def test_a_version_that_is_not_semver_is_400(client: TestClient, fleet: Fleet, version: str) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    response = post(
        client, owner, {"group": group.id, "token": group.token, "version": version}, build_image()
    )
    assert response.status_code == 400
    assert "is not valid: use semantic versioning, e.g. 1.5.7" in response.json()["message"]


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda image: b"", "empty"),
        (lambda image: b"\x00" + image[1:], "magic"),
        (lambda image: image[: len(image) // 2], "runcat"),  # truncated / truncation
        (lambda image: b"MZ" + bytes(600), "magic"),
    ],
)
def test_bytes_that_are_not_an_esp_image_are_400(
    client: TestClient, fleet: Fleet, mangle: object, expected: str
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    image = mangle(build_image("1.0.0"))  # type: ignore[operator]
    response = post(client, owner, {"group": group.id, "token": group.token, "version": "1.0.0"}, image)
    assert response.status_code == 400
    assert expected in response.json()["message"].lower()
    assert client.get("/v1/ota/group", headers=owner.headers).json()["recordsTotal"] == 0


def test_a_firmware_for_another_chip_is_400(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner, chip="esp32")
    image = build_image("1.0.0", chip="esp32s3")
    response = post(client, owner, {"group": group.id, "token": group.token, "version": "1.0.0"}, image)
    assert response.status_code == 400
    assert "esp32s3" in response.json()["message"] and "esp32" in response.json()["message"]


def test_a_firmware_over_the_limit_is_413_and_leaves_nothing(
    client: TestClient, fleet: Fleet, settings: object
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    big = build_image("1.0.0") + b"\xff" * (3 * 1024 * 1024)
    response = post(client, owner, {"group": group.id, "token": group.token, "version": "1.0.0"}, big)
    assert response.status_code == 413
    # Its Content-Length tells before a byte is read: the body as a whole is too large.
    assert response.json() == {
        "message": "The request body is larger than the limit of 2162688 bytes: a firmware of at most "
        "2097152 bytes (2.0 MiB) and 65536 bytes of form fields"
    }
    assert list(settings.tmp_dir.iterdir()) == []  # type: ignore[attr-defined]
    assert client.get("/v1/ota/group", headers=owner.headers).json()["recordsTotal"] == 0


# --- POST: success, idempotency, conflict -------------------------------------------


def test_deploy_then_list(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner, chip="esp32")
    image = build_image("1.2.7", project_name="thermostat", idf_ver="v5.1.2")
    response = post(
        client,
        owner,
        {"group": group.id, "token": group.token, "version": "1.2.7", "commit": "abc123"},
        image,
    )
    assert response.status_code == 201
    body = response.json()
    assert body["message"] == "Firmware successfully deployed"
    assert body["deployed"] is True

    listing = client.get("/v1/ota/group", headers=owner.headers, params={"draw": "warp"}).json()
    assert listing["recordsTotal"] == listing["recordsFiltered"] == 1
    assert listing["draw"] == "warp"
    (ota,) = listing["otas"]
    assert ota["group"] == group.id
    assert ota["owner"] == owner.user.id
    assert ota["__v"] == 0
    assert ota["version"] == "1.2.7"
    assert ota["path"] == f"ota/group/{group.id}{group.token}/firmware.bin"
    assert re.fullmatch(r"[0-9a-f]{24}", ota["_id"])
    assert ISO_MS_Z.fullmatch(ota["last_updated"])
    assert ota["sha256"] == hashlib.sha256(image).hexdigest()
    assert ota["md5"] == hashlib.md5(image).hexdigest()
    assert ota["size"] == len(image)
    assert ota["chip"] == "esp32"
    assert (ota["project_name"], ota["app_version"], ota["idf_ver"]) == ("thermostat", "1.2.7", "v5.1.2")
    assert ota["commit"] == "abc123"
    assert (ota["signed"], ota["signed_by"]) == (False, None)
    assert body["ota"] == ota


def test_the_record_is_updated_in_place(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    first = deploy(client, owner, group, "1.0.0")["ota"]
    second = deploy(client, owner, group, "1.1.0")["ota"]
    third = deploy(client, owner, group, "1.0.0")["ota"]  # a rollback is a deploy too
    assert first["_id"] == second["_id"] == third["_id"]
    assert [first["__v"], second["__v"], third["__v"]] == [0, 1, 2]
    assert first["last_updated"] < second["last_updated"] < third["last_updated"]
    listing = client.get("/v1/ota/group", headers=owner.headers).json()
    assert [o["version"] for o in listing["otas"]] == ["1.0.0"]


def test_the_descriptor_version_may_differ_from_the_posted_one(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("0.0.1-dev")
    response = post(client, owner, {"group": group.id, "token": group.token, "version": "2.0.0"}, image)
    assert response.status_code == 201
    assert (response.json()["ota"]["version"], response.json()["ota"]["app_version"]) == (
        "2.0.0",
        "0.0.1-dev",
    )


def test_reposting_the_same_version_and_bytes_is_a_no_op(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    first = deploy(client, owner, group, "1.0.0")
    again = deploy(client, owner, group, "1.0.0")
    assert again["message"] == "Firmware successfully deployed"
    assert again["deployed"] is False
    assert again["ota"] == first["ota"]


def test_the_same_version_with_other_bytes_is_409(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    first = build_image("1.0.0", seed=1)
    post(client, owner, {"group": group.id, "token": group.token, "version": "1.0.0", "commit": "aaa"}, first)
    response = post(
        client,
        owner,
        {"group": group.id, "token": group.token, "version": "1.0.0", "commit": "bbb"},
        build_image("1.0.0", seed=2),
    )
    assert response.status_code == 409
    body = response.json()
    assert "bump the version" in body["message"]
    assert body["version"] == "1.0.0"
    assert body["sha256"] == hashlib.sha256(first).hexdigest()
    assert body["commit"] == "aaa"
    listing = client.get("/v1/ota/group", headers=owner.headers).json()
    assert listing["otas"][0]["__v"] == 0 and listing["otas"][0]["commit"] == "aaa"


# --- GET: paging, ordering, search --------------------------------------------------


@pytest.fixture
def many(client: TestClient, fleet: Fleet) -> tuple[Owner, list[dict[str, Any]]]:
    owner = fleet.owner()
    otas = []
    for number in range(25):
        group = fleet.group(owner, name=f"g{number}")
        otas.append(deploy(client, owner, group, f"1.0.{number}")["ota"])
    # Another owner's records never show up nor count.
    stranger = fleet.owner()
    deploy(client, stranger, fleet.group(stranger), "9.9.9")
    return owner, otas


def test_listing_pages_newest_first_by_default(
    client: TestClient, many: tuple[Owner, list[dict[str, Any]]]
) -> None:
    owner, otas = many
    newest_first = [o["_id"] for o in reversed(otas)]
    page = client.get("/v1/ota/group", headers=owner.headers).json()
    assert page["recordsTotal"] == page["recordsFiltered"] == 25
    assert [o["_id"] for o in page["otas"]] == newest_first[:10]
    page = client.get("/v1/ota/group", headers=owner.headers, params={"offset": 20, "limit": 10}).json()
    assert [o["_id"] for o in page["otas"]] == newest_first[20:]
    page = client.get("/v1/ota/group", headers=owner.headers, params={"order_dir": "asc", "limit": 5}).json()
    assert [o["_id"] for o in page["otas"]] == [o["_id"] for o in otas[:5]]
    page = client.get("/v1/ota/group", headers=owner.headers, params={"limit": 1000}).json()
    assert len(page["otas"]) == 25


def test_search_is_a_case_insensitive_substring_of_path(
    client: TestClient, many: tuple[Owner, list[dict[str, Any]]]
) -> None:
    owner, otas = many
    target = otas[7]
    fragment = target["path"][14:40].upper()
    page = client.get("/v1/ota/group", headers=owner.headers, params={"search_value": fragment}).json()
    assert page["recordsTotal"] == 25
    assert page["recordsFiltered"] == 1
    assert [o["_id"] for o in page["otas"]] == [target["_id"]]
    page = client.get("/v1/ota/group", headers=owner.headers, params={"search_value": "FIRMWARE.BIN"}).json()
    assert page["recordsFiltered"] == 25


@pytest.mark.parametrize("wildcard", ["%", "_", "ota/group/%", "firmware_bin"])
def test_like_wildcards_are_literal(
    client: TestClient, many: tuple[Owner, list[dict[str, Any]]], wildcard: str
) -> None:
    owner, _ = many
    page = client.get("/v1/ota/group", headers=owner.headers, params={"search_value": wildcard}).json()
    assert page["recordsFiltered"] == 0
    assert page["otas"] == []


def test_limit_is_clamped_to_100(client: TestClient, fleet: Fleet) -> None:
    from otaship.receiver.http.management.ota import MAX_LIMIT

    owner = fleet.owner()
    image_group = fleet.group(owner)
    deploy(client, owner, image_group, "1.0.0")
    page = client.get("/v1/ota/group", headers=owner.headers, params={"limit": "100000"}).json()
    assert MAX_LIMIT == 100
    assert len(page["otas"]) == 1


def test_draw_is_echoed_as_a_string(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    assert client.get("/v1/ota/group", headers=owner.headers, params={"draw": "3"}).json()["draw"] == "3"
    assert client.get("/v1/ota/group", headers=owner.headers).json() == {
        "otas": [],
        "recordsTotal": 0,
        "recordsFiltered": 0,
        "draw": "",
    }


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"offset": "-1"}, "offset must be a whole number from 0 to 1000000000, not '-1'"),
        ({"offset": "ten"}, "offset must be a whole number from 0 to 1000000000, not 'ten'"),
        ({"limit": "-5"}, "limit must be a whole number of 0 or more, not '-5'"),
        ({"limit": "1.5"}, "limit must be a whole number of 0 or more, not '1.5'"),
        ({"order_dir": "sideways"}, "order_dir must be asc or desc, not 'sideways'"),
    ],
)
def test_bad_listing_parameters_are_400(
    client: TestClient, fleet: Fleet, params: dict[str, str], expected: str
) -> None:
    owner = fleet.owner()
    response = client.get("/v1/ota/group", headers=owner.headers, params=params)
    assert response.status_code == 400
    assert response.json() == {"message": expected}


def test_unknown_routes_answer_json(client: TestClient) -> None:
    response = client.get("/v2/nothing")
    assert response.status_code == 404
    assert response.json() == {"message": "Not found"}
    response = client.delete("/v1/ota/group")
    assert response.status_code == 405
    assert response.json() == {"message": "Method not allowed"}


def test_the_spool_folder_is_empty_after_every_kind_of_post(
    client: TestClient, fleet: Fleet, settings: object
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    fields = {"group": group.id, "token": group.token, "version": "1.0.0"}
    post(client, owner, fields, build_image())  # 201
    post(client, owner, fields, b"garbage")  # 400
    post(client, owner, {**fields, "token": "x"}, build_image())  # 400
    post(client, owner, {**fields, "version": "1.0.0"}, build_image(seed=5))  # 409
    tmp_dir: Path = settings.tmp_dir  # type: ignore[attr-defined]
    assert list(tmp_dir.iterdir()) == []


def test_records_total_counts_a_deploy_at_once(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    assert client.get("/v1/ota/group", headers=owner.headers).json()["recordsTotal"] == 0
    deploy(client, owner, fleet.group(owner, name="a"), "1.0.0")
    assert client.get("/v1/ota/group", headers=owner.headers).json()["recordsTotal"] == 1
    deploy(client, owner, fleet.group(owner, name="b"), "1.0.0")
    assert client.get("/v1/ota/group", headers=owner.headers).json()["recordsTotal"] == 2
