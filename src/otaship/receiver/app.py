"""create_app(settings): the receiver's routes, error handling and lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio.to_thread
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from otaship.protocol import parse_mqtt_url
from otaship.receiver.background import Background
from otaship.receiver.db.engine import create_db_engine, ensure_schema
from otaship.receiver.http import console, health, openapi, sign_in, wire
from otaship.receiver.http import device_api as devices
from otaship.receiver.http.answer_errors import INTERNAL_ERROR, AnswerErrors
from otaship.receiver.http.auth import finish_key_uses
from otaship.receiver.http.management import anti_rollback, deployments, github, ota, rollouts, signing_keys
from otaship.receiver.http.nosniff import HEADERS as NOSNIFF
from otaship.receiver.http.nosniff import NoSniff
from otaship.receiver.http.rate_limits import RateLimits, limited
from otaship.receiver.http.responses import answer, message
from otaship.receiver.http.sign_in_throttle import SignInThrottle
from otaship.receiver.intake.multipart import spool_dir_ready
from otaship.receiver.logs import configure_logging, flush_logs, redact
from otaship.receiver.metrics import Metrics, ObserveRequests
from otaship.receiver.metrics import routes as metrics_routes
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from otaship.receiver.storage import create_storage
from otaship.receiver.targeting.catalog import FirmwareCatalog

log = logging.getLogger("otaship")


def describe_backends(settings: Settings) -> str:
    """What this receiver works with, for its first line of log; passwords redacted."""
    mqtt = settings.mqtt_url if parse_mqtt_url(settings.mqtt_url) is not None else "none (devices poll)"
    return redact(
        f"database {settings.resolved_database_url}, storage {settings.resolved_storage_url}, MQTT {mqtt}"
    )


def build_services(settings: Settings) -> Services:
    engine = create_db_engine(settings.resolved_database_url)
    try:
        # SQLite migrates itself; a shared database must have been migrated already.
        ensure_schema(engine)
        storage = create_storage(settings.resolved_storage_url, cache_dir=settings.cache_dir)
    except BaseException:
        # A refused database or storage ends the start: its pooled connections
        # go now, not whenever the collector finds them.
        engine.dispose()
        raise
    return Services(
        settings=settings,
        engine=engine,
        storage=storage,
        catalog=FirmwareCatalog(engine),
        notify=parse_mqtt_url(settings.mqtt_url) is not None,
    )


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> Starlette:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = services is None
        # Said first: a wrong folder or URL shows before anything it affects.
        log.info("using %s", describe_backends(settings))
        built = services if services is not None else build_services(settings)
        spool_dir_ready(settings.tmp_dir)
        app.state.services = built
        background = Background(built, metrics=metrics)
        app.state.background = background
        try:
            await background.start()
        except BaseException:
            await background.stop()
            raise
        try:
            yield
        finally:
            await finish_key_uses(app.state.key_uses)
            await background.stop()
            if owned:
                built.storage.close()
                built.engine.dispose()
            # Every line of this app's life is written before it is said to have stopped.
            await anyio.to_thread.run_sync(flush_logs)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, exc.detail)
        response = message(exc.status_code, text)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        # Only a middleware outside AnswerErrors gets here; the connection then closes.
        log.error("unhandled error on %s %s", request.method, redact(request.url.path), exc_info=exc)
        return answer(wire.Message(message=INTERNAL_ERROR), 500, headers=NOSNIFF)

    metrics = Metrics()
    app = Starlette(
        routes=[
            # The device routes first: every device of a fleet hits them at once.
            # The management API alone is rate limited, per API key.
            *devices.routes,
            *limited(
                [
                    *ota.routes,
                    *rollouts.routes,
                    *deployments.routes,
                    *signing_keys.routes,
                    *anti_rollback.routes,
                    *github.routes,
                    *sign_in.routes,
                ],
                RateLimits.from_settings(settings),
            ),
            *github.webhook_routes,
            *health.routes,
            *metrics_routes,
            *openapi.routes,
            # For people: the pages, after every API route.
            *console.routes,
        ],
        middleware=[
            Middleware(NoSniff),
            Middleware(ObserveRequests, metrics=metrics),
            Middleware(AnswerErrors),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
    )
    app.state.metrics = metrics
    app.state.key_uses = set()
    app.state.sign_in_throttle = SignInThrottle()

    def engine() -> Engine | None:
        running: Services | None = getattr(app.state, "services", None)
        return running.engine if running is not None else None

    metrics.watch_rollouts(engine)
    if services is not None:
        app.state.services = services
    return app


def app_from_env() -> Starlette:
    """For `uvicorn --factory otaship.receiver.app:app_from_env`: logs as `otaship serve` does."""
    settings = Settings.from_env()
    configure_logging(settings)
    return create_app(settings)
