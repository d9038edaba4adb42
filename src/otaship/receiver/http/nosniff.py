"""X-Content-Type-Options: nosniff on every response.

Without it a browser may sniff a JSON error or a firmware download into
HTML and run it on the receiver's origin.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = (b"x-content-type-options", b"nosniff")
# For a response sent outside the middleware stack: the unexpected-error
# handler answers from Starlette's ServerErrorMiddleware, which wraps it.
HEADERS = {"X-Content-Type-Options": "nosniff"}


class NoSniff:
    """Pure ASGI middleware: adds the header to the response start and passes
    every other message through untouched, so streamed bodies and the
    `http.response.pathsend` extension of file downloads go as they came."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), HEADER]}
            await send(message)

        await self.app(scope, receive, send_with_header)
