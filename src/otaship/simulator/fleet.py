"""A fleet of simulated IoTaaP OS devices in one process: a user feature and our load generator.

Each simulated device speaks the device protocol (docs/device-protocol.md) the way the IoTaaP
OS ESP32 library does: it logs in to MQTT with its owner's credentials, reports
its status, answers an update trigger with 200, checks `latest`, answers 202 or
201, downloads and verifies the image (no redirects, `Content-Length`, `x-MD5`,
the 0xE9 magic), answers 203 on any failure, and "reboots" into the new
version. A chosen share of devices fails, in the fail mode asked for: back
on the old version like a bad image that boot-loops back (the default),
silent after its 201, rebooting again and again on the new version, or 203.

How 1,000+ devices fit in one process
-------------------------------------
Every device has its own paho client (its own MQTT connection, client id and
session), but none runs paho's network thread. All clients are driven from one
asyncio event loop through paho's external-loop API, as in paho's
`loop_asyncio.py` example: the socket is registered with `loop.add_reader`
(→ `loop_read`), with `loop.add_writer` only while paho has bytes to send
(→ `loop_write`, switched by the socket register/unregister-write callbacks),
and one ticker calls `loop_misc` on every client each second for keepalives.
We chose this over a hand-written asyncio MQTT client because paho is already
the receiver's MQTT library and its packet handling (QoS 1 flows, keepalive,
TLS) is battle-tested; and over one thread per client because 1,000 threads of
the GIL-bound paho loop cost memory and context switches for nothing.

paho's `connect()` is the one blocking call (DNS, TCP connect, TLS handshake).
It runs on a small private thread pool, before any socket callback is
installed, so no callback ever fires off the event loop's thread; the socket
is handed to the loop only once it is connected. The pool is shut down with
the simulation, and a sweep then closes every socket still open, so `simulate()`
can be started and stopped repeatedly in one process without leaking threads
or file descriptors.

Limits that keep a big fleet honest:
- connection attempts (TCP + CONNACK + SUBACK) are capped, so 1,000 devices do
  not overflow the broker's listen backlog at boot or after a mass reboot;
- unacknowledged QoS 1 publishes are capped fleet-wide (paho numbers them with
  16-bit ids, and past 65,535 in flight messages are lost silently);
- all HTTP goes through one client (http.py) with a connection limit, and
  each download is streamed into an MD5, so 1,000 devices downloading a 1.5 MiB
  image never hold 1,000 images in memory.

The HTTP limit defaults to 16 connections, far fewer than a real fleet opens:
8 to 16 connections already keep a local receiver busy on a 2-core machine;
raise --http-connections for a distant one. One process carries a few
thousand devices on a core; processes.py spreads more over several.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import random
import ssl
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from otaship.protocol import BrokerAddress, download_path, latest_path, trigger_topic
from otaship.simulator.config import (
    ALREADY_CURRENT,
    DARK,
    ERROR,
    FAILED,
    REBOOT_LOOP,
    UPDATED,
    SimulationConfig,
    SimulationError,
    mqtt_user_of,
)
from otaship.simulator.connection import DISCONNECT_GRACE
from otaship.simulator.device import Device
from otaship.simulator.http import HttpClient

if TYPE_CHECKING:
    from otaship.receiver.settings import Settings

log = logging.getLogger(__name__)

_MISC_TICK = 1.0  # paho's loop_misc only needs to run about once a second


@dataclass(frozen=True)
class FleetProgress:
    elapsed: float
    devices: int
    online: int
    triggered: int
    updating: int
    updated: int
    failed: int
    already_current: int
    errors: int
    target_version: str | None
    on_target: int
    dark: int = 0
    reboot_loop: int = 0

    def line(self) -> str:
        target = (
            f" | on {self.target_version}: {self.on_target}/{self.devices}" if self.target_version else ""
        )
        # Only a fleet with those fail modes has them.
        health = (f" | dark {self.dark}" if self.dark else "") + (
            f" | reboot-loop {self.reboot_loop}" if self.reboot_loop else ""
        )
        return (
            f"[{self.elapsed:7.1f}s] online {self.online}/{self.devices} | triggered {self.triggered}"
            f" | updating {self.updating} | updated {self.updated} | failed {self.failed}"
            f" | current {self.already_current} | errors {self.errors}{health}{target}"
        )


@dataclass(frozen=True)
class DeviceSummary:
    id: str
    initial_version: str
    version: str
    outcome: str | None
    last_code: int | None
    triggers: int
    updates: int
    rollbacks: int
    errors: int
    reconnects: int
    # From its last trigger to its boot report on the new version.
    update_seconds: float | None
    # Reboots of its reboot loop (fail mode reboot-loop).
    reboots: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "initial_version": self.initial_version,
            "version": self.version,
            "outcome": self.outcome,
            "last_code": self.last_code,
            "triggers": self.triggers,
            "updates": self.updates,
            "rollbacks": self.rollbacks,
            "errors": self.errors,
            "reconnects": self.reconnects,
            "reboots": self.reboots,
            "update_seconds": _round(self.update_seconds),
        }


@dataclass(frozen=True)
class FleetSummary:
    devices: list[DeviceSummary]
    # Devices by the outcome of their last update attempt; `not_triggered` got none.
    updated: int
    failed: int
    already_current: int
    errors: int
    not_triggered: int
    versions: dict[str, int]
    target_version: str | None
    on_target: int
    until_version: str | None
    reached_until_version: bool
    duration_seconds: float
    all_online_seconds: float | None
    # The first trigger that led a device to the target version (not an earlier deploy's).
    first_trigger_seconds: float | None
    last_on_target_seconds: float | None
    update_seconds_p50: float | None
    update_seconds_p95: float | None
    update_seconds_max: float | None
    # time.monotonic() when the fleet started, which the *_seconds above count from
    # (one clock for every process of the machine: what merge.py lines them up by).
    started: float = 0.0
    # CPU time the simulating process(es) used over the run.
    cpu_seconds: float | None = None
    # Devices silent since their 201, and devices in a reboot loop (their fail modes).
    dark: int = 0
    reboot_loop: int = 0

    @property
    def trigger_to_last_on_target(self) -> float | None:
        """Seconds from the first trigger to the last device rebooting onto the target version."""
        if self.first_trigger_seconds is None or self.last_on_target_seconds is None:
            return None
        return self.last_on_target_seconds - self.first_trigger_seconds

    def device(self, device_id: str) -> DeviceSummary:
        return next(d for d in self.devices if d.id == device_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": len(self.devices),
            "updated": self.updated,
            "failed": self.failed,
            "already_current": self.already_current,
            "errors": self.errors,
            "dark": self.dark,
            "reboot_loop": self.reboot_loop,
            "not_triggered": self.not_triggered,
            "versions": self.versions,
            "target_version": self.target_version,
            "on_target": self.on_target,
            "until_version": self.until_version,
            "reached_until_version": self.reached_until_version,
            "timing": {
                "duration": _round(self.duration_seconds),
                "all_online": _round(self.all_online_seconds),
                "first_trigger": _round(self.first_trigger_seconds),
                "last_on_target": _round(self.last_on_target_seconds),
                "trigger_to_last_on_target": _round(self.trigger_to_last_on_target),
                "update_p50": _round(self.update_seconds_p50),
                "update_p95": _round(self.update_seconds_p95),
                "update_max": _round(self.update_seconds_max),
            },
            "cpu_seconds": _round(self.cpu_seconds),
            "device_details": [d.to_json() for d in self.devices],
        }

    def table(self) -> str:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f} s"

        versions = ", ".join(f"{v}: {n}" for v, n in sorted(self.versions.items())) or "-"
        rows = [
            ("devices", str(len(self.devices))),
            ("updated", str(self.updated)),
            ("failed (back on old version)", str(self.failed)),
            ("already current (202)", str(self.already_current)),
            ("errors (203)", str(self.errors)),
            ("dark (silent after 201)", str(self.dark)),
            ("in a reboot loop", str(self.reboot_loop)),
            ("not triggered", str(self.not_triggered)),
            ("running versions", versions),
        ]
        if self.target_version:
            rows.append((f"on {self.target_version}", f"{self.on_target}/{len(self.devices)}"))
            rows.append(
                (f"first trigger -> last on {self.target_version}", seconds(self.trigger_to_last_on_target))
            )
        if self.update_seconds_p50 is not None:
            rows.append(
                (
                    "update time p50 / p95 / max",
                    " / ".join(
                        seconds(v)
                        for v in (self.update_seconds_p50, self.update_seconds_p95, self.update_seconds_max)
                    ),
                )
            )
        rows.append(("all devices online after", seconds(self.all_online_seconds)))
        rows.append(("ran for", seconds(self.duration_seconds)))
        if self.cpu_seconds is not None:
            rows.append(("simulator CPU", f"{self.cpu_seconds:.2f} s"))
        if self.until_version:
            rows.append((f"reached {self.until_version}", "yes" if self.reached_until_version else "no"))
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def update_time_stats(durations: list[float]) -> tuple[float | None, float | None, float | None]:
    """p50, p95 and max of update times (None for none)."""
    if not durations:
        return None, None, None
    ordered = sorted(durations)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return statistics.median(ordered), p95, ordered[-1]


def _device_summary(device: Device) -> DeviceSummary:
    return DeviceSummary(
        id=device.id,
        initial_version=device.initial_version,
        version=device.version,
        outcome=device.outcome,
        last_code=device.last_code,
        triggers=device.triggers,
        updates=device.updates,
        rollbacks=device.rollbacks,
        errors=device.errors,
        reconnects=device.reconnects,
        update_seconds=device.update_seconds,
        reboots=device.reboots,
    )


class Fleet:
    """The shared state of one simulation: loop, limits, HTTP client and counters."""

    def __init__(
        self,
        config: SimulationConfig,
        broker: BrokerAddress,
        on_progress: Callable[[FleetProgress], None] | None,
        *,
        until_stops: bool = True,
    ) -> None:
        self.config = config
        # False in one process of several: reaching until_version is the whole
        # fleet's to decide, so the process only reports it (processes.py).
        self.until_stops = until_stops
        self.broker = broker
        self.on_progress = on_progress
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(config.seed ^ 0x5EED)
        self.tls_context = ssl.create_default_context() if broker.tls else None
        self.mqtt_user = mqtt_user_of(broker)
        self.trigger_topic = trigger_topic(self.mqtt_user, config.group_id)
        # The receiver may sit under a path (a proxy's prefix).
        prefix = urlsplit(config.server).path.rstrip("/")
        self.latest_path = prefix + latest_path(config.group_id)
        self.download_path = prefix + download_path(config.group_id, config.token)
        self.inflight = asyncio.Semaphore(config.max_inflight)
        self.connect_slots = asyncio.Semaphore(config.connect_concurrency)
        self.connector = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.connect_threads, thread_name_prefix="otaship-simulate-connect"
        )
        # It follows no redirect, as the device's HTTP client does not.
        self.http = HttpClient(
            config.server, connections=config.http_connections, timeout=config.http_timeout
        )
        self.online_count = 0
        failing = config.failing_indexes()
        self.devices = [
            Device(self, i, device_id, fails_update=i in failing)
            for i, device_id in enumerate(config.resolved_device_ids())
        ]
        self.started = time.monotonic()
        self.cpu_started = time.process_time()
        self.stopping = False
        self.failure: BaseException | None = None
        self.wake = asyncio.Event()  # stop, failure or until_version reached
        self.first_trigger_at: float | None = None
        self.all_online_at: float | None = None
        self.latest_seen: str | None = None
        # Per version, the first trigger after which a device found it was the latest:
        # what "first trigger -> last on X" counts from, not an earlier deploy's trigger.
        self.first_trigger_of: dict[str, float] = {}
        self.reported_count: Counter[str] = Counter()
        self.warned: set[str] = set()

    # -- bookkeeping ---------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        if self.failure is None:
            if not isinstance(exc, SimulationError):
                log.error("simulation failed: %r", exc)
            self.failure = exc
        self.wake.set()

    def warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning("%s", message)

    def watch(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.fail(exc)

    def note_trigger(self, at: float) -> None:
        if self.first_trigger_at is None:
            self.first_trigger_at = at

    def note_latest(self, version: str, triggered_at: float | None = None) -> None:
        self.latest_seen = version
        if triggered_at is not None:
            first = self.first_trigger_of.get(version)
            self.first_trigger_of[version] = triggered_at if first is None else min(first, triggered_at)

    def set_reported(self, device: Device, version: str) -> None:
        if device.reported_version is not None:
            self.reported_count[device.reported_version] -= 1
        device.reported_version = version
        self.reported_count[version] += 1
        if self.all_online_at is None and self.online_count == len(self.devices):
            self.all_online_at = time.monotonic()
        until = self.config.until_version
        if until is not None and self.reported_count[until] == len(self.devices):
            if self.until_stops:
                self.wake.set()
            elif self.on_progress is not None:
                self.on_progress(self.progress())

    @property
    def target_version(self) -> str | None:
        return self.config.until_version or self.latest_seen

    def progress(self) -> FleetProgress:
        outcomes = Counter(d.outcome for d in self.devices if not d.in_update)
        target = self.target_version
        return FleetProgress(
            elapsed=time.monotonic() - self.started,
            devices=len(self.devices),
            online=self.online_count,
            triggered=sum(d.triggers > 0 for d in self.devices),
            updating=sum(d.in_update for d in self.devices),
            updated=outcomes[UPDATED],
            failed=outcomes[FAILED],
            already_current=outcomes[ALREADY_CURRENT],
            errors=outcomes[ERROR],
            target_version=target,
            on_target=self.reported_count[target] if target else 0,
            dark=outcomes[DARK],
            reboot_loop=outcomes[REBOOT_LOOP],
        )

    def summary(self) -> FleetSummary:
        devices = [_device_summary(d) for d in self.devices]
        outcomes = Counter(d.outcome for d in devices)
        target = self.target_version
        on_target = [d for d in self.devices if target is not None and d.version == target]
        settled = [d.settled_at for d in on_target if d.settled_at is not None and d.outcome == UPDATED]
        p50, p95, slowest = update_time_stats(
            [d.update_seconds for d in self.devices if d.outcome == UPDATED and d.update_seconds is not None]
        )

        def since_start(at: float | None) -> float | None:
            return None if at is None else at - self.started

        until = self.config.until_version
        return FleetSummary(
            devices=devices,
            updated=outcomes[UPDATED],
            failed=outcomes[FAILED],
            already_current=outcomes[ALREADY_CURRENT],
            errors=outcomes[ERROR],
            not_triggered=outcomes[None],
            versions=dict(Counter(d.version for d in devices)),
            target_version=target,
            on_target=len(on_target),
            until_version=until,
            reached_until_version=until is not None and self.reported_count[until] == len(self.devices),
            duration_seconds=time.monotonic() - self.started,
            all_online_seconds=since_start(self.all_online_at),
            first_trigger_seconds=since_start(
                self.first_trigger_of.get(target) if target is not None else self.first_trigger_at
            ),
            last_on_target_seconds=since_start(max(settled)) if settled else None,
            update_seconds_p50=p50,
            update_seconds_p95=p95,
            update_seconds_max=slowest,
            started=self.started,
            cpu_seconds=time.process_time() - self.cpu_started,
            dark=outcomes[DARK],
            reboot_loop=outcomes[REBOOT_LOOP],
        )

    # -- running -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None) -> FleetSummary:
        tasks: list[asyncio.Task[None]] = []
        background: list[asyncio.Task[None]] = []
        try:
            for device in self.devices:
                task = asyncio.create_task(device.run(), name=f"simulate {device.id}")
                task.add_done_callback(self.watch)
                tasks.append(task)
            background.append(asyncio.create_task(self._tick_misc()))
            if self.on_progress is not None:
                background.append(asyncio.create_task(self._report_progress()))
            if stop is not None:
                background.append(asyncio.create_task(self._forward(stop)))
            for task in background:
                task.add_done_callback(self.watch)
            try:
                async with asyncio.timeout(self.config.duration):
                    await self.wake.wait()
            except TimeoutError:
                pass
            if self.on_progress is not None and self.failure is None:
                # The last word, while the devices are still online.
                self.on_progress(self.progress())
        finally:
            self.stopping = True
            await self._shut_down(tasks, background)
        if self.failure is not None:
            raise self.failure
        return self.summary()

    async def _forward(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.wake.set()

    async def _tick_misc(self) -> None:
        # Keepalive pings and their timeouts for every connection, once a second.
        while True:
            await asyncio.sleep(_MISC_TICK)
            for device in self.devices:
                connection = device.connection
                if connection is not None and connection.sock is not None and not connection.closed:
                    connection.client.loop_misc()

    async def _report_progress(self) -> None:
        assert self.on_progress is not None
        while True:
            self.on_progress(self.progress())
            await asyncio.sleep(self.config.progress_interval)

    async def _shut_down(self, tasks: list[asyncio.Task[None]], background: list[asyncio.Task[None]]) -> None:
        try:
            for task in [*tasks, *background]:
                task.cancel()
            await asyncio.gather(*tasks, *background, return_exceptions=True)
            # Say goodbye properly, so the broker does not wait out keepalives...
            open_connections = [
                d.connection
                for d in self.devices
                if d.connection is not None and d.connection.sock is not None and not d.connection.closed
            ]
            for connection in open_connections:
                connection.disconnect()
            try:
                async with asyncio.timeout(DISCONNECT_GRACE):
                    for connection in open_connections:
                        await connection.wait_for(lambda: connection.closed)  # noqa: B023  (awaited here)
            except TimeoutError:
                pass
        finally:
            # ...then (even when the caller cancels us) let connector threads
            # finish, bounded by connect_timeout, and close whatever is still
            # open, including sockets they opened after the stop.
            self.connector.shutdown(wait=True, cancel_futures=True)
            for device in self.devices:
                if device.connection is not None:
                    device.connection.force_close()
            await self.http.aclose()


async def simulate(
    config: SimulationConfig,
    *,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[FleetProgress], None] | None = None,
    until_stops: bool = True,
) -> FleetSummary:
    """Run the fleet until `stop` is set, `until_version` is reached (with `until_stops`)
    or `duration` passes."""
    broker = config.check()
    fleet = Fleet(config, broker, on_progress, until_stops=until_stops)
    return await fleet.run(stop)


# -- registration ----------------------------------------------------------------


def register_devices(settings: Settings, config: SimulationConfig) -> tuple[int, int]:
    """Create the simulated devices in the receiver's database; return (created, already there)."""
    from sqlalchemy.exc import OperationalError, ProgrammingError
    from sqlmodel import col, select

    from otaship.receiver.db.devices import DeviceError, create_device
    from otaship.receiver.db.engine import NoDatabase, create_db_engine, require_database, write_session
    from otaship.receiver.db.models import Device as DeviceRow
    from otaship.receiver.db.models import Group
    from otaship.receiver.ids import secret_matches_plain

    ids = config.resolved_device_ids()
    try:
        require_database(settings.resolved_database_url)
    except NoDatabase as exc:
        raise SimulationError(str(exc)) from None
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with write_session(engine) as session:
            # No schema here: the group must already exist, so the receiver has
            # created (and migrated) this database; we never create tables.
            try:
                group = session.get(Group, config.group_id)
            except (OperationalError, ProgrammingError) as exc:
                raise SimulationError(
                    "cannot read groups from the receiver's database "
                    f"({str(exc.orig).splitlines()[0]}): point OTASHIP_DATA_DIR or "
                    "OTASHIP_DATABASE_URL at the running receiver's database"
                ) from exc
            if group is None:
                raise SimulationError(f"no group {config.group_id} in the receiver's database")
            if not secret_matches_plain(config.token, group.token):
                raise SimulationError(f"the token is not group {config.group_id}'s token")
            existing: set[str] = set()
            # Chunks stay under SQLite's limit on bound parameters.
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                existing.update(session.exec(select(DeviceRow.id).where(col(DeviceRow.id).in_(chunk))))
            created = 0
            for device_id in ids:
                if device_id in existing:
                    continue
                try:
                    create_device(
                        session=session,
                        group=group,
                        name=device_id,
                        firmware_version=config.version,
                        device_id=device_id,
                    )
                except DeviceError as exc:
                    raise SimulationError(str(exc)) from exc
                created += 1
        return created, len(existing)
    finally:
        engine.dispose()
