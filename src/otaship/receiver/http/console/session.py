"""The console's session: a cookie holding a console login token, and the CSRF
token every changing form carries.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's
page sends it) and Secure when the receiver is reached over https (its
OTASHIP_PUBLIC_URL, or the request itself). The CSRF token is derived from the
cookie's secret with HMAC, so it needs no storage and changes with each
session; a form post without it is refused before anything changes.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.db.logins import CONSOLE, user_for_login_token
from otaship.receiver.db.models import User
from otaship.receiver.ids import utcnow
from otaship.receiver.services import Services

COOKIE = "otaship_console"
CSRF_FIELD = "csrf"
LIFETIME = timedelta(hours=12)
# Longer than any token otaship issues: a longer cookie is not looked up.
MAX_COOKIE_LENGTH = 200
_CSRF_CONTEXT = b"otaship console csrf v1"


def csrf_for(secret: str) -> str:
    return hmac.new(secret.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Visitor:
    """A signed-in console user, and the CSRF token of their session."""

    user: User
    secret: str

    @property
    def csrf(self) -> str:
        return csrf_for(self.secret)

    def csrf_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


async def visitor_of(request: Request) -> Visitor | None:
    """Who holds the request's session cookie, if it is a live one."""
    secret = request.cookies.get(COOKIE, "")
    if not secret or len(secret) > MAX_COOKIE_LENGTH:
        return None
    now = utcnow()
    user = await Services.of(request).run_db(
        lambda session: user_for_login_token(session=session, token=secret, kind=CONSOLE, now=now)
    )
    return None if user is None else Visitor(user=user, secret=secret)


def served_over_https(request: Request) -> bool:
    public_url = Services.of(request).settings.public_url
    return request.url.scheme == "https" or bool(public_url and public_url.startswith("https://"))


def set_session_cookie(response: Response, request: Request, secret: str) -> None:
    response.set_cookie(
        COOKIE,
        secret,
        max_age=int(LIFETIME.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=served_over_https(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=served_over_https(request)
    )
