"""What a test needs around simulated devices: a real receiver with firmware, and an MQTT observer.

The receiver is `otaship serve` in a subprocess (MQTT disabled there: the test
publishes triggers itself). The observer is an ordinary paho subscriber on the
real broker that records every report the devices publish, in order.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from otaship.protocol import RESPONSE, STATUS, parse_report_topic, report_filters, trigger_topic
from otaship.simulator.config import SimulationConfig
from otaship.simulator.fleet import FleetProgress, FleetSummary
from otaship.simulator.processes import run_fleet
from tests.esp_image import build_image
from tests.receiver_process import ReceiverProcess, migrated_env, otaship_json


@dataclass
class Group:
    id: str
    token: str


class ReceiverWithFirmware:
    """A running receiver, one pro owner, and helpers to make groups and deploy to them."""

    def __init__(self, data_dir: Path, *, mqtt_url: str = "none", server: str | None = None) -> None:
        self.env = migrated_env(data_dir, server=server, OTASHIP_MQTT_URL=mqtt_url)
        self.user = otaship_json(self.env, "user", "create", "sim@example.com", "--plan", "pro")
        # Quiet: ReceiverProcess pipes the server's output without reading it
        # while it runs, and an access line per device request fills the pipe
        # (64 KiB, about 600 requests) and blocks the server.
        self.process = ReceiverProcess({**self.env, "OTASHIP_LOG_LEVEL": "warning"}).start()
        self.url = self.process.url

    def group(self, name: str) -> Group:
        created = otaship_json(self.env, "group", "create", name, "--owner", "sim@example.com")
        return Group(created["id"], created["token"])

    def deploy(self, group: Group, version: str, *, code_size: int = 65536) -> bytes:
        image = build_image(version, code_size=code_size)
        response = httpx.post(
            f"{self.url}/v1/ota/group",
            headers={"Authorization": f"Bearer {self.user['api_key']}"},
            data={"group": group.id, "token": group.token, "version": version},
            files={"firmware": ("firmware.bin", image)},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        return image

    def stop(self) -> None:
        self.process.stop()


class MqttObserver:
    """Records the status reports and update responses of one owner's devices, in arrival order."""

    def __init__(
        self,
        mqtt_user: str | None = None,
        *,
        password: str = "secret",
        host: str = "127.0.0.1",
        port: int = 1883,
    ) -> None:
        # A fresh user name is a fresh topic namespace on an anonymous broker.
        self.mqtt_user = mqtt_user or f"simtest-{secrets.token_hex(4)}"
        self.password = password
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._events: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"observer-{secrets.token_hex(6)}",
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(self.mqtt_user, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.mqtt_user}:{self.password}@{self.host}:{self.port}"

    def start(self) -> MqttObserver:
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "observer could not subscribe"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(f, 1) for f in report_filters(mqtt_user=self.mqtt_user)])

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        report = parse_report_topic(message.topic)
        assert report is not None, message.topic
        with self._lock:
            self._events[report.device_id].append((report.kind, json.loads(message.payload)))

    def events(self, device_id: str) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self._events[device_id])

    def codes(self, device_id: str) -> list[int]:
        return [payload["code"] for kind, payload in self.events(device_id) if kind == RESPONSE]

    def statuses(self, device_id: str) -> list[dict[str, Any]]:
        return [payload for kind, payload in self.events(device_id) if kind == STATUS]

    def statuses_after(self, device_id: str, code: int) -> list[dict[str, Any]]:
        """Status reports that arrived after the device's first answer `code`."""
        events = self.events(device_id)
        for position, (kind, payload) in enumerate(events):
            if kind == RESPONSE and payload["code"] == code:
                return [p for k, p in events[position + 1 :] if k == STATUS]
        return []

    def booted(self, device_ids: list[str]) -> bool:
        return all(self.statuses(d) for d in device_ids)

    def trigger(self, group_id: str, version: str = "") -> None:
        """Publish an update trigger the way the receiver does."""
        info = self.client.publish(
            trigger_topic(self.mqtt_user, group_id), json.dumps({"version": version}), qos=1
        )
        info.wait_for_publish(10)


async def wait_until(
    condition: Callable[[], bool], timeout: float, *, watch: list[asyncio.Task[Any]] | None = None
) -> None:
    """Poll `condition`; fail early if a watched task (a running simulation) ended."""
    deadline = time.monotonic() + timeout
    while not condition():
        for task in watch or []:
            if task.done():
                task.result()  # raises what the simulation raised
                raise AssertionError("the simulation ended early")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


class Fleets:
    """Simulations running side by side in this event loop, each one's latest progress at hand.

    Made inside the loop; `finish()` stops them all and returns their summaries.
    """

    # Seconds between progress reports: how quickly a wait on them notices.
    PROGRESS_INTERVAL = 0.1

    def __init__(self, configs: list[SimulationConfig]) -> None:
        self.stop = asyncio.Event()
        self.progress: list[FleetProgress | None] = [None] * len(configs)
        self.tasks = [
            asyncio.create_task(
                # In this process, or over config.processes processes.
                run_fleet(
                    replace(config, progress_interval=self.PROGRESS_INTERVAL),
                    stop=self.stop,
                    on_progress=partial(self._note, index),
                )
            )
            for index, config in enumerate(configs)
        ]

    def _note(self, index: int, progress: FleetProgress) -> None:
        self.progress[index] = progress

    def every(self, condition: Callable[[FleetProgress], bool], fleets: slice = slice(None)) -> bool:
        """Whether every fleet (of `fleets`) has reported, and its latest report meets `condition`."""
        return all(p is not None and condition(p) for p in self.progress[fleets])

    async def wait(self, condition: Callable[[], bool], timeout: float) -> None:
        await wait_until(condition, timeout, watch=self.tasks)

    async def online(self, timeout: float) -> None:
        """Until every device is connected, subscribed to its trigger, and has reported its status."""
        await self.wait(lambda: self.every(lambda p: p.online == p.devices), timeout)

    async def finish(self) -> list[FleetSummary]:
        self.stop.set()
        return list(await asyncio.gather(*self.tasks))
