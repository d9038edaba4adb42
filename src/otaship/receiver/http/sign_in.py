"""Signing in with an email and a password: `POST /v1/auth/login` (IoTaaP's
login), and the console's form, through one function.

A wrong email and a wrong password get the same message after the same work
(db/logins.py checks an unknown email against a stand-in hash); repeated
failures are slowed down (sign_in_throttle.py). The token is a bearer token
for the same API as an API key, until it expires or is revoked.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from otaship.receiver.db.logins import (
    BEARER,
    LOGIN_TOKEN_PREFIX,
    issue_login_token,
    revoke_login_token,
    user_for_password,
)
from otaship.receiver.db.models import User
from otaship.receiver.http import wire
from otaship.receiver.http.auth import bearer_token, owner_of
from otaship.receiver.http.management.route import owner_route
from otaship.receiver.http.responses import answer, database_errors, message
from otaship.receiver.http.sign_in_throttle import SignInThrottle
from otaship.receiver.ids import utcnow
from otaship.receiver.services import Services

WRONG = "Wrong email or password"
LOGIN_ERROR = "Error when signing in"
LOGOUT_ERROR = "Error when signing out"
REMEMBERED = timedelta(days=30)
NOT_REMEMBERED = timedelta(hours=12)
# Far past any email (320) and password (1024) with JSON's quoting.
MAX_BODY_BYTES = 8192
# Every user has the same role: the owner of their groups.
ROLE: Literal["user"] = "user"


def throttle_of(request: Request) -> SignInThrottle:
    throttle: SignInThrottle = request.app.state.sign_in_throttle
    return throttle


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@dataclass(frozen=True)
class Refused:
    status: int
    text: str
    retry_after: int | None = None


@dataclass(frozen=True)
class SignedIn:
    user: User
    token: str


async def sign_in(
    request: Request, *, email: str, password: str, kind: str, lifetime: timedelta
) -> SignedIn | Refused:
    """Check the password and issue a token of `kind`; or why not."""
    throttle = throttle_of(request)
    address = client_address(request)
    wait = throttle.retry_after(email, address, time.monotonic())
    if wait:
        return Refused(429, f"Too many failed sign-ins: try again in {wait} s", retry_after=wait)
    services = Services.of(request)

    def check(session: Session) -> SignedIn | None:
        user = user_for_password(session=session, email=email, password=password)
        if user is None:
            return None
        token, _ = issue_login_token(session=session, user=user, kind=kind, lifetime=lifetime, now=utcnow())
        return SignedIn(user=user, token=token)

    signed = await services.run_write(check)
    if signed is None:
        throttle.failed(email, address, time.monotonic())
        return Refused(401, WRONG)
    throttle.succeeded(email)
    return signed


def _login_fields(raw: bytes) -> tuple[str, str, bool] | str:
    """email, password and rememberMe from the body, or what is wrong with it."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return 'The body must be JSON: {"email": …, "password": …, "rememberMe": true|false}'
    if not isinstance(body, dict):
        return "The body must be a JSON object with email and password"
    email, password, remember = body.get("email"), body.get("password"), body.get("rememberMe", False)
    for name, value in (("email", email), ("password", password)):
        if not isinstance(value, str) or not value:
            return f"{name} is a mandatory field (a string)"
    if not isinstance(remember, bool):
        return "rememberMe must be true or false"
    assert isinstance(email, str) and isinstance(password, str)
    return email, password, remember


async def login(request: Request) -> Response:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            return message(413, f"The body is over {MAX_BODY_BYTES} bytes")
    fields = _login_fields(raw)
    if isinstance(fields, str):
        return message(400, fields)
    email, password, remember = fields
    result = await sign_in(
        request,
        email=email,
        password=password,
        kind=BEARER,
        lifetime=REMEMBERED if remember else NOT_REMEMBERED,
    )
    if isinstance(result, Refused):
        response = message(result.status, result.text)
        if result.retry_after is not None:
            response.headers["Retry-After"] = str(result.retry_after)
        return response
    return answer(wire.Login(user=wire.LoginUser(id=result.user.id, role=ROLE), token=result.token))


async def logout(request: Request) -> Response:
    """End the bearer token this request carries; an API key is revoked on the keys page instead."""
    owner_of(request)
    token = bearer_token(request) or ""
    if not token.startswith(LOGIN_TOKEN_PREFIX):
        return message(400, "This is an API key, not a sign-in token: revoke keys on the console's keys page")
    await Services.of(request).run_write(
        lambda session: revoke_login_token(session=session, token=token, now=utcnow())
    )
    return message(200, "Signed out")


routes = [
    Route("/v1/auth/login", database_errors(LOGIN_ERROR)(login), methods=["POST"]),
    owner_route("/v1/auth/logout", logout, "POST", failure=LOGOUT_ERROR),
]
