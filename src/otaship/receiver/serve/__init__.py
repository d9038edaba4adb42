"""`otaship serve`: the app on granian (the default) or uvicorn, in one or more worker processes.

Everything server-specific lives here: the app itself (app.py) runs the same on
both, and each server gets the same wrapping (asgi.py) so that what a client
or an operator sees does not depend on the server chosen.
"""

from __future__ import annotations

from otaship.receiver.serve.workers import worker_count
from otaship.receiver.settings import Settings


def run(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then shut every worker down through its lifespan."""
    workers = worker_count(settings)
    if settings.server == "uvicorn":
        from otaship.receiver.serve.on_uvicorn import run_uvicorn

        run_uvicorn(settings, workers)
    else:
        from otaship.receiver.serve.on_granian import run_granian

        run_granian(settings, workers)
