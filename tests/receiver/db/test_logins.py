"""Passwords, login tokens and the keys' last use, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session

from otaship.receiver.db.engine import write_session
from otaship.receiver.db.logins import (
    BEARER,
    CONSOLE,
    issue_login_token,
    key_use_due,
    list_api_keys,
    owner_of_bearer,
    record_key_use,
    revoke_api_key,
    revoke_login_token,
    set_password,
    user_for_login_token,
    user_for_password,
)
from otaship.receiver.db.models import ApiKey, User
from otaship.receiver.db.users import UserError, issue_api_key
from otaship.receiver.ids import utcnow
from otaship.receiver.services import Services
from tests.conftest import Fleet


def _user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    assert user is not None
    return user


def test_a_password_is_stored_as_argon2id_and_checked(services: Services, fleet: Fleet) -> None:
    owner = fleet.owner()
    with write_session(services.engine) as session:
        assert user_for_password(session=session, email=owner.user.email, password="correct horse") is None
        set_password(
            session=session, user=_user(session, owner.user.id), password="correct horse", now=utcnow()
        )
    with write_session(services.engine) as session:
        stored = _user(session, owner.user.id).password_hash
        assert stored is not None and stored.startswith("$argon2id$") and "correct horse" not in stored
        found = user_for_password(session=session, email=owner.user.email.upper(), password="correct horse")
        assert found is not None and found.id == owner.user.id
        assert user_for_password(session=session, email=owner.user.email, password="correct horsE") is None
        assert (
            user_for_password(session=session, email="nobody@example.com", password="correct horse") is None
        )
        with pytest.raises(UserError, match="at least 10 characters"):
            set_password(session=session, user=_user(session, owner.user.id), password="short", now=utcnow())


def test_login_tokens_expire_are_revoked_and_keep_to_their_kind(services: Services, fleet: Fleet) -> None:
    owner = fleet.owner()
    now = utcnow()
    with write_session(services.engine) as session:
        user = _user(session, owner.user.id)
        bearer, _ = issue_login_token(
            session=session, user=user, kind=BEARER, lifetime=timedelta(hours=1), now=now
        )
        cookie, _ = issue_login_token(
            session=session, user=user, kind=CONSOLE, lifetime=timedelta(hours=1), now=now
        )
    with write_session(services.engine) as session:
        assert bearer.startswith("otl_") and len(bearer) > 40
        assert user_for_login_token(session=session, token=bearer, kind=BEARER, now=now) is not None
        assert user_for_login_token(session=session, token=bearer, kind=CONSOLE, now=now) is None
        assert user_for_login_token(session=session, token=cookie, kind=CONSOLE, now=now) is not None
        later = now + timedelta(hours=1)
        assert user_for_login_token(session=session, token=bearer, kind=BEARER, now=later) is None
        found = owner_of_bearer(session=session, token=bearer, now=now)
        assert found is not None and found[0].id == owner.user.id and found[1] is None
        # A cookie's token is no bearer token.
        assert owner_of_bearer(session=session, token=cookie, now=now) is None
        assert revoke_login_token(session=session, token=bearer, now=now) is True
        assert revoke_login_token(session=session, token=bearer, now=now) is False
        assert user_for_login_token(session=session, token=bearer, kind=BEARER, now=now) is None
        # A new password ends the other sign-ins.
        set_password(session=session, user=_user(session, owner.user.id), password="a new password", now=now)
        assert user_for_login_token(session=session, token=cookie, kind=CONSOLE, now=now) is None


def test_keys_record_their_last_use_once_a_minute_and_are_revoked_by_their_owner(
    services: Services, fleet: Fleet
) -> None:
    owner, other = fleet.owner(), fleet.owner()
    now = utcnow()
    with write_session(services.engine) as session:
        found = owner_of_bearer(session=session, token=owner.api_key, now=now)
        assert found is not None and found[1] is not None
        record_key_use(session=session, use=found[1], now=now)
    with write_session(services.engine) as session:
        (key,) = list_api_keys(session=session, user_id=owner.user.id)
        assert key.last_used_at is not None
        assert key_use_due(key, now + timedelta(seconds=59)) is None
        assert key_use_due(key, now + timedelta(seconds=60)) is not None
        second = issue_api_key(session=session, user=_user(session, owner.user.id), revoke_existing=False)
        assert [k.prefix for k in list_api_keys(session=session, user_id=owner.user.id)] == [
            second[:12],
            key.prefix,
        ]
        assert revoke_api_key(session=session, user_id=other.user.id, key_id=key.id, now=now) is False
        assert revoke_api_key(session=session, user_id=owner.user.id, key_id=key.id, now=now) is True
        assert revoke_api_key(session=session, user_id=owner.user.id, key_id=key.id, now=now) is False
        assert session.get(ApiKey, key.id) is not None
        assert owner_of_bearer(session=session, token=owner.api_key, now=now) is None
