"""Every request gets an answer, and its connection stays usable.

Starlette's ServerErrorMiddleware answers an exception no route handled, and
then raises it again for the server to log; uvicorn, seeing it after the
answer went out, closes the connection. A client that had already sent its
next request on that keep-alive connection (a CI job, a proxy) gets no answer
at all. During a database outage that was a third of all requests.

This middleware sits inside the others: it logs the exception, answers 500
and lets it go no further. Once an answer has started, nothing can take its
place: the exception goes on, and the connection is closed, the only honest
end of a body cut short.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otaship.receiver.http import responses
from otaship.receiver.logs import redact

log = logging.getLogger("otaship")

INTERNAL_ERROR = "Internal server error"


class AnswerErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:
                raise
            # The download path carries the group token.
            log.error("unhandled error on %s %s", scope["method"], redact(scope["path"]), exc_info=exc)
            await responses.message(500, INTERNAL_ERROR)(scope, receive, send)
