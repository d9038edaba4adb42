"""A fleet of simulated IoTaaP OS devices in one process: a user feature and our load generator.

Each simulated device speaks the device protocol (docs/device-protocol.md) the way the IoTaaP
OS ESP32 library does: it logs in to MQTT with its owner's credentials, reports
its status, answers an update trigger with 200, checks `latest`, answers 202 or
201, downloads and verifies the image (no redirects, `Content-Length`, `x-MD5`,
the 0xE9 magic), answers 203 on any failure, and "reboots" into the new
version. A chosen share of devices comes back on the old version, like a bad
image that boot-loops back.

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
- all HTTP goes through one `httpx.AsyncClient` with a connection limit, and
  each download is streamed into an MD5, so 1,000 devices downloading a 1.5 MiB
  image never hold 1,000 images in memory (about 80 MiB RSS for 1,000 devices).

The HTTP limit defaults to 16 connections, far fewer than a real fleet opens:
httpcore 1.0's pool does bookkeeping proportional to its size (quadratic in
part, encode/httpcore#1035) on every request, and that, not the network, bounds
a big simulation. 8 to 16 connections already keep a local receiver busy on a
2-core machine; raise --http-connections for a distant one.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import math
import random
import signal
import ssl
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import click
import httpx

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from otaship.receiver.settings import Settings

log = logging.getLogger(__name__)

# Update-response codes of the IoTaaP OS library (docs/device-protocol.md, "Reports").
CODE_TRIGGER_RECEIVED = 200
CODE_UPDATE_STARTING = 201
CODE_ALREADY_CURRENT = 202
CODE_UPDATE_ERROR = 203

# The first byte of every ESP32-family application image.
ESP_IMAGE_MAGIC = 0xE9

EXIT_OK = 0
EXIT_NOT_REACHED = 1  # --until-version was not reached before the stop
EXIT_USAGE = 2

# Outcomes of a device's last update attempt.
UPDATED = "updated"
FAILED = "failed"  # came back on its old version after a 201
ALREADY_CURRENT = "already_current"
ERROR = "error"  # answered 203
OUTCOMES = (UPDATED, FAILED, ALREADY_CURRENT, ERROR)

_MISC_TICK = 1.0  # paho's loop_misc only needs to run about once a second
_DISCONNECT_GRACE = 2.0
_MAX_RECONNECT_BACKOFF = 10.0
# CONNACK reason codes (paho maps MQTT 3.1.1's 4 and 5 onto them): wrong
# credentials are a configuration error, not something to retry.
_REFUSED_CREDENTIALS = (134, 135)  # bad user name or password, not authorized


class SimulationError(ValueError):
    """The simulation cannot run as configured; the message says what to fix."""


class _ConnectionLost(Exception):
    """The device's MQTT connection closed under an operation."""


class _UpdateFailed(Exception):
    """An update step failed; the device answers 203."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str
    password: str | None


def parse_mqtt_url(url: str) -> BrokerAddress:
    """`mqtt://USER:PASSWORD@HOST:PORT` or `mqtts://…`; the user names the topic namespace."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise SimulationError(f"unsupported MQTT URL scheme in {url!r}: use mqtt:// or mqtts://")
    if not parts.hostname:
        raise SimulationError(f"the MQTT URL {url!r} has no host")
    if not parts.username:
        raise SimulationError(
            "the MQTT URL needs the owner's mqtt_user (devices publish under /<mqtt_user>/...): "
            "mqtt://MQTT_USER:MQTT_PASSWORD@HOST:PORT"
        )
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise SimulationError(f"bad port in MQTT URL {url!r}") from exc
    password = unquote(parts.password) if parts.password is not None else None
    return BrokerAddress(parts.hostname, port, tls, unquote(parts.username), password)


def default_device_ids(group_id: str, count: int, id_prefix: str | None = None) -> list[str]:
    prefix = id_prefix if id_prefix is not None else f"sim-{group_id[:8]}"
    return [f"{prefix}-{n:05d}" for n in range(1, count + 1)]


def failing_devices(count: int, fail_rate: float, seed: int) -> frozenset[int]:
    """Indexes of the devices that boot-loop back: round(count × fail_rate) of them, fixed by seed."""
    share = math.floor(count * fail_rate + 0.5)
    return frozenset(random.Random(seed).sample(range(count), share))


