"""The deploy form: the same code as POST /v1/ota/group, errors next to their field."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from otaship.receiver.http.console.deploy_page import field_for
from tests.conftest import Fleet
from tests.esp_image import build_image
from tests.receiver.http.console.conftest import Console


@pytest.mark.parametrize(
    ("status", "text", "field"),
    [
        (400, "version is a mandatory field", "version"),
        (400, "Version '1.x' is not valid: use semantic versioning, e.g. 1.5.7", "version"),
        (409, "Version 1.0.0 is already deployed to this group with different firmware.", "version"),
        (400, "No file uploaded", "firmware"),
        (413, "Firmware is larger than the limit of 10 bytes (0.0 MiB)", "firmware"),
        (400, "bad magic byte 0x00, expected 0xe9", "firmware"),
        (400, "canary_timeout must be a whole number from 1 to 604800, not 'x'", "canary_timeout"),
        (400, "success_threshold must be a number in (0, 1], not '2'", "success_threshold"),
        (400, "Canary ID is not valid", "canary"),
        (400, "commit must not contain control characters", "commit"),
        (403, "Group OTA update is not available in free model. Please upgrade your account.", None),
        (409, "a rollout is already running in this tree", None),
        (500, "Error when uploading firmware file", "firmware"),
    ],
)
def test_each_answer_goes_next_to_its_field(status: int, text: str, field: str | None) -> None:
    assert field_for(status, text) == field


def error_of(html: str, field: str) -> str | None:
    found = re.search(rf'<p class="error field-error" id="{field}-error" role="alert">([^<]*)</p>', html)
    return found.group(1) if found else None


def test_a_deploy_through_the_form(client: TestClient, fleet: Fleet, console: Console) -> None:
    group = fleet.group(console.owner, name="lamps")
    canary = fleet.group(console.owner, name="early", parent=group)
    fleet.device(canary, name="first")
    url = f"/console/groups/{group.id}"
    csrf = console.csrf(url)
    image = {"firmware": ("firmware.bin", build_image("1.2.0"))}

    bad = console.client.post(
        f"{url}/deploy", data={"csrf": csrf, "version": "1.x", "commit": "abc"}, files=image
    )
    assert bad.status_code == 400
    assert (
        error_of(bad.text, "version")
        == "Version &#39;1.x&#39; is not valid: use semantic versioning, e.g. 1.5.7"
    )
    assert 'name="commit" type="text" value="abc"' in bad.text
    not_an_image = {"firmware": ("firmware.bin", b"\x00" * 64)}
    worse = console.client.post(f"{url}/deploy", data={"csrf": csrf, "version": "1.2.0"}, files=not_an_image)
    assert worse.status_code == 400 and error_of(worse.text, "firmware")
    refused = console.client.post(f"{url}/deploy", data={"version": "1.2.0"}, files=image)
    assert refused.status_code == 403
    assert client.get("/v1/ota/group", headers=console.owner.headers).json()["otas"] == []

    done = console.client.post(
        f"{url}/deploy",
        data={
            "csrf": csrf,
            "version": "1.2.0",
            "commit": "abc",
            "canary": "",
            "soak": "0",
            "auto_promote": "true",
        },
        files=image,
        follow_redirects=False,
    )
    assert (done.status_code, done.headers["location"]) == (303, f"{url}?deployed=True")
    (ota,) = client.get("/v1/ota/group", headers=console.owner.headers).json()["otas"]
    assert (ota["version"], ota["commit"], ota["group"]) == ("1.2.0", "abc", group.id)

    bad_policy = console.client.post(
        f"{url}/deploy",
        data={"csrf": csrf, "version": "1.3.0", "canary": canary.id, "success_threshold": "2"},
        files={"firmware": ("firmware.bin", build_image("1.3.0"))},
    )
    assert bad_policy.status_code == 400
    assert error_of(bad_policy.text, "success_threshold")
    rollout = console.client.post(
        f"{url}/deploy",
        data={"csrf": csrf, "version": "1.3.0", "canary": canary.id, "auto_promote": "false"},
        files={"firmware": ("firmware.bin", build_image("1.3.0"))},
        follow_redirects=False,
    )
    assert rollout.status_code == 303, re.findall(r"role=\"alert\">([^<]*)<", rollout.text)
    assert re.fullmatch(r"/console/rollouts/[0-9a-f]{24}", rollout.headers["location"])
