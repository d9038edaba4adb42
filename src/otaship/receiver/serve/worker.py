"""The app as one worker process serves it: logging set up, its own MQTT client id."""

from __future__ import annotations

import logging
import socket

from starlette.types import ASGIApp

from otaship.protocol import parse_mqtt_url
from otaship.receiver.logs import configure_logging
from otaship.receiver.serve.workers import claim_slot, worker_client_id
from otaship.receiver.settings import Settings

log = logging.getLogger("otaship")


def worker_app(settings: Settings, workers: int) -> ASGIApp:
    """Called in each worker process, after the server set up its own logging."""
    from otaship.receiver.app import create_app

    configure_logging(settings)
    address = parse_mqtt_url(settings.mqtt_url)
    if workers > 1 and address is not None and not address.embedded:
        base = settings.mqtt_client_id or f"otaship-{socket.gethostname()}"
        slot = claim_slot(settings.data_dir / "run")
        settings = settings.with_overrides(mqtt_client_id=worker_client_id(base, slot))
        log.info("worker slot %d of %d: MQTT client id %s", slot, workers, settings.mqtt_client_id)
    return create_app(settings)


def uvicorn_app() -> ASGIApp:
    """uvicorn's workers import the app by name; `serve` put the settings in the environment."""
    from otaship.receiver.serve.workers import worker_count

    settings = Settings.from_env()
    return worker_app(settings, worker_count(settings))
