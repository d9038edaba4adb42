"""Owners: users, their plan, API keys and MQTT credentials."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, select

from otaship.receiver.db.models import PLANS, ApiKey, User
from otaship.receiver.ids import new_api_key, new_mqtt_password, secret_hash, utcnow


class UserError(ValueError):
    """A user operation was refused; the message is for the operator."""


@dataclass(frozen=True)
class NewUser:
    user: User
    api_key: str
    mqtt_password: str


def create_user(*, session: Session, email: str, plan: str = "free") -> NewUser:
    email = email.strip()
    if "@" not in email or len(email) > 320:
        raise UserError(f"not an email address: {email!r}")
    if plan not in PLANS:
        raise UserError(f"unknown plan {plan!r}: use one of {', '.join(PLANS)}")
    if get_user_by_email(session=session, email=email) is not None:
        raise UserError(f"a user with email {email} already exists")
    mqtt_password = new_mqtt_password()
    user = User(email=email, plan=plan, mqtt_user="", mqtt_password_hash=secret_hash(mqtt_password))
    # The MQTT user name is the user id: unique, and safe inside a topic.
    user.mqtt_user = user.id
    session.add(user)
    session.flush()
    api_key = issue_api_key(session=session, user=user, revoke_existing=False)
    return NewUser(user=user, api_key=api_key, mqtt_password=mqtt_password)


def set_plan(*, session: Session, user: User, plan: str) -> User:
    """Move `user` to `plan`; the next request made with any of its keys sees it."""
    if plan not in PLANS:
        raise UserError(f"unknown plan {plan!r}: use one of {', '.join(PLANS)}")
    user.plan = plan
    session.add(user)
    session.flush()
    return user


def get_user_by_email(*, session: Session, email: str) -> User | None:
    return session.exec(select(User).where(func.lower(User.email) == email.strip().lower())).first()


def issue_api_key(*, session: Session, user: User, revoke_existing: bool) -> str:
    if revoke_existing:
        for key in session.exec(
            select(ApiKey).where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))  # type: ignore[union-attr]
        ):
            key.revoked_at = utcnow()
            session.add(key)
    secret = new_api_key()
    session.add(ApiKey(user_id=user.id, key_hash=secret_hash(secret), prefix=secret[:12]))
    session.flush()
    return secret


def user_for_api_key(*, session: Session, api_key: str) -> User | None:
    """The owner of a valid, unrevoked key, or None."""
    found = api_key_and_owner(session=session, api_key=api_key)
    return None if found is None else found[1]


def api_key_and_owner(*, session: Session, api_key: str) -> tuple[ApiKey, User] | None:
    """A valid, unrevoked key's row and its owner, or None."""
    digest = secret_hash(api_key)
    row = session.exec(
        select(ApiKey, User)
        .join(User, User.id == ApiKey.user_id)  # type: ignore[arg-type]
        .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))  # type: ignore[union-attr]
    ).first()
    if row is None:
        return None
    key, user = row
    # The lookup went through an index on the hash; compare again in constant
    # time so the decision itself never depends on where the strings differ.
    if not hmac.compare_digest(key.key_hash, digest):
        return None
    return key, user


def user_for_mqtt_login(*, session: Session, username: str, password: str) -> User | None:
    user = session.exec(select(User).where(User.mqtt_user == username)).first()
    if user is None:
        # Spend the same work on an unknown name as on a wrong password.
        hmac.compare_digest(secret_hash(password), "0" * 64)
        return None
    return user if hmac.compare_digest(secret_hash(password), user.mqtt_password_hash) else None


def list_users(*, session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(User.created_at, User.id)))  # type: ignore[arg-type]


def user_json(user: User) -> dict[str, object]:
    return {"id": user.id, "email": user.email, "plan": user.plan, "mqtt_user": user.mqtt_user}
