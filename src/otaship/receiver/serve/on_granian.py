"""The app on granian: its ASGI interface with the lifespan, in worker processes.

granian's main process binds the socket, forks the workers and handles
SIGINT and SIGTERM: it then stops each worker, which ends its lifespan
(the outbox flushed, the rollout clock stopped) before it exits. The app is
built inside each worker, so the embedded broker, the paho thread and the
background loops live there. File responses go out through the
`http.response.pathsend` extension granian offers, read by its Rust side.
"""

from __future__ import annotations

import functools
import logging

from starlette.types import ASGIApp

from otaship.receiver.logs import LEVELS, configure_logging
from otaship.receiver.serve.asgi import as_uvicorn_serves
from otaship.receiver.serve.worker import worker_app
from otaship.receiver.settings import Settings, SettingsError

# granian's own loggers: its server log (the Rust side logs here too) and its
# access log, off, as the receiver writes its own.
SERVER_LOGGER = "_granian"
ACCESS_LOGGER = "granian.access"


def granian_level(level: str) -> str:
    """granian's name for an OTASHIP_LOG_LEVEL: it has no trace level."""
    return "debug" if LEVELS[level] < LEVELS["debug"] else level


def adopt_granian_logs(settings: Settings) -> None:
    """Send granian's lines through the receiver's handler (format, redaction);
    granian set its own up with dictConfig when it started."""
    # configure_logging takes granian's own logger (SERVER_LOGGER) too.
    configure_logging(settings)
    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers.clear()
    access.propagate = False


def granian_worker_app(settings: Settings, workers: int) -> ASGIApp:
    """Runs in each worker process, after granian configured logging there."""
    adopt_granian_logs(settings)
    return as_uvicorn_serves(worker_app(settings, workers), settings.log_level)


def run_granian(settings: Settings, workers: int) -> None:
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server import Server

    server = Server(
        # Only names the processes: the loader below builds the app.
        "otaship.receiver.app:create_app",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=workers,
        log_level=LogLevels(granian_level(settings.log_level)),
        log_access=False,
    )
    adopt_granian_logs(settings)
    try:
        server.serve(
            target_loader=functools.partial(granian_worker_app, settings, workers), wrap_loader=False
        )
    except RuntimeError as exc:
        # granian's Rust side raises a bare RuntimeError when it cannot bind.
        if "Address already in use" not in str(exc):
            raise
        # Worded as uvicorn words it, for the scripts and tests that match it.
        raise SettingsError(
            f"error while attempting to bind on address ({settings.host!r}, {settings.port}): "
            "address already in use (OTASHIP_HOST, OTASHIP_PORT)"
        ) from None
