"""The API key check through the real app: recording a key's last use never
stands in a request's way, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

from sqlmodel import col, select
from starlette.testclient import TestClient

from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.models import ApiKey
from otaship.receiver.services import Services
from tests.conftest import Fleet
from tests.waiting import eventually


def last_used(services: Services, user_id: str) -> object:
    with read_session(services.engine) as session:
        return session.exec(select(ApiKey.last_used_at).where(col(ApiKey.user_id) == user_id)).one()


def test_a_request_is_answered_while_its_keys_last_use_cannot_be_written(
    client: TestClient, services: Services, fleet: Fleet
) -> None:
    """A long write transaction holds the key's row (and, on SQLite, the whole
    database's write lock): the request is answered at once, and the last use
    is written once the transaction ends."""
    owner = fleet.owner()
    assert last_used(services, owner.user.id) is None
    with write_session(services.engine) as session:
        session.exec(select(ApiKey).where(col(ApiKey.user_id) == owner.user.id).with_for_update()).one()
        started = time.monotonic()
        answer = client.get("/v1/ota/group", headers=owner.headers)
        waited = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        # Far below the 10 s a write could wait for its connection, and the
        # 30 s SQLite waits for its lock.
        assert waited < 5
        assert last_used(services, owner.user.id) is None
    eventually(lambda: last_used(services, owner.user.id) is not None, "the key's last use written", 40)
