"""The JSON shapes every route answers with."""
from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from otaship.receiver.db.engine import database_unavailable
from otaship.receiver.logs import short_error

log = logging.getLogger("otaship.api")

UNAUTHORIZED = "Unauthorized"

Endpoint = Callable[[Request], Awaitable[Response]]


def message(status: int, text: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"message": text, **extra}, status_code=status)


def server_error(text: str, exc: BaseException) -> JSONResponse:
    """A 500 with the spec's message and a short cause, never a stack trace.

    The cause goes to the client as well as the log, so it is redacted here:
    a storage error can quote the IoTaaP path with the group token in it.
    """
    short = short_error(exc)
    if database_unavailable(exc):
        # Every request says so during an outage: the cause is the news, not a traceback.
        log.warning("%s: %s", text, short)
    else:
        log.error("%s: %s", text, short, exc_info=exc)
    return message(500, text, error=short)


def database_errors(text: str, *, unread_body: bool = False) -> Callable[[Endpoint], Endpoint]:
    """A management route whose every database failure, the API key's lookup
    included, answers the spec's 500 for the route (`text`) with `error`.

    `unread_body`: the failure can come before the request body was read (an
    upload's API key is looked up first), so the connection cannot carry
    another request and is closed after the answer, as for any early refusal.
    """

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def answer(request: Request) -> Response:
            try:
                return await endpoint(request)
            except SQLAlchemyError as exc:
                response = server_error(text, exc)
                if unread_body:
                    response.headers["Connection"] = "close"
                return response

        return answer

    return decorate