@dataclass
class SimulationConfig:
    server: str
    mqtt_url: str
    group_id: str
    token: str
    devices: int
    version: str = "0.0.0"
    fail_rate: float = 0.0
    # Seconds between status reports after the boot report; 0 reports on boot only.
    status_interval: float = 5.0
    id_prefix: str | None = None
    # Explicit device ids; when given there must be `devices` of them.
    device_ids: list[str] | None = None
    until_version: str | None = None
    duration: float | None = None
    seed: int = 0
    core_version: str = "1.0.0-sim"
    # A reboot after a good download lasts a random time in this range (seconds).
    reboot_delay: tuple[float, float] = (0.2, 1.0)
    http_connections: int = 16
    http_timeout: float = 30.0
    # Fleet-wide cap on unacknowledged QoS 1 publishes.
    max_inflight: int = 1000
    # Devices connecting at once (TCP connect to SUBACK).
    connect_concurrency: int = 32
    connect_threads: int = 8
    connect_timeout: float = 10.0
    keepalive: int = 60
    progress_interval: float = 0.5

    def resolved_device_ids(self) -> list[str]:
        if self.device_ids is None:
            return default_device_ids(self.group_id, self.devices, self.id_prefix)
        if len(self.device_ids) != self.devices:
            raise SimulationError(f"{len(self.device_ids)} device ids given for {self.devices} devices")
        return list(self.device_ids)

    def check(self) -> BrokerAddress:
        """Validate the configuration; return the parsed broker address."""
        broker = parse_mqtt_url(self.mqtt_url)
        if urlsplit(self.server).scheme not in ("http", "https"):
            raise SimulationError(f"the server URL {self.server!r} must start with http:// or https://")
        if self.devices < 1:
            raise SimulationError("the fleet needs at least one device")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise SimulationError(f"fail rate {self.fail_rate} is not between 0 and 1")
        if self.duration is not None and self.duration <= 0:
            raise SimulationError("the duration must be positive")
        low, high = self.reboot_delay
        if not 0 <= low <= high:
            raise SimulationError(f"bad reboot delay range {self.reboot_delay}")
        for name in ("http_connections", "max_inflight", "connect_concurrency", "connect_threads"):
            if getattr(self, name) < 1:
                raise SimulationError(f"{name} must be at least 1")
        ids = self.resolved_device_ids()
        if len(set(ids)) != len(ids):
            raise SimulationError("device ids must be unique")
        for device_id in ids:
            # Ids are MQTT client ids and topic levels.
            if not device_id or any(c in device_id for c in "/+#\0 ") or len(device_id) > 64:
                raise SimulationError(f"device id {device_id!r} cannot be used in an MQTT topic")
        for label, value in (("mqtt_user", broker.username), ("group id", self.group_id)):
            if any(c in value for c in "/+#\0"):
                raise SimulationError(f"the {label} {value!r} cannot be used in an MQTT topic")
        return broker


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

    def line(self) -> str:
        target = (
            f" | on {self.target_version}: {self.on_target}/{self.devices}" if self.target_version else ""
        )
        return (
            f"[{self.elapsed:7.1f}s] online {self.online}/{self.devices} | triggered {self.triggered}"
            f" | updating {self.updating} | updated {self.updated} | failed {self.failed}"
            f" | current {self.already_current} | errors {self.errors}{target}"
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

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "initial_version": self.initial_version, "version": self.version,
            "outcome": self.outcome, "last_code": self.last_code, "triggers": self.triggers,
            "updates": self.updates, "rollbacks": self.rollbacks, "errors": self.errors,
            "reconnects": self.reconnects, "update_seconds": _round(self.update_seconds),
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
    first_trigger_seconds: float | None
    last_on_target_seconds: float | None
    update_seconds_p50: float | None
    update_seconds_p95: float | None
    update_seconds_max: float | None

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
            "updated": self.updated, "failed": self.failed,
            "already_current": self.already_current, "errors": self.errors,
            "not_triggered": self.not_triggered,
            "versions": self.versions,
            "target_version": self.target_version, "on_target": self.on_target,
            "until_version": self.until_version, "reached_until_version": self.reached_until_version,
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
            ("not triggered", str(self.not_triggered)),
            ("running versions", versions),
        ]
        if self.target_version:
            rows.append((f"on {self.target_version}", f"{self.on_target}/{len(self.devices)}"))
            rows.append((f"first trigger -> last on {self.target_version}",
                         seconds(self.trigger_to_last_on_target)))
        if self.update_seconds_p50 is not None:
            rows.append(("update time p50 / p95 / max", " / ".join(
                seconds(v) for v in (self.update_seconds_p50, self.update_seconds_p95,
                                     self.update_seconds_max))))
        rows.append(("all devices online after", seconds(self.all_online_seconds)))
        rows.append(("ran for", seconds(self.duration_seconds)))
        if self.until_version:
            rows.append((f"reached {self.until_version}", "yes" if self.reached_until_version else "no"))
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class _Connection:
    """One MQTT connection of one device, from CONNECT until its socket closes.

    A reboot or a lost connection ends it; the device then opens a new one with
    a fresh paho client, as a rebooted ESP32 starts from scratch.
    """

    def __init__(self, device: _Device, client: mqtt.Client) -> None:
        self.device = device
        self.fleet = device.fleet
        self.client = client
        self.sock: Any = None
        self.connack: Any = None  # paho ReasonCode once CONNACK arrived
        self.subscribed = False
        self.closed = False
        self.unacked: set[int] = set()
        # Set on every state change; waiters re-check their condition.
        self.changed = asyncio.Event()
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect

    # -- socket plumbing (event loop thread only) --------------------------------

    def attach(self) -> None:
        """Hand the freshly connected socket to the event loop."""
        sock = self.client.socket()
        if sock is None:
            raise _ConnectionLost("no socket after connect")
        loop = self.fleet.loop
        self.sock = sock
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = lambda _c, _u, s: loop.add_writer(s, self._writable)
        def unregister_write(_client: object, _userdata: object, sock: Any) -> None:
            loop.remove_writer(sock)

        self.client.on_socket_unregister_write = unregister_write
        loop.add_reader(sock, self._readable)
        if self.client.want_write():
            loop.add_writer(sock, self._writable)

    def _readable(self) -> None:
        try:
            while True:
                self.client.loop_read()
                sock = self.client.socket()
                # TLS may hold decrypted bytes the selector cannot see.
                if sock is None or not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                    break
        except Exception as exc:  # a bug in a callback: stop the fleet, never swallow it
            self.fleet.fail(exc)

    def _writable(self) -> None:
        try:
            self.client.loop_write()
        except Exception as exc:
            self.fleet.fail(exc)

    def _on_socket_close(self, _client: Any, _userdata: Any, sock: Any) -> None:
        loop = self.fleet.loop
        loop.remove_reader(sock)
        loop.remove_writer(sock)
        self._mark_closed()

    def _mark_closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        for _ in self.unacked:
            self.fleet.inflight.release()
        self.unacked.clear()
        self.changed.set()

    def force_close(self) -> None:
        """Close the socket without the MQTT goodbye (end of a simulation)."""
        sock = self.client.socket()
        # paho forgets a socket it closed itself; one we closed has no fd left.
        if sock is None or sock.fileno() < 0:
            self._mark_closed()
            return
        if self.sock is not None:
            self.fleet.loop.remove_reader(sock)
            self.fleet.loop.remove_writer(sock)
        sock.close()
        self._mark_closed()

    def disconnect(self) -> None:
        """Send DISCONNECT; paho closes the socket once it is written."""
        if not self.closed:
            self.client.disconnect()

    # -- paho callbacks (called from loop_read/loop_write, on the loop thread) ------

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connack = reason
        self.changed.set()

    def _on_subscribe(self, _client: Any, _userdata: Any, _mid: int, reasons: Any, _props: Any) -> None:
        self.subscribed = not any(r.is_failure for r in reasons)
        if not self.subscribed:
            log.debug("%s: subscription refused: %s", self.device.id, reasons)
            self.disconnect()
        self.changed.set()

    def _on_message(self, _client: Any, _userdata: Any, _message: Any) -> None:
        # The payload is ignored, as IoTaaP OS does.
        self.device.on_trigger(self)

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        if mid in self.unacked:
            self.unacked.discard(mid)
            self.fleet.inflight.release()
            self.changed.set()

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, _reason: Any, _props: Any) -> None:
        self.changed.set()

    # -- operations ----------------------------------------------------------------

    async def wait_for(self, condition: Callable[[], bool], timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Queue a QoS 1 publish; returns once it is handed to paho, not when acknowledged."""
        await self.fleet.inflight.acquire()
        if self.closed:
            self.fleet.inflight.release()
            raise _ConnectionLost(topic)
        info = self.client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1)
        if info.rc != 0:  # MQTT_ERR_SUCCESS
            self.fleet.inflight.release()
            raise _ConnectionLost(f"publish to {topic}: rc {info.rc}")
        self.unacked.add(info.mid)

    async def flush(self, timeout: float) -> None:
        """Wait until every publish is acknowledged."""
        await self.wait_for(lambda: not self.unacked or self.closed, timeout)
        if self.closed:
            raise _ConnectionLost("closed before its publishes were acknowledged")


class _Device:
    def __init__(self, fleet: _Fleet, index: int, device_id: str, *, fails_update: bool) -> None:
        self.fleet = fleet
        self.index = index
        self.id = device_id
        self.fails_update = fails_update
        self.initial_version = fleet.config.version
        self.version = self.initial_version
        # The version of its last acknowledged boot report (what the receiver saw).
        self.reported_version: str | None = None
        self.booted_at = time.monotonic()
        self.battery = fleet.rng.randint(20, 100)
        self.connection: _Connection | None = None
        self.online = False
        self.update_task: asyncio.Task[None] | None = None
        self.status_task: asyncio.Task[None] | None = None
        self.reboot_into: str | None = None
        self.in_update = False
        self.outcome: str | None = None
        self.last_code: int | None = None
        self.triggers = 0
        self.updates = 0
        self.rollbacks = 0
        self.errors = 0
        self.reconnects = 0
        self.triggered_at: float | None = None
        self.settled_at: float | None = None
        self.update_seconds: float | None = None
        base = f"/{fleet.broker.username}/devices/{device_id}"
        self.status_topic = f"{base}/status"
        self.response_topic = f"{base}/update-response"
        # A MAC-like id for the HTTP headers Arduino's HTTPUpdate sends.
        self.mac = ":".join(f"{b:02X}" for b in hashlib.md5(device_id.encode()).digest()[:6])

    # -- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        backoff = 0.5
        rebooted = False
        try:
            while True:
                try:
                    connection = await self._connect()
                except (OSError, TimeoutError, _ConnectionLost) as exc:
                    self.fleet.warn_once("connect", f"cannot connect to the MQTT broker (retrying): {exc!r}")
                    log.debug("%s: cannot connect: %s", self.id, exc)
                    await asyncio.sleep(backoff * self.fleet.rng.uniform(0.5, 1.5))
                    backoff = min(backoff * 2, _MAX_RECONNECT_BACKOFF)
                    continue
                backoff = 0.5
                try:
                    await self._boot_report(connection, rebooted)
                    rebooted = False
                except (_ConnectionLost, TimeoutError):
                    connection.force_close()
                await connection.wait_for(lambda: connection.closed)  # noqa: B023  (awaited here)
                self.online = False
                await self._stop_tasks()
                if self.reboot_into is not None:
                    await self._reboot()
                    rebooted = True
                else:
                    self.reconnects += 1
                    if self.in_update and not rebooted:
                        # Lost the broker mid-update: the attempt is over.
                        self._finish_update(ERROR, None)
        finally:
            self.online = False
            await self._stop_tasks()

    async def _connect(self) -> _Connection:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        fleet = self.fleet
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.id,
            protocol=mqtt.MQTTv311, clean_session=True,
        )
        client.username_pw_set(fleet.broker.username, fleet.broker.password)
        client.connect_timeout = fleet.config.connect_timeout
        if fleet.tls_context is not None:
            client.tls_set_context(fleet.tls_context)
        connection = _Connection(self, client)
        # Recorded before connecting: the end-of-run sweep closes sockets that a
        # connector thread opened after the simulation was told to stop.
        self.connection = connection
        async with fleet.connect_slots:
            await fleet.loop.run_in_executor(
                fleet.connector,
                partial(client.connect, fleet.broker.host, fleet.broker.port, fleet.config.keepalive),
            )
            connection.attach()
            try:
                timeout = fleet.config.connect_timeout
                await connection.wait_for(lambda: connection.connack is not None or connection.closed, timeout)
                refusal = connection.connack
                if refusal is not None and refusal.is_failure and refusal.value in _REFUSED_CREDENTIALS:
                    raise SimulationError(
                        f"the broker refused {self.id}: {refusal}; check the mqtt_user and "
                        "mqtt_password in the MQTT URL"
                    )
                if connection.closed or refusal is None or refusal.is_failure:
                    raise _ConnectionLost(f"broker refused the connection: {refusal}")
                client.subscribe(fleet.trigger_topic, qos=1)
                await connection.wait_for(lambda: connection.subscribed or connection.closed, timeout)
                if connection.closed:
                    raise _ConnectionLost("subscription refused")
            except BaseException:
                connection.force_close()
                raise
        return connection

    async def _boot_report(self, connection: _Connection, rebooted: bool) -> None:
        await connection.publish(self.status_topic, self._status())
        await connection.flush(self.fleet.config.connect_timeout)
        self.online = True
        self.fleet.set_reported(self, self.version)
        if rebooted:
            self._finish_update(FAILED if self.fails_update else UPDATED, time.monotonic())
        if self.fleet.config.status_interval > 0:
            self.status_task = asyncio.create_task(self._report_status(connection))
            self.status_task.add_done_callback(self.fleet.watch)

    async def _reboot(self) -> None:
        fleet = self.fleet
        new_version, self.reboot_into = self.reboot_into, None
        await asyncio.sleep(fleet.rng.uniform(*fleet.config.reboot_delay))
        if not self.fails_update and new_version is not None:
            self.version = new_version
        self.booted_at = time.monotonic()

    async def _stop_tasks(self) -> None:
        tasks = [t for t in (self.status_task, self.update_task) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.status_task = None
        if self.update_task is not None and self.update_task.done():
            self.update_task = None

    def _status(self) -> dict[str, Any]:
        return {
            "battery": self.battery,
            "uptime": int(time.monotonic() - self.booted_at),
            "core_version": self.fleet.config.core_version,
            "fw_version": self.version,
        }

    async def _report_status(self, connection: _Connection) -> None:
        interval = self.fleet.config.status_interval
        # A random phase, so a fleet that rebooted together does not report in lockstep.
        await asyncio.sleep(interval * self.fleet.rng.uniform(0.5, 1.5))
        try:
            while True:
                if self.fleet.rng.random() < 0.1:
                    self.battery = max(1, self.battery - 1)
                await connection.publish(self.status_topic, self._status())
                await asyncio.sleep(interval)
        except _ConnectionLost:
            return

    # -- update --------------------------------------------------------------------

    def on_trigger(self, connection: _Connection) -> None:
        if self.in_update or connection.closed or self.fleet.stopping:
            # Busy flashing or rebooting: a real device misses it too.
            return
        self.in_update = True
        self.triggers += 1
        now = time.monotonic()
        self.triggered_at = now
        self.fleet.note_trigger(now)
        self.update_task = asyncio.create_task(self._update(connection))
        self.update_task.add_done_callback(self.fleet.watch)

    async def _update(self, connection: _Connection) -> None:
        try:
            await self._respond(connection, CODE_TRIGGER_RECEIVED)
            try:
                latest = await self._latest_version()
            except _UpdateFailed as exc:
                log.debug("%s: latest: %s", self.id, exc)
                await self._respond(connection, CODE_UPDATE_ERROR)
                self._finish_update(ERROR, None)
                return
            self.fleet.note_latest(latest)
            if latest == self.version:
                await self._respond(connection, CODE_ALREADY_CURRENT)
                self._finish_update(ALREADY_CURRENT, None)
                return
            await self._respond(connection, CODE_UPDATE_STARTING)
            try:
                await self._download()
            except _UpdateFailed as exc:
                log.debug("%s: download: %s", self.id, exc)
                await self._respond(connection, CODE_UPDATE_ERROR)
                self._finish_update(ERROR, None)
                return
            # The image is good: the device reboots whatever MQTT does next.
            self.reboot_into = latest
            # Best effort, so the broker has our 201 before we go.
            with contextlib.suppress(_ConnectionLost, TimeoutError):
                await connection.flush(self.fleet.config.connect_timeout)
            connection.disconnect()
            # A socket that cannot even take the DISCONNECT is dropped.
            self.fleet.loop.call_later(_DISCONNECT_GRACE, connection.force_close)
        except (_ConnectionLost, TimeoutError):
            # run() sees the closed connection and reconnects.
            connection.force_close()

    async def _respond(self, connection: _Connection, code: int) -> None:
        self.last_code = code
        await connection.publish(self.response_topic, {"code": code})

    def _finish_update(self, outcome: str, settled_at: float | None) -> None:
        self.in_update = False
        self.outcome = outcome
        if outcome == UPDATED:
            self.updates += 1
        elif outcome == FAILED:
            self.rollbacks += 1
        elif outcome == ERROR:
            self.errors += 1
        if settled_at is not None and self.triggered_at is not None:
            self.settled_at = settled_at
            self.update_seconds = settled_at - self.triggered_at

    async def _latest_version(self) -> str:
        fleet = self.fleet
        async with fleet.http_slots:
            try:
                response = await fleet.http.get(fleet.latest_url)
            except httpx.HTTPError as exc:
                raise _UpdateFailed(f"GET latest: {exc!r}") from exc
        if response.status_code != 200:
            raise _UpdateFailed(f"GET latest answered {response.status_code}")
        try:
            version = response.json()["ver"]
        except (ValueError, KeyError, TypeError) as exc:
            raise _UpdateFailed(f"GET latest: unexpected body {response.text[:80]!r}") from exc
        if not isinstance(version, str) or not version:
            raise _UpdateFailed(f"GET latest: bad version {version!r}")
        return version

    async def _download(self) -> None:
        fleet = self.fleet
        headers = {
            # What Arduino's HTTPUpdate sends; no compression, like the device.
            "User-Agent": "ESP32-http-Update",
            "Accept-Encoding": "identity",
            "x-ESP32-STA-MAC": self.mac,
            "x-ESP32-mode": "sketch",
            "x-ESP32-version": self.version,
        }
        async with fleet.http_slots:
            try:
                async with fleet.http.stream("GET", fleet.download_url, headers=headers) as response:
                    if response.status_code != 200:
                        raise _UpdateFailed(f"download answered {response.status_code}")
                    length = _content_length(response.headers.get("content-length"))
                    expected_md5 = response.headers.get("x-md5", "").strip().lower()
                    if len(expected_md5) != 32:
                        raise _UpdateFailed("download has no x-MD5 header")
                    md5 = hashlib.md5()
                    received = 0
                    first: int | None = None
                    # Hash as the bytes arrive: a fleet never holds its images in memory.
                    async for chunk in response.aiter_raw():
                        if first is None and chunk:
                            first = chunk[0]
                        received += len(chunk)
                        if received > length:
                            raise _UpdateFailed(f"more than Content-Length {length} bytes")
                        md5.update(chunk)
            except httpx.HTTPError as exc:
                raise _UpdateFailed(f"download: {exc!r}") from exc
        if received != length:
            raise _UpdateFailed(f"got {received} of {length} bytes")
        if first != ESP_IMAGE_MAGIC:
            raise _UpdateFailed(f"first byte {first!r} is not the 0xE9 image magic")
        if md5.hexdigest() != expected_md5:
            raise _UpdateFailed("MD5 of the image does not match x-MD5")

    def summary(self) -> DeviceSummary:
        return DeviceSummary(
            id=self.id, initial_version=self.initial_version, version=self.version,
            outcome=self.outcome, last_code=self.last_code, triggers=self.triggers,
            updates=self.updates, rollbacks=self.rollbacks, errors=self.errors,
            reconnects=self.reconnects, update_seconds=self.update_seconds,
        )


def _content_length(value: str | None) -> int:
    try:
        length = int(value or "")
    except ValueError as exc:
        raise _UpdateFailed(f"bad Content-Length {value!r}") from exc
    # HTTPUpdate refuses an answer without a positive length.
    if length <= 0:
        raise _UpdateFailed(f"bad Content-Length {value!r}")
    return length


class _Fleet:
    """The shared state of one simulation: loop, limits, HTTP client and counters."""

    def __init__(
        self,
        config: SimulationConfig,
        broker: BrokerAddress,
        on_progress: Callable[[FleetProgress], None] | None,
    ) -> None:
        self.config = config
        self.broker = broker
        self.on_progress = on_progress
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(config.seed ^ 0x5EED)
        self.tls_context = ssl.create_default_context() if broker.tls else None
        self.trigger_topic = f"/{broker.username}/groups/{config.group_id}/update-trigger"
        server = config.server.rstrip("/")
        self.latest_url = f"{server}/v1/ota/group/latest/{config.group_id}"
        self.download_url = f"{server}/v1/ota/group/download/{config.group_id}{config.token}"
        self.inflight = asyncio.Semaphore(config.max_inflight)
        self.connect_slots = asyncio.Semaphore(config.connect_concurrency)
        self.http_slots = asyncio.Semaphore(config.http_connections)
        self.connector = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.connect_threads, thread_name_prefix="otaship-simulate-connect"
        )
        self.http = httpx.AsyncClient(
            follow_redirects=False,  # the device's HTTP client does not follow them
            limits=httpx.Limits(
                max_connections=config.http_connections,
                max_keepalive_connections=config.http_connections,
            ),
            timeout=httpx.Timeout(config.http_timeout, pool=None),
        )
        failing = failing_devices(config.devices, config.fail_rate, config.seed)
        self.devices = [
            _Device(self, i, device_id, fails_update=i in failing)
            for i, device_id in enumerate(config.resolved_device_ids())
        ]
        self.started = time.monotonic()
        self.stopping = False
        self.failure: BaseException | None = None
        self.wake = asyncio.Event()  # stop, failure or until_version reached
        self.first_trigger_at: float | None = None
        self.all_online_at: float | None = None
        self.latest_seen: str | None = None
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
        if not task.cancelled() and task.exception() is not None:
            self.fail(task.exception())  # type: ignore[arg-type]

    def note_trigger(self, at: float) -> None:
        if self.first_trigger_at is None:
            self.first_trigger_at = at

    def note_latest(self, version: str) -> None:
        self.latest_seen = version

    def set_reported(self, device: _Device, version: str) -> None:
        if device.reported_version is not None:
            self.reported_count[device.reported_version] -= 1
        device.reported_version = version
        self.reported_count[version] += 1
        if self.all_online_at is None and all(d.online for d in self.devices):
            self.all_online_at = time.monotonic()
        until = self.config.until_version
        if until is not None and self.reported_count[until] == len(self.devices):
            self.wake.set()

    @property
    def target_version(self) -> str | None:
        return self.config.until_version or self.latest_seen

    def progress(self) -> FleetProgress:
        outcomes = Counter(d.outcome for d in self.devices if not d.in_update)
        target = self.target_version
        return FleetProgress(
            elapsed=time.monotonic() - self.started,
            devices=len(self.devices),
            online=sum(d.online for d in self.devices),
            triggered=sum(d.triggers > 0 for d in self.devices),
            updating=sum(d.in_update for d in self.devices),
            updated=outcomes[UPDATED], failed=outcomes[FAILED],
            already_current=outcomes[ALREADY_CURRENT], errors=outcomes[ERROR],
            target_version=target,
            on_target=self.reported_count[target] if target else 0,
        )

    def summary(self) -> FleetSummary:
        devices = [d.summary() for d in self.devices]
        outcomes = Counter(d.outcome for d in devices)
        target = self.target_version
        on_target = [d for d in self.devices if target is not None and d.version == target]
        settled = [d.settled_at for d in on_target if d.settled_at is not None and d.outcome == UPDATED]
        durations = sorted(d.update_seconds for d in self.devices
                           if d.outcome == UPDATED and d.update_seconds is not None)

        def since_start(at: float | None) -> float | None:
            return None if at is None else at - self.started

        until = self.config.until_version
        return FleetSummary(
            devices=devices,
            updated=outcomes[UPDATED], failed=outcomes[FAILED],
            already_current=outcomes[ALREADY_CURRENT], errors=outcomes[ERROR],
            not_triggered=outcomes[None],
            versions=dict(Counter(d.version for d in devices)),
            target_version=target,
            on_target=len(on_target),
            until_version=until,
            reached_until_version=until is not None and self.reported_count[until] == len(self.devices),
            duration_seconds=time.monotonic() - self.started,
            all_online_seconds=since_start(self.all_online_at),
            first_trigger_seconds=since_start(self.first_trigger_at),
            last_on_target_seconds=since_start(max(settled)) if settled else None,
            update_seconds_p50=statistics.median(durations) if durations else None,
            update_seconds_p95=durations[min(len(durations) - 1, math.ceil(0.95 * len(durations)) - 1)]
            if durations else None,
            update_seconds_max=durations[-1] if durations else None,
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
                d.connection for d in self.devices
                if d.connection is not None and d.connection.sock is not None and not d.connection.closed
            ]
            for connection in open_connections:
                connection.disconnect()
            try:
                async with asyncio.timeout(_DISCONNECT_GRACE):
                    for connection in open_connections:
                        await connection.wait_for(lambda c=connection: c.closed)  # type: ignore[misc]
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
) -> FleetSummary:
    """Run the fleet until `stop` is set, `until_version` is reached or `duration` passes."""
    broker = config.check()
    fleet = _Fleet(config, broker, on_progress)
    return await fleet.run(stop)


# -- registration ----------------------------------------------------------------


def register_devices(settings: Settings, config: SimulationConfig) -> tuple[int, int]:
    """Create the simulated devices in the receiver's database; return (created, already there)."""
    from sqlalchemy.exc import OperationalError, ProgrammingError
    from sqlmodel import select

    from otaship.receiver.db.devices import DeviceError, create_device
    from otaship.receiver.db.engine import create_db_engine, write_session
    from otaship.receiver.db.models import Device, Group
    from otaship.receiver.ids import secret_matches_plain

    ids = config.resolved_device_ids()
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
                chunk = ids[start:start + 500]
                existing.update(session.exec(select(Device.id).where(Device.id.in_(chunk))))  # type: ignore[attr-defined]
            created = 0
            for device_id in ids:
                if device_id in existing:
                    continue
                try:
                    create_device(
                        session=session, group=group, name=device_id,
                        firmware_version=config.version, device_id=device_id,
                    )
                except DeviceError as exc:
                    raise SimulationError(str(exc)) from exc
                created += 1
        return created, len(existing)
    finally:
        engine.dispose()


# -- command line ----------------------------------------------------------------


@click.command(
    "simulate",
    short_help="run simulated IoTaaP OS devices (a test fleet, or a load generator)",
    help=(
        "Run N simulated IoTaaP OS devices in one process. Each logs in to MQTT with the "
        "owner's credentials, reports its status, and on an update trigger checks latest, "
        "downloads and verifies the image, and reboots into the new version."
    ),
)
@click.option("--group", required=True, metavar="ID", help="the group the devices belong to")
@click.option("--token", required=True, help="the group's token (used to download)")
@click.option("--mqtt-url", required=True, metavar="URL",
              help="mqtt://MQTT_USER:MQTT_PASSWORD@HOST:PORT (or mqtts://) with the owner's credentials")
@click.option("--server", required=True, metavar="URL", help="the receiver, e.g. http://127.0.0.1:8080")
@click.option("--devices", type=click.IntRange(min=1), default=10, metavar="N", help="how many devices")
@click.option("--version", default="0.0.0", metavar="X", help="the version the devices run at start")
@click.option("--fail-rate", type=click.FloatRange(0, 1), default=0.0, metavar="F",
              help="share of devices that come back on their old version after an update")
@click.option("--register", is_flag=True,
              help="create the devices in the receiver's database first (OTASHIP_* settings)")
@click.option("--status-interval", type=click.FloatRange(min=0), default=5.0, metavar="S",
              help="seconds between status reports (0: on boot only)")
@click.option("--id-prefix", metavar="P", show_default="sim-<group[:8]>",
              help="device ids are P-00001, P-00002...")
@click.option("--until-version", metavar="V", help="stop when every device runs V (exit 1 if the run stops before)")
@click.option("--duration", type=click.FloatRange(min=0), metavar="S",
              help="stop after S seconds (with --until-version: whichever comes first)")
@click.option("--seed", type=int, default=0, help="fixes which devices fail")
@click.option("--http-connections", type=click.IntRange(min=1), default=16, metavar="N",
              help="concurrent HTTP connections to the receiver")
@click.option("--json", is_flag=True, help="print the summary as one JSON object")
def simulate_command(**params: Any) -> None:
    """`otaship simulate`; its options' values are `params`, by option name."""
    from otaship.receiver.settings import Settings

    run_command(Settings.from_env(), params)


def config_from_args(params: Mapping[str, Any]) -> SimulationConfig:
    return SimulationConfig(
        server=params["server"], mqtt_url=params["mqtt_url"], group_id=params["group"], token=params["token"],
        devices=params["devices"], version=params["version"], fail_rate=params["fail_rate"],
        status_interval=params["status_interval"], id_prefix=params["id_prefix"],
        until_version=params["until_version"], duration=params["duration"] or None, seed=params["seed"],
        http_connections=params["http_connections"],
    )


class ProgressLine:
    """One line rewritten in place on a terminal; a line every few seconds in a log."""

    def __init__(self, stream: IO[str], *, log_every: float = 5.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.log_every = log_every
        self._last_logged = 0.0
        self._width = 0

    def __call__(self, progress: FleetProgress) -> None:
        text = progress.line()
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            now = time.monotonic()
            if now - self._last_logged < self.log_every:
                return
            self._last_logged = now
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, progress: FleetProgress | None = None) -> None:
        if progress is not None and not self.tty:
            self.stream.write(progress.line() + "\n")
        elif self.tty and self._width:
            self.stream.write("\n")
        self.stream.flush()


async def _run_until_signal(config: SimulationConfig, progress: ProgressLine) -> FleetSummary:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C ends the run with a summary instead of a traceback.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    last: list[FleetProgress] = []

    def on_progress(update: FleetProgress) -> None:
        last[:] = [update]
        progress(update)

    try:
        return await simulate(config, stop=stop, on_progress=on_progress)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        progress.close(last[0] if last else None)


def run_command(settings: Settings, params: Mapping[str, Any]) -> None:
    """`otaship simulate`: exits 1 when --until-version was not reached, 2 on bad input."""
    try:
        config = config_from_args(params)
        config.check()
        if params["register"]:
            created, existing = register_devices(settings, config)
            print(f"registered {created} devices ({existing} already there)", file=sys.stderr)
        summary = asyncio.run(_run_until_signal(config, ProgressLine(sys.stderr)))
    except SimulationError as exc:
        from otaship.receiver.logs import redact

        # The message can quote the MQTT URL, password and all.
        print(redact(f"otaship: error: {exc}"), file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from exc
    if params["json"]:
        print(json.dumps(summary.to_json()))
    else:
        print(summary.table())
    sys.stdout.flush()
    if config.until_version is not None and not summary.reached_until_version:
        raise SystemExit(EXIT_NOT_REACHED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `simulate` on its own (`python -m otaship.simulator.cli ...`): `otaship simulate ...`."""
    from otaship.receiver.cli import main as otaship_main

    return otaship_main(["simulate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
