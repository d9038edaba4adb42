"""A small JSON body, read within a limit, and a refusal that names the first bad field."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from otaship.receiver.fields import BadField

M = TypeVar("M", bound=BaseModel)


class BodyTooLarge(Exception):
    """The body went past its limit (a 413); the message says what the body should hold."""


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is longer than `limit` bytes."""
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            return None
    return bytes(received)


async def read_json(request: Request, model: type[M], *, limit: int, too_large: str, expected: str) -> M:
    """The body as `model`. Raises BodyTooLarge(`too_large`) past `limit` bytes, and
    BadField (a 400: `expected: ` and the first error) when it is not `model`."""
    raw = await read_limited(request, limit)
    if raw is None:
        raise BodyTooLarge(too_large)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise BadField(f"{expected}: {first_error(exc)}") from exc


def first_error(exc: ValidationError, *, whole: str = "") -> str:
    """The first error pydantic found, as `field: what is wrong`. An error of the
    whole body (not JSON at all) is named `whole`, or is its message alone."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or whole
    return f"{where}: {error['msg']}" if where else str(error["msg"])
