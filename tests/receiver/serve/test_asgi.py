"""The wrapping that makes granian serve the app as uvicorn does, piece by piece.

The whole, on a real server, is in test_serve_lifespan.py, test_serve_downloads.py
and test_serve_proxy_headers.py; these pin each piece's exact behaviour.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator

import pytest
from starlette.types import Message, Receive, Scope, Send

from otaship.receiver.logs import configure_logging, stop_logging
from otaship.receiver.serve.asgi import ClientPortAsNumber, LifespanLog
from otaship.receiver.serve.on_granian import granian_level
from otaship.receiver.settings import Settings
from tests.receiver.test_logs import restore_logging

__all__ = ["restore_logging"]  # a fixture


@pytest.mark.parametrize(
    ("ours", "granian"),
    [
        ("trace", "debug"),
        ("debug", "debug"),
        ("info", "info"),
        ("warning", "warning"),
        ("critical", "critical"),
    ],
)
def test_granian_gets_the_nearest_level_it_has(ours: str, granian: str) -> None:
    assert granian_level(ours) == granian


@pytest.mark.parametrize(
    ("client", "seen"),
    [(("10.0.0.1", "5678"), ("10.0.0.1", 5678)), (("10.0.0.1", 5678), ("10.0.0.1", 5678)), (None, None)],
)
def test_the_client_port_reaches_the_app_as_a_number(
    client: tuple[str, object] | None, seen: tuple[str, int] | None
) -> None:
    got: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append(scope.get("client"))

    async def nothing() -> Message:
        return {}

    async def ignore(message: Message) -> None:
        pass

    scope: Scope = {"type": "http"} if client is None else {"type": "http", "client": client}
    asyncio.run(ClientPortAsNumber(app)(scope, nothing, ignore))
    assert got == [seen]


def test_the_lifespan_logs_its_start_and_end_after_the_server_hears_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    order: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for expected, answer in (
            ("lifespan.startup", "lifespan.startup.complete"),
            ("lifespan.shutdown", "lifespan.shutdown.complete"),
        ):
            assert (await receive())["type"] == expected
            await send({"type": answer})

    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> Message:
        return next(events)

    async def send(message: Message) -> None:
        order.append(message["type"])

    with caplog.at_level(logging.INFO, logger="otaship"):
        asyncio.run(LifespanLog(app)({"type": "lifespan"}, receive, send))
    assert order == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert [r.getMessage() for r in caplog.records if r.name == "otaship"] == [
        "Application startup complete.",
        "Application shutdown complete.",
    ]


class SlowStream(io.StringIO):
    """An output that takes its time, as a pipe to a busy reader does."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        threading.Event().wait(0.2)
        with self.lock:
            return super().write(text)


@pytest.fixture
def slow_log(restore_logging: None) -> Iterator[SlowStream]:
    stream = SlowStream()
    configure_logging(Settings(mqtt_url="none", log_format="text", log_level="info"), stream=stream)
    yield stream
    stop_logging()


def test_the_shutdown_line_is_written_before_the_server_hears_the_shutdown_is_complete(
    slow_log: SlowStream,
) -> None:
    """granian may end a worker process as soon as it is told the shutdown is
    complete: a line still in the log's queue then would never be written."""
    written_when_told: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for answer in ("lifespan.startup.complete", "lifespan.shutdown.complete"):
            await receive()
            await send({"type": answer})

    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> Message:
        return next(events)

    async def send(message: Message) -> None:
        if message["type"] == "lifespan.shutdown.complete":
            with slow_log.lock:
                written_when_told.append(slow_log.getvalue())

    asyncio.run(LifespanLog(app)({"type": "lifespan"}, receive, send))
    assert [line.split(" otaship: ")[-1] for line in written_when_told[0].splitlines()] == [
        "Application startup complete.",
        "Application shutdown complete.",
    ]
