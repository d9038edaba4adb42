"""Console endpoints: signed in, or sent to the sign-in page; and a changing
form's CSRF token checked before it changes anything."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.http.console.render import page, to_sign_in
from otaship.receiver.http.console.session import CSRF_FIELD, Visitor, visitor_of
from otaship.receiver.http.responses import Endpoint

Page = Callable[[Request, Visitor], Awaitable[Response]]
Change = Callable[[Request, Visitor, FormData], Awaitable[Response]]
# Far past any console form's fields (the deploy form is multipart, and apart).
MAX_FORM_FIELDS = 50


def signed_in(handler: Page) -> Endpoint:
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        visitor = await visitor_of(request)
        if visitor is None:
            return to_sign_in()
        return await handler(request, visitor)

    return endpoint


def refused_csrf(request: Request, visitor: Visitor | None) -> Response:
    return page(request, "refused.html", {"visitor": visitor}, status=403)


def changing(handler: Change) -> Endpoint:
    """A form post: signed in, with the session's CSRF token, or refused."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        visitor = await visitor_of(request)
        if visitor is None:
            return to_sign_in()
        async with request.form(max_files=0, max_fields=MAX_FORM_FIELDS) as form:
            given = form.get(CSRF_FIELD)
            if not visitor.csrf_matches(given if isinstance(given, str) else None):
                return refused_csrf(request, visitor)
            return await handler(request, visitor, form)

    return endpoint
