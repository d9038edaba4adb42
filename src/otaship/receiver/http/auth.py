"""Bearer API keys: who is asking, settled before a management handler runs.

Each management route carries `owner_only(...)`, Starlette's authentication
middleware with the API-key backend. A missing or bad key is answered here
with the spec's 401; a database failure while looking the key up is the
route's own 500, with `error`, as any other database failure of the route.
Handlers read the owner with `owner_of(request)`. Device routes, probes,
/metrics and /openapi.json carry no such middleware.
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError
from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from otaship.receiver.db.models import User
from otaship.receiver.db.users import user_for_api_key
from otaship.receiver.http.responses import UNAUTHORIZED, message, server_error
from otaship.receiver.services import Services

# Far longer than any key otaship issues: a longer one is not looked up.
MAX_KEY_LENGTH = 200


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


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


class ApiKeys(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        token = bearer_token(conn)
        if token is None or len(token) > MAX_KEY_LENGTH:
            raise AuthenticationError(UNAUTHORIZED)
        try:
            user = await Services.of(conn).run_db(
                lambda session: user_for_api_key(session=session, api_key=token)
            )
        except SQLAlchemyError as exc:
            raise KeyLookupFailed(exc) from exc
        if user is None:
            raise AuthenticationError(UNAUTHORIZED)
        return AuthCredentials(["owner"]), Owner(user)


class Refusal:
    """The answer to a request whose key did not authenticate."""

    def __init__(self, failure: str, *, unread_body: bool) -> None:
        self.failure = failure
        self.unread_body = unread_body

    def __call__(self, conn: HTTPConnection, exc: AuthenticationError) -> Response:
        if not isinstance(exc, KeyLookupFailed):
            return message(401, UNAUTHORIZED)
        response = server_error(self.failure, exc.cause)
        if self.unread_body:
            # The body was not read: the connection cannot carry another request.
            response.headers["Connection"] = "close"
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
