"""Passwords and what a sign-in issues: login tokens, and the owner's API keys as
the console lists them.

A password is kept as an argon2id hash (memory-hard: a stolen table costs
its reader dearly per guess). A login token is a bearer token for the API
(`POST /v1/auth/login`) or the console's session cookie; like API keys it is
190+ bits of CSPRNG output, so its SHA-256 is what is stored.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from otaship.receiver.db.models import ApiKey, LoginToken, User
from otaship.receiver.db.users import UserError, api_key_and_owner, get_user_by_email
from otaship.receiver.ids import secret_hash

if TYPE_CHECKING:
    from argon2 import PasswordHasher

LOGIN_TOKEN_PREFIX = "otl_"
BEARER = "bearer"
CONSOLE = "console"
KINDS = (BEARER, CONSOLE)
MIN_PASSWORD_LENGTH = 10
# argon2 hashes the whole input: a bound keeps one request's work bounded.
MAX_PASSWORD_LENGTH = 1024
# A key's last use is written at most this often: not a write per request.
KEY_USE_RESOLUTION = timedelta(minutes=1)


@cache
def _hasher() -> PasswordHasher:
    from argon2 import PasswordHasher

    # argon2-cffi's defaults (RFC 9106's second recommendation: 64 MiB, 3 passes).
    return PasswordHasher()


@cache
def _stand_in_hash() -> str:
    """Checked against when the email is unknown (or has no password), so that
    a wrong email takes as long as a wrong password."""
    return _hasher().hash(secrets.token_urlsafe(16))


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"the password is too long: use at most {MAX_PASSWORD_LENGTH} characters")


def set_password(*, session: Session, user: User, password: str, now: datetime) -> None:
    """Set `user`'s password; every login token issued before ends now."""
    check_password_rules(password)
    user.password_hash = _hasher().hash(password)
    session.add(user)
    revoke_login_tokens(session=session, user_id=user.id, now=now)
    session.flush()


def user_for_password(*, session: Session, email: str, password: str) -> User | None:
    """The user whose email and password these are, or None; as slow either way."""
    from argon2.exceptions import InvalidHashError, VerificationError

    user = get_user_by_email(session=session, email=email) if len(email) <= 320 else None
    stored = user.password_hash if user is not None and user.password_hash else None
    matched: bool
    try:
        matched = _hasher().verify(stored or _stand_in_hash(), password[:MAX_PASSWORD_LENGTH])
    except (VerificationError, InvalidHashError):
        matched = False
    return user if matched and stored is not None else None


def issue_login_token(
    *, session: Session, user: User, kind: str, lifetime: timedelta, now: datetime
) -> tuple[str, LoginToken]:
    """A new token's secret (shown once) and its row."""
    assert kind in KINDS
    secret = LOGIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = LoginToken(
        user_id=user.id, token_hash=secret_hash(secret), kind=kind, created_at=now, expires_at=now + lifetime
    )
    session.add(row)
    session.flush()
    return secret, row


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive values; they are UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def user_for_login_token(*, session: Session, token: str, kind: str, now: datetime) -> User | None:
    """The owner of an unexpired, unrevoked token of `kind`, or None."""
    if not token.startswith(LOGIN_TOKEN_PREFIX):
        return None
    digest = secret_hash(token)
    row = session.exec(
        select(LoginToken, User)
        .join(User, col(User.id) == col(LoginToken.user_id))
        .where(col(LoginToken.token_hash) == digest, col(LoginToken.revoked_at).is_(None))
    ).first()
    if row is None:
        return None
    login, user = row
    if not hmac.compare_digest(login.token_hash, digest) or login.kind != kind:
        return None
    return user if _aware(login.expires_at) > now else None


def revoke_login_token(*, session: Session, token: str, now: datetime) -> bool:
    """End one token (a sign-out); False when it was not a live one."""
    login = session.exec(
        select(LoginToken).where(
            col(LoginToken.token_hash) == secret_hash(token), col(LoginToken.revoked_at).is_(None)
        )
    ).first()
    if login is None:
        return False
    login.revoked_at = now
    session.add(login)
    session.flush()
    return True


def revoke_login_tokens(*, session: Session, user_id: str, now: datetime) -> int:
    """End every live token of a user: how many there were."""
    live = session.exec(
        select(LoginToken).where(col(LoginToken.user_id) == user_id, col(LoginToken.revoked_at).is_(None))
    ).all()
    for login in live:
        login.revoked_at = now
        session.add(login)
    session.flush()
    return len(live)


@dataclass(frozen=True)
class KeyUse:
    """The key a request used, when its last use is due to be written again."""

    key_id: str


def key_use_due(key: ApiKey, now: datetime) -> KeyUse | None:
    if key.last_used_at is None or now - _aware(key.last_used_at) >= KEY_USE_RESOLUTION:
        return KeyUse(key.id)
    return None


def record_key_use(*, session: Session, use: KeyUse, now: datetime) -> None:
    key = session.get(ApiKey, use.key_id)
    if key is not None:
        key.last_used_at = now
        session.add(key)


def owner_of_bearer(*, session: Session, token: str, now: datetime) -> tuple[User, KeyUse | None] | None:
    """The owner of an API key or of a bearer login token, and the key's use to
    record if one is due; None for anything else."""
    if token.startswith(LOGIN_TOKEN_PREFIX):
        user = user_for_login_token(session=session, token=token, kind=BEARER, now=now)
        return None if user is None else (user, None)
    found = api_key_and_owner(session=session, api_key=token)
    if found is None:
        return None
    key, user = found
    return user, key_use_due(key, now)


def list_api_keys(*, session: Session, user_id: str) -> list[ApiKey]:
    """The owner's live keys, newest first."""
    return list(
        session.exec(
            select(ApiKey)
            .where(col(ApiKey.user_id) == user_id, col(ApiKey.revoked_at).is_(None))
            .order_by(col(ApiKey.created_at).desc(), col(ApiKey.id))
        )
    )


def revoke_api_key(*, session: Session, user_id: str, key_id: str, now: datetime) -> bool:
    """Revoke one of the owner's live keys; False when the owner has no such key."""
    key = session.get(ApiKey, key_id)
    if key is None or key.user_id != user_id or key.revoked_at is not None:
        return False
    key.revoked_at = now
    session.add(key)
    session.flush()
    return True
