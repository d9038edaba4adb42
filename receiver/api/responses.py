"""The JSON shapes every route answers with."""
from __future__ import annotations

import logging
from typing import Any

from starlette.responses import JSONResponse

from receiver.logs import short_error

log = logging.getLogger("otaship.api")

UNAUTHORIZED = "Unauthorized"


def message(status: int, text: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"message": text, **extra}, status_code=status)


def server_error(text: str, exc: BaseException) -> JSONResponse:
    """A 500 with the spec's message and a short cause, never a stack trace.

    The cause goes to the client as well as the log, so it is redacted here:
    a storage error can quote the IoTaaP path with the group token in it.
    """
    short = short_error(exc)
    log.error("%s: %s", text, short, exc_info=exc)
    return message(500, text, error=short)
