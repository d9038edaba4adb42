"""POST /v1/auth/login and /v1/auth/logout against the real app."""

from __future__ import annotations

import time

from starlette.testclient import TestClient

from otaship.receiver.db.engine import write_session
from otaship.receiver.db.logins import set_password
from otaship.receiver.db.models import User
from otaship.receiver.ids import utcnow
from otaship.receiver.services import Services
from tests.conftest import Fleet, Owner

PASSWORD = "a long enough password"


def with_password(services: Services, owner: Owner) -> None:
    with write_session(services.engine) as session:
        user = session.get(User, owner.user.id)
        assert user is not None
        set_password(session=session, user=user, password=PASSWORD, now=utcnow())


def test_a_sign_in_gives_a_bearer_token_for_the_api_until_logout(
    client: TestClient, services: Services, fleet: Fleet
) -> None:
    owner = fleet.owner()
    with_password(services, owner)
    answer = client.post(
        "/v1/auth/login", json={"email": owner.user.email, "password": PASSWORD, "rememberMe": True}
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["user"] == {"id": owner.user.id, "role": "user"}
    assert set(body) == {"user", "token"}
    token = body["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/ota/group", headers=headers).status_code == 200
    assert client.post("/v1/auth/logout", headers=headers).json() == {"message": "Signed out"}
    assert client.get("/v1/ota/group", headers=headers).status_code == 401
    # An API key is not signed out: it is revoked on the keys page.
    refused = client.post("/v1/auth/logout", headers=owner.headers)
    assert refused.status_code == 400


def test_wrong_email_and_wrong_password_answer_alike_and_slow_down(
    client: TestClient, services: Services, fleet: Fleet
) -> None:
    owner = fleet.owner()
    with_password(services, owner)
    times = []
    for email, password in ((owner.user.email, "not the password"), ("nobody@example.com", PASSWORD)):
        started = time.perf_counter()
        answer = client.post("/v1/auth/login", json={"email": email, "password": password})
        times.append(time.perf_counter() - started)
        assert (answer.status_code, answer.json()) == (401, {"message": "Wrong email or password"})
    # Both ran argon2 (tens of milliseconds): neither answers early.
    assert min(times) > 0.01
    assert client.post("/v1/auth/login", json={"email": owner.user.email, "password": "x"}).status_code == 401
    # The third failure in a row for this email: the next attempt must wait, even the right one.
    slowed = client.post("/v1/auth/login", json={"email": owner.user.email, "password": PASSWORD})
    assert slowed.status_code == 429
    assert slowed.headers["Retry-After"] == "1"
    assert slowed.json() == {"message": "Too many failed sign-ins: try again in 1 s"}


def test_a_bad_login_body_is_a_400_naming_what_is_wrong(client: TestClient) -> None:
    cases = [
        (b"not json", "The body must be JSON"),
        (b"[]", "The body must be a JSON object with email and password"),
        (b'{"email": "a@example.com"}', "password is a mandatory field (a string)"),
        (b'{"email": 5, "password": "x"}', "email is a mandatory field (a string)"),
        (b'{"email": "a@b", "password": "x", "rememberMe": "yes"}', "rememberMe must be true or false"),
    ]
    for body, text in cases:
        answer = client.post("/v1/auth/login", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400
        assert answer.json()["message"].startswith(text)
    assert client.post("/v1/auth/login", content=b"x" * 9000).status_code == 413
