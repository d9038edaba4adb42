"""What uvicorn adds around an app, added for granian, so that both serve alike.

uvicorn trusts X-Forwarded-For and X-Forwarded-Proto from the addresses in
FORWARDED_ALLOW_IPS (default 127.0.0.1), logs every ASGI message at the trace
level, and logs when the lifespan has started and ended. granian does none of
these; uvicorn's own middleware gives the same behaviour on granian, down to
the same variable and the same parsing.
"""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otaship.receiver.logs import LEVELS, flush_logs

log = logging.getLogger("otaship")

DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1"


def trusted_proxies() -> str:
    """The addresses whose proxy headers are believed: uvicorn's variable, uvicorn's default."""
    return os.environ.get("FORWARDED_ALLOW_IPS", DEFAULT_FORWARDED_ALLOW_IPS)


class LifespanLog:
    """Logs the end of the lifespan's startup and shutdown, as uvicorn does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def logged(message: Message) -> None:
            # Logged, and written, before the server hears of it: told the
            # shutdown is complete, granian may end the worker process before
            # this coroutine resumes or the log's thread empties its queue.
            if message["type"] == "lifespan.startup.complete":
                log.info("Application startup complete.")
            elif message["type"] == "lifespan.shutdown.complete":
                log.info("Application shutdown complete.")
                await anyio.to_thread.run_sync(flush_logs)
            await send(message)

        await self.app(scope, receive, logged)


class ClientPortAsNumber:
    """granian gives the client's port as a string; ASGI says a number, and
    uvicorn's message logger formats it as one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if client is not None and isinstance(client[1], str):
            scope["client"] = (client[0], int(client[1]) if client[1].isdigit() else 0)
        await self.app(scope, receive, send)


def as_uvicorn_serves(app: ASGIApp, level: str) -> ASGIApp:
    """`app` wrapped as uvicorn wraps it with proxy_headers=True."""
    from uvicorn.middleware.message_logger import MessageLoggerMiddleware
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    # uvicorn types ASGI apps with its own TypedDicts, Starlette with mappings.
    wrapped: Any = LifespanLog(app)
    if LEVELS[level] <= LEVELS["trace"]:
        wrapped = MessageLoggerMiddleware(wrapped)
    return ClientPortAsNumber(cast(ASGIApp, ProxyHeadersMiddleware(wrapped, trusted_hosts=trusted_proxies())))
