"""Bearer API keys (and the bearer tokens a sign-in issues): who is asking, settled before a management handler runs.

Each management route carries `owner_only(...)`, Starlette's authentication
middleware with the API-key backend. A missing or bad key is answered here
with the spec's 401; a database failure while looking the key up is the
route's own 500, with `error`, as any other database failure of the route.
Handlers read the owner with `owner_of(request)`. Device routes, probes,
/metrics and /openapi.json carry no such middleware.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from otaship.receiver.db.logins import KeyUse, owner_of_bearer, record_key_use
from otaship.receiver.db.models import User
from otaship.receiver.http.responses import UNAUTHORIZED, message, server_error
from otaship.receiver.ids import utcnow
from otaship.receiver.logs import redact
from otaship.receiver.services import Services

# Far longer than any key otaship issues: a longer one is not looked up.
MAX_KEY_LENGTH = 200

log = logging.getLogger("otaship.auth")

# The spec fixes the 401's body, {"message": "Unauthorized"}; what to do goes in
# the challenge RFC 6750 gives every 401, which a client's error output shows.
CHALLENGE = 'Bearer realm="otaship"'
BAD_KEY_CHALLENGE = f'{CHALLENGE}, error="invalid_token"'
NOT_BEARER_CHALLENGE = (
    f'{CHALLENGE}, error="invalid_request", '
    'error_description="send the API key as Authorization: Bearer <key>"'
)


class Owner(BaseUser):
    """The owner of the request's API key."""

    def __init__(self, user: User) -> None:
        self.user = user

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.user.email

    @property
    def identity(self) -> str:
        return self.user.id


class KeyLookupFailed(AuthenticationError):
    """The database failed while looking the key up: nobody knows yet whether it is good."""

    def __init__(self, cause: SQLAlchemyError) -> None:
        super().__init__(UNAUTHORIZED)
        self.cause = cause


class NotBearer(AuthenticationError):
    """An Authorization header that is not `Bearer <key>`: a bare key, another scheme."""

    def __init__(self, header: str) -> None:
        super().__init__(UNAUTHORIZED)
        # What is wrong with it, never the header itself: it may be the key.
        scheme = header.strip().partition(" ")[0]
        if scheme.lower() == "bearer":
            self.reason = "Bearer without a key"
        elif scheme.startswith("osk_"):
            self.reason = "a bare API key, without Bearer"
        else:
            self.reason = "not a Bearer credential"


class BadKey(AuthenticationError):
    """A Bearer key that no user holds (or one too long to be one)."""

    def __init__(self) -> None:
        super().__init__(UNAUTHORIZED)


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


# Seconds a stopping app gives the key-use writes still in flight.
KEY_USE_GRACE = 5.0


def note_key_use(conn: HTTPConnection, services: Services, use: KeyUse, now: datetime) -> None:
    """Write the keys page's "last used" (at most once a minute per key) beside
    the request, never in its way: a write waits for SQLite's lock, and a
    deploy must not wait on a bookkeeping line, nor fail when it fails. The
    app keeps the task until it is done (`finish_key_uses`)."""

    async def write() -> None:
        try:
            await services.run_write(lambda session: record_key_use(session=session, use=use, now=now))
        except SQLAlchemyError as exc:
            log.debug("the last use of key %s was not recorded: %s", use.key_id, exc)

    pending: set[asyncio.Task[None]] = conn.app.state.key_uses
    task = asyncio.get_running_loop().create_task(write())
    pending.add(task)
    task.add_done_callback(pending.discard)


async def finish_key_uses(pending: set[asyncio.Task[None]]) -> None:
    """Let the key-use writes in flight end before the engine goes: one still
    running in a thread would hold a connection past the engine's disposal."""
    if not pending:
        return
    _, late = await asyncio.wait(set(pending), timeout=KEY_USE_GRACE)
    for task in late:
        task.cancel()
    # A write in a thread ends before its task does (see threads.in_thread).
    await asyncio.gather(*late, return_exceptions=True)


class ApiKeys(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        token = bearer_token(conn)
        if token is None:
            header = conn.headers.get("authorization", "")
            raise NotBearer(header) if header.strip() else AuthenticationError(UNAUTHORIZED)
        if len(token) > MAX_KEY_LENGTH:
            raise BadKey()
        services = Services.of(conn)
        now = utcnow()
        try:
            found = await services.run_db(
                lambda session: owner_of_bearer(session=session, token=token, now=now)
            )
            if found is not None and found[1] is not None:
                note_key_use(conn, services, found[1], now)
        except SQLAlchemyError as exc:
            raise KeyLookupFailed(exc) from exc
        if found is None:
            raise BadKey()
        return AuthCredentials(["owner"]), Owner(found[0])


class Refusal:
    """The answer to a request whose key did not authenticate."""

    def __init__(self, failure: str, *, unread_body: bool) -> None:
        self.failure = failure
        self.unread_body = unread_body

    def __call__(self, conn: HTTPConnection, exc: AuthenticationError) -> Response:
        if not isinstance(exc, KeyLookupFailed):
            return unauthorized(conn, exc)
        response = server_error(self.failure, exc.cause)
        if self.unread_body:
            # The body was not read: the connection cannot carry another request.
            response.headers["Connection"] = "close"
        return response


def unauthorized(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    """The spec's 401, with a challenge that says what to send."""
    response = message(401, UNAUTHORIZED)
    if isinstance(exc, NotBearer):
        # A client that sends something, only in the wrong form, is misconfigured,
        # not guessing keys: worth a line, which never holds the header.
        log.info(
            "401 for %s %s: the Authorization header is %s; send Authorization: Bearer <key>",
            conn.scope.get("method", ""),
            redact(conn.url.path),
            exc.reason,
        )
        response.headers["WWW-Authenticate"] = NOT_BEARER_CHALLENGE
    elif isinstance(exc, BadKey):
        response.headers["WWW-Authenticate"] = BAD_KEY_CHALLENGE
    else:
        response.headers["WWW-Authenticate"] = CHALLENGE
    return response


def owner_only(failure: str, *, unread_body: bool = False) -> Middleware:
    """A route for the key's owner alone. `failure` is the route's 500 message;
    `unread_body` closes the connection after that 500 (an upload's key is
    looked up before its body is read)."""
    return Middleware(
        AuthenticationMiddleware, backend=ApiKeys(), on_error=Refusal(failure, unread_body=unread_body)
    )


def owner_of(request: Request) -> User:
    """The owner that `owner_only` let through."""
    user = request.user
    assert isinstance(user, Owner), "the route is not owner_only"
    return user.user
