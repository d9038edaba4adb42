"""Prometheus metrics: a registry per app, the request observer, and GET /metrics.

Each app has its own CollectorRegistry (never prometheus-client's global one),
so tests and tools can build many apps in one process and each counts only its
own traffic.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import anyio.to_thread
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otaship import protocol
from otaship.receiver.log_summary import Tally, counts_text, seconds_text
from otaship.receiver.logs import ACCESS_LOGGER, redact

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger("otaship.metrics")
access_log = logging.getLogger(ACCESS_LOGGER)

DEPLOY_KINDS = ("plain", "canary", "promotion")
REPORT_KINDS = (*protocol.REPORT_KINDS, "unknown")
# Why a device report was not stored: malformed (checked before it is queued),
# for an unknown device or another owner's, over the queue's bound, or refused
# by the database on its own (its batch's other reports were stored).
DROP_REASONS = ("invalid", "not_owned", "queue_full", "store_failed")
# Device checks answer in well under a millisecond; uploads can take many seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Any other method a client makes up is counted as "other": labels must stay few.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# Probes and scrapes come every few seconds: their access lines are debug, not info.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# Every device of a fleet asks `latest` every few minutes: one line each would be
# most of the log and, written at info, cost more than the answer. Their lines
# are debug; at info, one line a minute counts them by status (see
# write_device_checks). Downloads keep their line: a device downloads once per update.
COUNTED_ROUTES = frozenset({protocol.LATEST_ROUTE})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestStats(LATENCY_BUCKETS)
        self.registry.register(self.requests)
        # Device checks by status since the last summary line.
        self.device_checks = Tally()
        self.upload_bytes = Counter(
            "otaship_upload_bytes",
            "Firmware bytes received by POST /v1/ota/group",
            registry=self.registry,
        )
        self.deploys = Counter(
            "otaship_deploys",
            "Firmware deploys by kind: plain, canary (a rollout's first stage), promotion (its fleet stage)",
            ["kind"],
            registry=self.registry,
        )
        self.triggers_published = Counter(
            "otaship_triggers_published",
            "Update triggers the MQTT broker acknowledged",
            registry=self.registry,
        )
        self.reports = Counter(
            "otaship_device_reports",
            "Device reports by kind and result: dropped ones were not "
            "stored (otaship_device_reports_dropped says why)",
            ["kind", "result"],
            registry=self.registry,
        )
        self.report_drops = Counter(
            "otaship_device_reports_dropped",
            "Device reports not stored, by reason: invalid, not_owned, queue_full or store_failed",
            ["reason"],
            registry=self.registry,
        )
        self.retries_scheduled = Counter(
            "otaship_device_retries_scheduled",
            "Devices of a rollout stage that failed (a 203, another version after their 201, or "
            "silence after it) with a retry of their group's trigger ahead",
            registry=self.registry,
        )
        self.device_retries = Counter(
            "otaship_device_retries",
            "Retries of failed devices: one per device each time its group's trigger is queued again",
            registry=self.registry,
        )
        self.retry_triggers = Counter(
            "otaship_retry_triggers",
            "Group triggers queued again to retry failed devices; each asks every device of the "
            "group to check latest once",
            registry=self.registry,
        )
        # Known series start at 0, so a rate() sees the first event.
        for kind in DEPLOY_KINDS:
            self.deploys.labels(kind)
        for kind in protocol.REPORT_KINDS:
            for result in ("accepted", "dropped"):
                self.reports.labels(kind, result)
        self.reports.labels("unknown", "dropped")
        for reason in DROP_REASONS:
            self.report_drops.labels(reason)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    @staticmethod
    def of(conn: HTTPConnection) -> Metrics:
        metrics: Metrics = conn.app.state.metrics
        return metrics

    def watch_rollouts(self, engine: Callable[[], Engine | None]) -> None:
        """Report rollouts by state, read from the database at each scrape."""
        self.registry.register(RolloutStates(engine))

    def report(self, kind: str, result: str, count: int = 1) -> None:
        self.reports.labels(kind if kind in REPORT_KINDS else "unknown", result).inc(count)

    def retried(self, scheduled: int, devices: int, groups: int) -> None:
        """What one retry pass of the rollout clock did, once committed."""
        if scheduled:
            self.retries_scheduled.inc(scheduled)
        if devices:
            self.device_retries.inc(devices)
        if groups:
            self.retry_triggers.inc(groups)

    def report_dropped(self, reason: str, count: int = 1) -> None:
        self.report_drops.labels(reason).inc(count)


class RequestStats(Collector):
    """HTTP requests by method, route template and status, with their latency.

    Counted in plain Python rather than with prometheus-client's labelled
    Counter and Histogram: their locks made about 3 µs a request on this kind
    of machine, `record` about 0.4 µs. Only the event loop's thread records, so
    nothing needs a lock. Scrapes run in a worker thread and copy each series
    in one C-level step; a series' count is the sum of its buckets, so `_count`
    and the `+Inf` bucket always agree.
    """

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        # (method, route, status) -> [count per bucket ..., count above the last bound, sum]
        self._series: dict[tuple[str, str, int], list[float]] = {}

    def record(self, method: str, route: str, status: int, duration: float) -> None:
        series = self._series.get((method, route, status))
        if series is None:
            series = self._series[(method, route, status)] = [0] * (len(self.bounds) + 2)
        series[bisect_left(self.bounds, duration)] += 1
        series[-1] += duration

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily(
                "otaship_http_requests",
                "HTTP requests by method, route template and status",
                labels=["method", "route", "status"],
            ),
            HistogramMetricFamily(
                "otaship_http_request_duration_seconds",
                "Time to answer an HTTP request, by route template",
                labels=["method", "route"],
            ),
        )

    def collect(self) -> Iterable[Metric]:
        requests, latency = self._families()
        merged: dict[tuple[str, str], list[float]] = {}
        for (method, route, status), live in list(self._series.items()):
            series = list(live)
            requests.add_metric([method, route, str(status)], sum(series[:-1]))
            into = merged.setdefault((method, route), [0] * len(series))
            for index, value in enumerate(series):
                into[index] += value
        for (method, route), series in merged.items():
            cumulative, buckets = 0.0, []
            for bound, count in zip([*self.bounds, float("inf")], series[:-1], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            latency.add_metric([method, route], buckets, sum_value=series[-1])
        return [requests, latency]


class RolloutStates(Collector):
    """A gauge read at scrape time. The database is shared, so every replica
    reports the same numbers: aggregate with max(), not sum()."""

    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self._engine = engine

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily("otaship_rollouts", "Rollouts by state", labels=["state"])

    def describe(self) -> Iterable[Metric]:
        # Without this, registering would call collect() and query the database.
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        from otaship.receiver.db.engine import read_session
        from otaship.receiver.db.enums import State
        from otaship.receiver.rollouts.store import count_by_state

        engine = self._engine()
        if engine is None:
            return []
        try:
            with read_session(engine) as session:
                counts = count_by_state(session=session)
        except SQLAlchemyError as exc:
            # The other metrics are still worth a scrape; /readyz names the database.
            log.warning("rollouts by state left out of /metrics: %s", type(exc).__name__)
            return []
        family = self._family()
        for state in State:
            family.add_metric([state.value], counts.get(state, 0))
        return [family]


class ObserveRequests:
    """Pure ASGI middleware: times each request once, counts it, writes its access line.

    It runs on every device check, so the per-request work is two clock reads,
    a dict lookup and two additions (see RequestStats); the access line is
    built only when its level is enabled. Routes are labelled by template
    (`/v1/ota/group/latest/{group_id}`), never by raw path, so ids and tokens
    neither explode the label count nor reach the metrics.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.requests = metrics.requests
        self.device_checks = metrics.device_checks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]  # what an exception before the response start becomes

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self._observe(scope, status[0], time.perf_counter() - start)

    def _observe(self, scope: Scope, status: int, duration: float) -> None:
        # Starlette's router leaves the matched route in the scope.
        route = scope.get("route")
        template: str = getattr(route, "path", UNMATCHED) if route is not None else UNMATCHED
        method: str = scope["method"]
        if method not in METHODS:
            method = "other"
        self.requests.record(method, template, status, duration)
        if template in COUNTED_ROUTES:
            self.device_checks.add(str(status))
            level = logging.DEBUG
        else:
            level = logging.DEBUG if template in QUIET_ROUTES else logging.INFO
        if access_log.isEnabledFor(level):
            _write_access_line(scope, level, method, template, status, duration)


def _write_access_line(
    scope: Scope, level: int, method: str, route: str, status: int, duration: float
) -> None:
    path = redact(scope["path"])
    client = scope.get("client")
    access_log.log(
        level,
        "%s %s %d %.1fms",
        method,
        path,
        status,
        duration * 1000,
        extra={
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "client": client[0] if client else None,
        },
    )


def write_device_checks(metrics: Metrics, seconds: float) -> None:
    """The info line that stands for the device checks' debug access lines."""
    by_status = metrics.device_checks.take()
    if not by_status:
        return
    total = sum(by_status.values())
    access_log.info(
        "device checks (GET latest) in the last %s: %d (%s)",
        seconds_text(seconds),
        total,
        counts_text(by_status),
        extra={
            "event": "device_checks",
            "route": protocol.LATEST_ROUTE,
            "count": total,
            "by_status": by_status,
        },
    )


async def scrape(request: Request) -> Response:
    registry = Metrics.of(request).registry
    # The rollouts gauge reads the database: keep it off the event loop.
    body = await anyio.to_thread.run_sync(generate_latest, registry)
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})


routes = [Route("/metrics", scrape, methods=["GET"])]
