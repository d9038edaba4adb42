"""A signed-in console in the test client: an owner with a password, and its CSRF token."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from starlette.testclient import TestClient

from otaship.receiver.db.engine import write_session
from otaship.receiver.db.logins import set_password
from otaship.receiver.db.models import User
from otaship.receiver.ids import utcnow
from otaship.receiver.services import Services
from tests.conftest import Fleet, Owner

PASSWORD = "console password 1"


@dataclass
class Console:
    client: TestClient
    owner: Owner

    def csrf(self, path: str = "/console/") -> str:
        page = self.client.get(path)
        assert page.status_code == 200, page.text
        found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
        assert found is not None
        return found.group(1)


def give_password(services: Services, owner: Owner) -> None:
    with write_session(services.engine) as session:
        user = session.get(User, owner.user.id)
        assert user is not None
        set_password(session=session, user=user, password=PASSWORD, now=utcnow())


SignIn = Callable[[Owner], Console]


@pytest.fixture
def sign_in(client: TestClient, services: Services) -> SignIn:
    def signed(owner: Owner) -> Console:
        give_password(services, owner)
        client.cookies.clear()
        answer = client.post(
            "/console/sign-in", data={"email": owner.user.email, "password": PASSWORD}, follow_redirects=False
        )
        assert answer.status_code == 303, answer.text
        return Console(client=client, owner=owner)

    return signed


@pytest.fixture
def console(fleet: Fleet, sign_in: SignIn) -> Console:
    return sign_in(fleet.owner())
