"""The app on uvicorn."""

from __future__ import annotations

import os
from typing import Any

from otaship.receiver.serve.worker import worker_app
from otaship.receiver.settings import Settings


def run_uvicorn(settings: Settings, workers: int) -> None:
    import uvicorn

    # log_config=None: uvicorn's own loggers keep the handler configure_logging
    # installed. No access_log: the receiver writes its own, with the group
    # token redacted from download URLs.
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,
        "access_log": False,
        "proxy_headers": True,
    }
    if workers == 1:
        uvicorn.run(worker_app(settings, 1), **options)
        return
    # uvicorn starts its workers afresh and imports the app by name: they read
    # the settings from the environment they inherit.
    os.environ.update(OTASHIP_SERVER="uvicorn", OTASHIP_WORKERS=str(workers))
    uvicorn.run("otaship.receiver.serve.worker:uvicorn_app", factory=True, workers=workers, **options)
