"""The keys page: list, create (shown once), revoke; the CSRF token required."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

from tests.conftest import Fleet
from tests.receiver.http.console.conftest import Console, SignIn


def test_create_use_and_revoke_a_key(client: TestClient, console: Console) -> None:
    page = console.client.get("/console/keys")
    assert re.findall(r"<code>(osk_[^<]*)…</code>", page.text) == [console.owner.api_key[:12]]
    assert "<td>never</td>" in page.text
    csrf = console.csrf("/console/keys")
    assert console.client.post("/console/keys", data={}).status_code == 403
    created = console.client.post("/console/keys", data={"csrf": csrf})
    assert created.status_code == 200
    found = re.search(r'id="new-key" type="text" readonly value="(osk_[A-Za-z0-9_-]+)"', created.text)
    assert found is not None
    key = found.group(1)
    assert client.get("/v1/ota/group", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    listed = console.client.get("/console/keys").text
    # Shown once: the list has its prefix only, and now a last use.
    assert key not in listed and f"<code>{key[:12]}…</code>" in listed
    assert len(re.findall(r"<td>\d{4}-\d\d-\d\dT[^<]+Z</td></tr>|<td>never</td>", listed)) >= 1
    key_id = re.search(rf'<tr data-key="([0-9a-f]{{24}})"><td><code>{re.escape(key[:12])}', listed)
    assert key_id is not None
    revoke = f"/console/keys/{key_id.group(1)}/revoke"
    assert console.client.post(revoke, data={}).status_code == 403
    assert client.get("/v1/ota/group", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    done = console.client.post(revoke, data={"csrf": csrf}, follow_redirects=False)
    assert (done.status_code, done.headers["location"]) == (303, "/console/keys")
    assert client.get("/v1/ota/group", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert key[:12] not in console.client.get("/console/keys").text


def test_another_owners_key_cannot_be_revoked(client: TestClient, fleet: Fleet, sign_in: SignIn) -> None:
    other = fleet.owner()
    other_console = sign_in(other)
    theirs = re.search(r'<tr data-key="([0-9a-f]{24})">', other_console.client.get("/console/keys").text)
    assert theirs is not None
    console = sign_in(fleet.owner())
    csrf = console.csrf("/console/keys")
    answer = console.client.post(f"/console/keys/{theirs.group(1)}/revoke", data={"csrf": csrf})
    assert answer.status_code == 404
    assert client.get("/v1/ota/group", headers=other.headers).status_code == 200
