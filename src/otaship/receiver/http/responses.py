"""Answers: a wire model as a JSON response, and the answers every route shares."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from otaship.receiver.db.engine import database_unavailable
from otaship.receiver.http.wire import Message, ServerError, Wire
from otaship.receiver.logs import short_error

log = logging.getLogger("otaship.api")

UNAUTHORIZED = "Unauthorized"

Endpoint = Callable[[Request], Awaitable[Response]]


def answer(body: Wire, status: int = 200, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.wire(), status_code=status, headers=headers)


def message(status: int, text: str, *, hint: str | None = None) -> JSONResponse:
    return answer(Message(message=text) if hint is None else Message(message=text, hint=hint), status)


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
    return answer(ServerError(message=text, error=short), 500)


def database_errors(text: str) -> Callable[[Endpoint], Endpoint]:
    """An endpoint whose every database failure answers the route's 500 (`text`) with `error`.

    The handlers let SQLAlchemyError go: this is the one place that maps it.
    """

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def answered(request: Request) -> Response:
            try:
                return await endpoint(request)
            except SQLAlchemyError as exc:
                return server_error(text, exc)

        return answered

    return decorate
