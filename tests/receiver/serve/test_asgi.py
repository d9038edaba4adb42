"""The wrapping that makes granian serve the app as uvicorn does, piece by piece.

The whole, on a real server, is in test_serve_lifespan.py, test_serve_downloads.py
and test_serve_proxy_headers.py; these pin each piece's exact behaviour.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from starlette.types import Message, Receive, Scope, Send

from otaship.receiver.serve.asgi import ClientPortAsNumber, LifespanLog
from otaship.receiver.serve.on_granian import granian_level


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
