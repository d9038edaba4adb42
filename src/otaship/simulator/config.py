"""What a simulation is asked to do: its configuration, checked, and the device ids it uses."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from urllib.parse import urlsplit

from otaship.protocol import TOPIC_UNSAFE, BrokerAddress, MqttUrlError, parse_mqtt_url, usable_in_topic

# Outcomes of a device's last update attempt.
UPDATED = "updated"
FAILED = "failed"  # came back on its old version after a 201
ALREADY_CURRENT = "already_current"
ERROR = "error"  # answered 203
DARK = "dark"  # answered 201, then fell silent
REBOOT_LOOP = "reboot_loop"  # booted the new version, then kept rebooting
OUTCOMES = (UPDATED, FAILED, ALREADY_CURRENT, ERROR, DARK, REBOOT_LOOP)

# How a failing device (--fail-rate) fails: each one exercises one of the
# receiver's health signals (the `reason` of a failed device).
FAIL_REVERT = "revert"  # boots back into its old version, as ESP-IDF's app rollback does
FAIL_DARK = "dark"  # answers 201, then sends nothing for the rest of the run
FAIL_REBOOT_LOOP = "reboot-loop"  # boots the new version, then reboots again and again
FAIL_203 = "203"  # its download fails: 203, on every attempt
FAIL_MODES = (FAIL_REVERT, FAIL_DARK, FAIL_REBOOT_LOOP, FAIL_203)


class SimulationError(ValueError):
    """The simulation cannot run as configured; the message says what to fix."""


def broker_address(url: str) -> BrokerAddress:
    """The broker of `--mqtt-url`, in the device's form (otaship.protocol.parse_mqtt_url)."""
    try:
        return parse_mqtt_url(url, device=True)
    except MqttUrlError as exc:
        raise SimulationError(str(exc)) from exc


def mqtt_user_of(broker: BrokerAddress) -> str:
    """The owner's mqtt_user, which a device's URL always names."""
    if broker.username is None:
        raise SimulationError("the MQTT URL needs the owner's mqtt_user")
    return broker.username


def default_device_ids(group_id: str, count: int, id_prefix: str | None = None) -> list[str]:
    prefix = id_prefix if id_prefix is not None else f"sim-{group_id[:8]}"
    return [f"{prefix}-{n:05d}" for n in range(1, count + 1)]


def failing_devices(count: int, fail_rate: float, seed: int) -> frozenset[int]:
    """Indexes of the devices that fail (in the fail mode): round(count × fail_rate) of them, fixed by seed."""
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
    # How the devices that fail do (FAIL_MODES).
    fail_mode: str = FAIL_REVERT
    # A device in a reboot loop boots again this many seconds after each boot
    # (plus the reboot itself). A receiver takes boots less than 5 s apart for
    # one (rollouts/policy.py, BOOT_JITTER): shorter loops go unseen there.
    reboot_loop_interval: float = 7.0
    # Each device's first this many downloads fail (answered 203), as a
    # download cut short under load would; the next one goes through.
    download_failures: int = 0
    # Seconds between status reports after the boot report; 0 reports on boot only.
    status_interval: float = 5.0
    id_prefix: str | None = None
    # Explicit device ids; when given there must be `devices` of them.
    device_ids: list[str] | None = None
    # Explicit ids of the devices that fail; None: fail_rate and seed pick them. One
    # process of a fleet spread over several gets its share of the fleet's choice.
    failing_ids: list[str] | None = None
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
    # Processes the devices are spread over (processes.py); each runs a Fleet.
    processes: int = 1

    def resolved_device_ids(self) -> list[str]:
        if self.device_ids is None:
            return default_device_ids(self.group_id, self.devices, self.id_prefix)
        if len(self.device_ids) != self.devices:
            raise SimulationError(f"{len(self.device_ids)} device ids given for {self.devices} devices")
        return list(self.device_ids)

    def check(self) -> BrokerAddress:
        """Validate the configuration; return the parsed broker address."""
        broker = broker_address(self.mqtt_url)
        if urlsplit(self.server).scheme not in ("http", "https"):
            raise SimulationError(f"the server URL {self.server!r} must start with http:// or https://")
        if self.devices < 1:
            raise SimulationError("the fleet needs at least one device")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise SimulationError(f"fail rate {self.fail_rate} is not between 0 and 1")
        if self.fail_mode not in FAIL_MODES:
            raise SimulationError(f"fail mode {self.fail_mode!r} is not one of {', '.join(FAIL_MODES)}")
        if self.reboot_loop_interval <= 0:
            raise SimulationError("reboot_loop_interval must be positive")
        if self.download_failures < 0:
            raise SimulationError("download_failures must be 0 or more")
        if self.duration is not None and self.duration <= 0:
            raise SimulationError("the duration must be positive")
        low, high = self.reboot_delay
        if not 0 <= low <= high:
            raise SimulationError(f"bad reboot delay range {self.reboot_delay}")
        for name in (
            "http_connections",
            "max_inflight",
            "connect_concurrency",
            "connect_threads",
            "processes",
        ):
            if getattr(self, name) < 1:
                raise SimulationError(f"{name} must be at least 1")
        ids = self.resolved_device_ids()
        if len(set(ids)) != len(ids):
            raise SimulationError("device ids must be unique")
        for device_id in ids:
            # Ids are MQTT client ids and topic levels.
            if not usable_in_topic(device_id) or " " in device_id or len(device_id) > 64:
                raise SimulationError(f"device id {device_id!r} cannot be used in an MQTT topic")
        for label, value in (("mqtt_user", mqtt_user_of(broker)), ("group id", self.group_id)):
            if not TOPIC_UNSAFE.isdisjoint(value):
                raise SimulationError(f"the {label} {value!r} cannot be used in an MQTT topic")
        if self.failing_ids is not None and not set(self.failing_ids) <= set(ids):
            raise SimulationError("failing device ids must be among the device ids")
        return broker

    def failing_indexes(self) -> frozenset[int]:
        """Indexes (in resolved_device_ids()) of the devices that fail, in `fail_mode`."""
        if self.failing_ids is None:
            return failing_devices(self.devices, self.fail_rate, self.seed)
        failing = set(self.failing_ids)
        return frozenset(i for i, device_id in enumerate(self.resolved_device_ids()) if device_id in failing)
