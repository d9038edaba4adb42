"""Probes: /healthz says the process answers, /readyz that it can serve right now.

Liveness touches nothing: a database outage must not get every replica
restarted. Readiness checks the database, the firmware storage and the MQTT
link, each in a thread of its own with a short timeout, and names what failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from otaship.protocol import parse_mqtt_url
from otaship.receiver.http import wire
from otaship.receiver.http.responses import answer
from otaship.receiver.logs import redact, short_error
from otaship.receiver.storage import StorageError

log = logging.getLogger("otaship.health")

CHECK_TIMEOUT = 2.0
OK = "ok"
NOT_CONFIGURED = "not configured"
PASSING = (OK, NOT_CONFIGURED)


class Readiness:
    """The dependency checks behind /readyz.

    A check that hangs (a database that accepts connections but never
    answers) keeps its thread; the next probe waits on that same attempt
    instead of starting another, so at most one thread per dependency is ever
    busy with checks, however often the orchestrator asks.
    """

    def __init__(self, timeout: float = CHECK_TIMEOUT) -> None:
        self.timeout = timeout
        self._pending: dict[str, Future[None]] = {}
        self._last: dict[str, str] = {}

    async def check(self, name: str, work: Callable[[], None]) -> str:
        """ "ok", or a short reason that is safe to show (no secrets, no traceback)."""
        pending = self._pending.get(name)
        if pending is None or pending.done():
            pending = self._pending[name] = _in_thread(name, work)
        try:
            await _wait(pending, self.timeout)
            outcome = OK
        except TimeoutError:
            outcome = f"no answer within {self.timeout:g} s"
        except StorageError as exc:
            outcome = redact(str(exc))[:200]
        except Exception as exc:
            outcome = short_error(exc)
        self.record(name, outcome)
        return outcome

    def record(self, name: str, outcome: str) -> None:
        # Log changes only: a probe every few seconds must not flood the log.
        # "Not configured" passes as "ok" does: it was never unavailable.
        before = self._last.get(name, OK)
        if before != outcome and not (before in PASSING and outcome in PASSING):
            if outcome in PASSING:
                log.info("%s is available again", name)
            else:
                log.warning("%s is not ready: %s", name, outcome)
        self._last[name] = outcome


async def _wait(future: Future[None], timeout: float) -> None:
    """Wait for the check's thread without cancelling it on a timeout."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def wake(_: Future[None]) -> None:
        # A hung check can outlive the event loop of the probe that started it.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(done.set)

    future.add_done_callback(wake)
    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
    async with asyncio.timeout(timeout):
        await done.wait()
    future.result()


def _in_thread(name: str, work: Callable[[], None]) -> Future[None]:
    future: Future[None] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            work()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)

    # A daemon thread: a hung check must not hold up the process's exit.
    threading.Thread(target=run, name=f"otaship-readyz-{name}", daemon=True).start()
    return future


def readiness_of(request: Request) -> Readiness:
    readiness: Readiness | None = getattr(request.app.state, "readiness", None)
    if readiness is None:
        readiness = request.app.state.readiness = Readiness()
    return readiness


async def healthz(request: Request) -> Response:
    return answer(wire.Health(status="ok"))


async def readyz(request: Request) -> Response:
    readiness = readiness_of(request)
    services = getattr(request.app.state, "services", None)
    if services is None:
        checks = {"database": "not started", "storage": "not started", "mqtt": "not started"}
    else:
        engine, storage = services.engine, services.storage

        def ping_database() -> None:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))

        database, stored = await asyncio.gather(
            readiness.check("database", ping_database), readiness.check("storage", storage.check)
        )
        checks = {"database": database, "storage": stored, "mqtt": _mqtt(request, services.settings.mqtt_url)}
        readiness.record("mqtt", checks["mqtt"])
    failed = [name for name, outcome in checks.items() if outcome not in PASSING]
    body = wire.Readiness(
        status="unavailable" if failed else "ready",
        checks=wire.ReadinessChecks(**checks),
        **wire.given(failed=failed or None),
    )
    return answer(body, 503 if failed else 200)


def _mqtt(request: Request, mqtt_url: str) -> str:
    """The link's own state: paho keeps reconnecting in its thread, so asking costs nothing."""
    address = parse_mqtt_url(mqtt_url)
    if address is None:
        return NOT_CONFIGURED
    background = getattr(request.app.state, "background", None)
    link = getattr(background, "link", None)
    if link is None:
        return "not started"
    if not link.connected:
        # Host and port only: the URL's user name and password stay out of the answer.
        return f"not connected to the broker at {address.host}:{address.port}"
    return OK


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
