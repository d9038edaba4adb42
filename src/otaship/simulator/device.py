"""One simulated IoTaaP OS device: boot report, status, the update on a trigger, the reboot.

It answers a trigger as the IoTaaP OS ESP32 library does (docs/device-protocol.md):
200, then `latest`, then 202 or 201, the download checked as Arduino's HTTPUpdate
checks it (no redirects, `Content-Length`, `x-MD5`, the 0xE9 magic), 203 on any
failure, and a reboot into the new version. A device chosen to fail does so
in the simulation's fail mode (config.FAIL_MODES): back into its old version
after the reboot, silent after its 201, rebooting again and again on the new
version, or 203 because its download fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from otaship.protocol import ResponseCode, response_topic, status_topic
from otaship.simulator.config import (
    ALREADY_CURRENT,
    DARK,
    ERROR,
    FAIL_203,
    FAIL_DARK,
    FAIL_REBOOT_LOOP,
    FAIL_REVERT,
    FAILED,
    REBOOT_LOOP,
    UPDATED,
    SimulationError,
)
from otaship.simulator.connection import DISCONNECT_GRACE, Connection, ConnectionLost
from otaship.simulator.http import HttpError

if TYPE_CHECKING:
    from otaship.simulator.fleet import Fleet

log = logging.getLogger(__name__)

# The first byte of every ESP32-family application image.
ESP_IMAGE_MAGIC = 0xE9

_MAX_RECONNECT_BACKOFF = 10.0
_UPTIME_AT_START = (60.0, 3600.0)
# CONNACK reason codes (paho maps MQTT 3.1.1's 4 and 5 onto them): wrong
# credentials are a configuration error, not something to retry.
_REFUSED_CREDENTIALS = (134, 135)  # bad user name or password, not authorized


# What the IoTaaP OS library's HTTPClient sends when it asks `latest`.
_LATEST_HEADERS = {"User-Agent": "ESP32HTTPClient", "Connection": "keep-alive", "Accept-Encoding": "identity"}


class UpdateFailed(Exception):
    """An update step failed; the device answers 203."""


class Device:
    def __init__(self, fleet: Fleet, index: int, device_id: str, *, fails_update: bool) -> None:
        self.fleet = fleet
        self.index = index
        self.id = device_id
        self.fails_update = fails_update
        # How it fails (config.FAIL_MODES), or None for a device that does not.
        self.fail_mode = fleet.config.fail_mode if fails_update else None
        # Gone dark: it sends nothing more and answers no trigger.
        self.dark = False
        # Booted the new version and now reboots every reboot_loop_interval.
        self.looping = False
        self.loop_task: asyncio.Task[None] | None = None
        self.download_failures_left = fleet.config.download_failures
        self.initial_version = fleet.config.version
        self.version = self.initial_version
        # The version of its last acknowledged boot report (what the receiver saw).
        self.reported_version: str | None = None
        # Devices join a simulation as devices in a running fleet: up for a while
        # (a minute to an hour). The receiver tells a reboot by the uptime going
        # down, which it cannot do from the zero of a device that has just booted.
        self.booted_at = time.monotonic() - fleet.rng.uniform(*_UPTIME_AT_START)
        self.battery = fleet.rng.randint(20, 100)
        self.connection: Connection | None = None
        self._online = False
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
        # Reboots of its reboot loop.
        self.reboots = 0
        self.triggered_at: float | None = None
        self.settled_at: float | None = None
        self.update_seconds: float | None = None
        self.status_topic = status_topic(fleet.mqtt_user, device_id)
        self.response_topic = response_topic(fleet.mqtt_user, device_id)
        # A MAC-like id for the HTTP headers Arduino's HTTPUpdate sends.
        self.mac = ":".join(f"{b:02X}" for b in hashlib.md5(device_id.encode()).digest()[:6])

    @property
    def online(self) -> bool:
        return self._online

    @online.setter
    def online(self, value: bool) -> None:
        # The fleet counts online devices as they change: counting them on every
        # boot report made a fleet's boot quadratic in its size.
        if value != self._online:
            self._online = value
            self.fleet.online_count += 1 if value else -1

    # -- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        backoff = 0.5
        rebooted = False
        try:
            while True:
                try:
                    connection = await self._connect()
                except (OSError, TimeoutError, ConnectionLost) as exc:
                    self.fleet.warn_once("connect", f"cannot connect to the MQTT broker (retrying): {exc!r}")
                    log.debug("%s: cannot connect: %s", self.id, exc)
                    await asyncio.sleep(backoff * self.fleet.rng.uniform(0.5, 1.5))
                    backoff = min(backoff * 2, _MAX_RECONNECT_BACKOFF)
                    continue
                backoff = 0.5
                try:
                    await self._boot_report(connection, rebooted)
                    rebooted = False
                except (ConnectionLost, TimeoutError):
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

    async def _connect(self) -> Connection:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        fleet = self.fleet
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.username_pw_set(fleet.broker.username, fleet.broker.password)
        client.connect_timeout = fleet.config.connect_timeout
        if fleet.tls_context is not None:
            client.tls_set_context(fleet.tls_context)
        connection = Connection(self, client)
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
                await connection.wait_for(
                    lambda: connection.connack is not None or connection.closed, timeout
                )
                refusal = connection.connack
                if refusal is not None and refusal.is_failure and refusal.value in _REFUSED_CREDENTIALS:
                    raise SimulationError(
                        f"the broker refused {self.id}: {refusal}; check the mqtt_user and "
                        "mqtt_password in the MQTT URL"
                    )
                if connection.closed or refusal is None or refusal.is_failure:
                    raise ConnectionLost(f"broker refused the connection: {refusal}")
                client.subscribe(fleet.trigger_topic, qos=1)
                await connection.wait_for(lambda: connection.subscribed or connection.closed, timeout)
                if connection.closed:
                    raise ConnectionLost("subscription refused")
            except BaseException:
                connection.force_close()
                raise
        return connection

    async def _boot_report(self, connection: Connection, rebooted: bool) -> None:
        if self.dark:
            # Connected (a broker sees its keepalives) but silent.
            self.online = True
            return
        # The reboot decided the outcome and the version; both are counted
        # before the report goes out, so that whoever reads the report finds
        # the fleet's counts agreeing with it.
        if rebooted and self.in_update:
            if self.fail_mode == FAIL_REBOOT_LOOP:
                self.looping = True
                self._finish_update(REBOOT_LOOP, time.monotonic())
            else:
                self._finish_update(FAILED if self.fail_mode == FAIL_REVERT else UPDATED, time.monotonic())
        self.online = True
        self.fleet.set_reported(self, self.version)
        await connection.publish(self.status_topic, self._status())
        await connection.flush(self.fleet.config.connect_timeout)
        if self.looping:
            self.loop_task = asyncio.create_task(self._reboot_again(connection))
            self.loop_task.add_done_callback(self.fleet.watch)
        if self.fleet.config.status_interval > 0:
            self.status_task = asyncio.create_task(self._report_status(connection))
            self.status_task.add_done_callback(self.fleet.watch)

    async def _reboot(self) -> None:
        fleet = self.fleet
        new_version, self.reboot_into = self.reboot_into, None
        await asyncio.sleep(fleet.rng.uniform(*fleet.config.reboot_delay))
        if self.fail_mode != FAIL_REVERT and new_version is not None:
            self.version = new_version
        self.booted_at = time.monotonic()

    async def _stop_tasks(self) -> None:
        tasks = [
            t for t in (self.status_task, self.update_task, self.loop_task) if t is not None and not t.done()
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.status_task = None
        self.loop_task = None
        if self.update_task is not None and self.update_task.done():
            self.update_task = None

    async def _reboot_again(self, connection: Connection) -> None:
        """The reboot loop: reboot (into the same version) reboot_loop_interval after each boot."""
        while True:
            await asyncio.sleep(self.fleet.config.reboot_loop_interval)
            # A trigger being answered finishes first: a reboot cuts no update short.
            if not self.in_update and not self.fleet.stopping:
                break
        self.reboots += 1
        self.reboot_into = self.version
        self._drop(connection)

    def _drop(self, connection: Connection) -> None:
        connection.disconnect()
        # A socket that cannot even take the DISCONNECT is dropped.
        self.fleet.loop.call_later(DISCONNECT_GRACE, connection.force_close)

    def _go_dark(self) -> None:
        """Fall silent for the rest of the run, as a device hung after its 201 does."""
        self.dark = True
        if self.status_task is not None:
            self.status_task.cancel()
        self._finish_update(DARK, None)

    def _status(self) -> dict[str, Any]:
        return {
            "battery": self.battery,
            "uptime": int(time.monotonic() - self.booted_at),
            "core_version": self.fleet.config.core_version,
            "fw_version": self.version,
        }

    async def _report_status(self, connection: Connection) -> None:
        interval = self.fleet.config.status_interval
        # A random phase, so a fleet that rebooted together does not report in lockstep.
        await asyncio.sleep(interval * self.fleet.rng.uniform(0.5, 1.5))
        try:
            while True:
                if self.fleet.rng.random() < 0.1:
                    self.battery = max(1, self.battery - 1)
                # A device answering a trigger is inside its update callback
                # until it reboots or gives up: it publishes nothing meanwhile.
                if not self.in_update:
                    await connection.publish(self.status_topic, self._status())
                await asyncio.sleep(interval)
        except ConnectionLost:
            return

    # -- update --------------------------------------------------------------------

    def on_trigger(self, connection: Connection) -> None:
        if self.in_update or self.dark or connection.closed or self.fleet.stopping:
            # Busy flashing or rebooting: a real device misses it too.
            return
        self.in_update = True
        self.triggers += 1
        now = time.monotonic()
        self.triggered_at = now
        self.fleet.note_trigger(now)
        self.update_task = asyncio.create_task(self._update(connection))
        self.update_task.add_done_callback(self.fleet.watch)

    async def _update(self, connection: Connection) -> None:
        try:
            await self._respond(connection, ResponseCode.TRIGGER_RECEIVED)
            try:
                latest = await self._latest_version()
            except UpdateFailed as exc:
                log.debug("%s: latest: %s", self.id, exc)
                await self._respond(connection, ResponseCode.ERROR)
                self._finish_update(ERROR, None)
                return
            self.fleet.note_latest(latest, self.triggered_at)
            if latest == self.version:
                await self._respond(connection, ResponseCode.ALREADY_CURRENT)
                self._finish_update(ALREADY_CURRENT, None)
                return
            await self._respond(connection, ResponseCode.UPDATE_STARTING)
            try:
                await self._download()
            except UpdateFailed as exc:
                log.debug("%s: download: %s", self.id, exc)
                await self._respond(connection, ResponseCode.ERROR)
                self._finish_update(ERROR, None)
                return
            if self.fail_mode == FAIL_DARK:
                self._go_dark()
                return
            # The image is good: the device reboots whatever MQTT does next.
            self.reboot_into = latest
            # Best effort, so the broker has our 201 before we go.
            with contextlib.suppress(ConnectionLost, TimeoutError):
                await connection.flush(self.fleet.config.connect_timeout)
            self._drop(connection)
        except (ConnectionLost, TimeoutError):
            # run() sees the closed connection and reconnects.
            connection.force_close()

    async def _respond(self, connection: Connection, code: ResponseCode) -> None:
        self.last_code = int(code)
        await connection.publish(self.response_topic, {"code": int(code)})

    def _finish_update(self, outcome: str, settled_at: float | None) -> None:
        self.in_update = False
        self.outcome = outcome
        if outcome in (UPDATED, REBOOT_LOOP):
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
        try:
            response, body = await fleet.http.get(fleet.latest_path, _LATEST_HEADERS)
        except HttpError as exc:
            raise UpdateFailed(f"GET latest: {exc}") from exc
        if response.status != 200:
            raise UpdateFailed(f"GET latest answered {response.status}")
        try:
            version = json.loads(body)["ver"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UpdateFailed(f"GET latest: unexpected body {body[:80]!r}") from exc
        if not isinstance(version, str) or not version:
            raise UpdateFailed(f"GET latest: bad version {version!r}")
        return version

    async def _download(self) -> None:
        fleet = self.fleet
        if self.download_failures_left > 0:
            self.download_failures_left -= 1
            raise UpdateFailed("download failed (simulated: download_failures)")
        if self.fail_mode == FAIL_203:
            raise UpdateFailed("download failed (simulated: fail mode 203)")
        headers = {
            # What Arduino's HTTPUpdate sends; no compression, like the device.
            "User-Agent": "ESP32-http-Update",
            "Accept-Encoding": "identity",
            "x-ESP32-STA-MAC": self.mac,
            "x-ESP32-mode": "sketch",
            "x-ESP32-version": self.version,
        }
        try:
            async with fleet.http.stream(fleet.download_path, headers) as (response, chunks):
                if response.status != 200:
                    raise UpdateFailed(f"download answered {response.status}")
                length = _content_length(response.headers.get("content-length"))
                expected_md5 = response.headers.get("x-md5", "").strip().lower()
                if len(expected_md5) != 32:
                    raise UpdateFailed("download has no x-MD5 header")
                md5 = hashlib.md5()
                received = 0
                first: int | None = None
                # Hash as the bytes arrive: a fleet never holds its images in memory.
                async for chunk in chunks:
                    if first is None and chunk:
                        first = chunk[0]
                    received += len(chunk)
                    if received > length:
                        raise UpdateFailed(f"more than Content-Length {length} bytes")
                    md5.update(chunk)
        except HttpError as exc:
            raise UpdateFailed(f"download: {exc}") from exc
        if received != length:
            raise UpdateFailed(f"got {received} of {length} bytes")
        if first != ESP_IMAGE_MAGIC:
            raise UpdateFailed(f"first byte {first!r} is not the 0xE9 image magic")
        if md5.hexdigest() != expected_md5:
            raise UpdateFailed("MD5 of the image does not match x-MD5")


def _content_length(value: str | None) -> int:
    try:
        length = int(value or "")
    except ValueError as exc:
        raise UpdateFailed(f"bad Content-Length {value!r}") from exc
    # HTTPUpdate refuses an answer without a positive length.
    if length <= 0:
        raise UpdateFailed(f"bad Content-Length {value!r}")
    return length
