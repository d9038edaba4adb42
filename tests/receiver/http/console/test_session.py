"""Signing in to the console: the cookie's flags, sign-out on the server, and
pages that send a visitor without a session to the sign-in page."""

from __future__ import annotations

import dataclasses

from starlette.testclient import TestClient

from otaship.receiver.app import create_app
from otaship.receiver.http.console.render import CSP
from otaship.receiver.http.console.session import COOKIE
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from tests.conftest import Fleet
from tests.receiver.http.console.conftest import PASSWORD, Console, give_password


def test_pages_send_a_visitor_without_a_session_to_sign_in(client: TestClient) -> None:
    for path in (
        "/console/",
        "/console/keys",
        "/console/groups/" + "a" * 24,
        "/console/rollouts/" + "a" * 24,
    ):
        answer = client.get(path, follow_redirects=False)
        assert (answer.status_code, answer.headers["location"]) == (303, "/console/sign-in")
    assert client.get("/", follow_redirects=False).headers["location"] == "/console/"
    form = client.get("/console/sign-in")
    assert form.status_code == 200
    assert form.headers["content-security-policy"] == CSP
    assert '<label for="email">Email</label>' in form.text
    assert '<label for="password">Password</label>' in form.text


def test_a_sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_it(
    client: TestClient, services: Services, fleet: Fleet
) -> None:
    owner = fleet.owner()
    give_password(services, owner)
    wrong = client.post("/console/sign-in", data={"email": owner.user.email, "password": "not it at all"})
    assert wrong.status_code == 401
    assert "Wrong email or password" in wrong.text
    answer = client.post(
        "/console/sign-in", data={"email": owner.user.email, "password": PASSWORD}, follow_redirects=False
    )
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/")
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=otl_")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/", "max-age=43200"} <= flags
    assert "secure" not in flags
    secret = client.cookies[COOKIE]
    console = Console(client, owner)
    fleet_page = client.get("/console/")
    assert owner.user.email in fleet_page.text
    csrf = console.csrf()
    # Without its CSRF token the sign-out is refused, and the session lives on.
    assert client.post("/console/sign-out", data={}).status_code == 403
    assert client.get("/console/", follow_redirects=False).status_code == 200
    out = client.post("/console/sign-out", data={"csrf": csrf}, follow_redirects=False)
    assert (out.status_code, out.headers["location"]) == (303, "/console/sign-in")
    # The old cookie, sent again, is dead on the server: not merely forgotten by the browser.
    client.cookies.clear()
    client.cookies.set(COOKIE, secret)
    assert client.get("/console/", follow_redirects=False).headers["location"] == "/console/sign-in"
    # A console cookie is no API token.
    assert client.get("/v1/ota/group", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_the_cookie_is_secure_behind_an_https_public_url(
    settings: Settings, services: Services, fleet: Fleet
) -> None:
    owner = fleet.owner()
    give_password(services, owner)
    https = dataclasses.replace(
        services, settings=settings.with_overrides(public_url="https://ota.example.com")
    )
    with TestClient(create_app(https.settings, services=https)) as client:
        answer = client.post(
            "/console/sign-in", data={"email": owner.user.email, "password": PASSWORD}, follow_redirects=False
        )
        assert "secure" in {part.strip().lower() for part in answer.headers["set-cookie"].split(";")}


def test_a_sign_in_posted_from_another_site_is_refused(
    client: TestClient, services: Services, fleet: Fleet
) -> None:
    owner = fleet.owner()
    give_password(services, owner)
    form = {"email": owner.user.email, "password": PASSWORD}
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        answer = client.post("/console/sign-in", data=form, headers=headers, follow_redirects=False)
        assert answer.status_code == 403, headers
        assert COOKIE not in answer.headers.get("set-cookie", "")
    same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/console/sign-in", data=form, headers=same, follow_redirects=False).status_code == 303
