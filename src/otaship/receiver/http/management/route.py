"""A management route: the owner's API key first, and the route's own 500 for
every database failure, the key's lookup included. Each route names its
failure message once, where the route is declared, rather than in each handler."""

from __future__ import annotations

from starlette.routing import Route

from otaship.receiver.http.auth import owner_only
from otaship.receiver.http.responses import Endpoint, database_errors


def owner_route(
    path: str, endpoint: Endpoint, method: str, *, failure: str, unread_body: bool = False
) -> Route:
    """`failure`: the spec's 500 message for the route. `unread_body`: the key is
    looked up before the body is read, so its failure closes the connection."""
    return Route(
        path,
        database_errors(failure)(endpoint),
        methods=[method],
        middleware=[owner_only(failure, unread_body=unread_body)],
    )
