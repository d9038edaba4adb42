"""The JSON shapes every route answers with."""
from __future__ import annotations

import logging
from typing import Any

from starlette.responses import JSONResponse

log = logging.getLogger("otaship.api")

UNAUTHORIZED = "Unauthorized"


def message(status: int, text: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"message": text, **extra}, status_code=status)


def server_error(text: str, exc: BaseException) -> JSONResponse:
    """A 500 with the spec's message and a short cause, never a stack trace."""
    log.error("%s: %s", text, _short(exc), exc_info=exc)
    return message(500, text, error=_short(exc))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}"[:200] if text else name
