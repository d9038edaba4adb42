"""An exception no route handled: a 500, and the connection still carries the next request.

Against a real uvicorn (as `otaship serve` runs it), with two requests
pipelined on one connection: Starlette alone answers the first and then lets
uvicorn close the connection, so the second is never answered.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from otaship.receiver.app import create_app
from otaship.receiver.http.answer_errors import AnswerErrors
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from tests.services import free_port


async def boom(request: Request) -> Response:
    raise RuntimeError("a bug")


@pytest.fixture
def server(settings: Settings, services: Services) -> Iterator[int]:
    app = create_app(settings, services=services)
    app.router.routes.append(Route("/boom", boom))
    port = free_port()
    running = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not running.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    running.should_exit = True
    thread.join(15)


def pipelined(port: int, *paths: str) -> list[int]:
    """Send every request on one connection at once; the statuses answered before it closed."""
    request = "".join(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n" for path in paths).encode()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        while received.count(b"HTTP/1.1 ") < len(paths):
            try:
                chunk = connection.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    # A status line follows the previous body with nothing between them.
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]


def test_an_unhandled_error_is_answered_and_the_next_request_too(
    server: int, caplog: pytest.LogCaptureFixture
) -> None:
    assert pipelined(server, "/boom", "/healthz", "/boom", "/healthz") == [500, 200, 500, 200]
    assert "unhandled error on GET /boom" in caplog.text


def test_an_error_after_the_answer_started_goes_on() -> None:
    async def started_then_failed(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("the body broke")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    with pytest.raises(RuntimeError, match="the body broke"):
        asyncio.run(AnswerErrors(started_then_failed)(scope, receive, send))
    # Nothing sent in place of the answer that started: the server closes the connection.
    assert [m["type"] for m in sent] == ["http.response.start"]
