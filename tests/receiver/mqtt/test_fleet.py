"""End to end: a real receiver, a real broker, simulated IoTaaP OS devices.

The receiver runs as `otaship serve` in a subprocess, with the embedded broker
or the machine's Mosquitto; devices are `otaship simulate` fleets in this
process. Nothing here is mocked.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from otaship.protocol import trigger_topic
from otaship.simulator.config import SimulationConfig
from otaship.simulator.fleet import FleetSummary
from tests.action_fixtures import Tenant, make_tenant
from tests.device_fleet import Fleets, MqttObserver
from tests.services import free_port, port_open, require

TERMINAL = ("complete", "halted", "aborted")
T = TypeVar("T")


async def with_fleets(
    tenant: Tenant, configs: list[SimulationConfig], body: Callable[[], Awaitable[T]], *, timeout: float = 60
) -> tuple[T, list[FleetSummary]]:
    """Bring the devices online, await `body()`, let what it set off settle, and stop the devices.

    Before `body()`, every device has reported an uptime of a second or more:
    the receiver tells that a device rebooted by its uptime going down, which
    from 0 it cannot. Settled means: a trigger the receiver publishes afterwards
    (a deploy to a group of its own, watched by one more simulated device) has
    reached that device, and no device is in the middle of an update. Whatever
    the receiver published before, by mistake or not, went out before that
    trigger, so the devices it was for have had it too.
    """
    sentinel = await asyncio.to_thread(tenant.group, "sentinel")
    host, port = tenant.broker.rsplit(":", 1)
    observer = MqttObserver(tenant.mqtt_user, password=tenant.mqtt_password, host=host, port=int(port))
    await asyncio.to_thread(observer.start)
    ids = [d for config in configs for d in config.resolved_device_ids()]

    def up_a_second() -> bool:
        return all((statuses := observer.statuses(d)) and statuses[-1]["uptime"] >= 1 for d in ids)

    # Its id is its MQTT client id: on a shared broker, one id for every test's
    # sentinel would have them throw each other off, and miss their trigger.
    fleets = Fleets([*configs, tenant.sim(sentinel, [f"sentinel-{tenant.mqtt_user}"], "0.0.0")])
    try:
        await fleets.online(timeout)
        await fleets.wait(up_a_second, timeout)
        result = await body()
        await asyncio.to_thread(tenant.deploy, sentinel, "0.0.1")
        await fleets.wait(
            lambda: (
                fleets.every(lambda p: p.triggered == 1, slice(-1, None))
                and fleets.every(lambda p: p.updating == 0, slice(None, -1))
            ),
            timeout,
        )
    finally:
        summaries = await fleets.finish()
        observer.stop()
    return result, summaries[:-1]


async def run_fleets(
    tenant: Tenant, configs: list[SimulationConfig], act: Any, *, timeout: float = 60
) -> tuple[Any, list[FleetSummary]]:
    """Bring the devices online, run `act()` (in a thread), and stop the devices
    once the rollout it returns has ended (or, for a plain deploy, once `act`'s
    result says so through `done()`) and everything has settled (`with_fleets`)."""

    async def until_done() -> Any:
        result = await asyncio.to_thread(act)
        rollout_id, done = result if isinstance(result, tuple) else (result, None)
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(headers=tenant.headers, timeout=10) as http:
            while True:
                if time.monotonic() > deadline:
                    raise AssertionError("the fleet did not settle in time")
                await asyncio.sleep(0.3)
                if rollout_id is not None:
                    state = (await http.get(f"{tenant.receiver.url}/v1/rollouts/{rollout_id}")).json()[
                        "state"
                    ]
                    if state in TERMINAL:
                        break
                elif done is not None and await asyncio.to_thread(done):
                    break
        return rollout_id

    return await with_fleets(tenant, configs, until_done, timeout=timeout)


def test_a_healthy_canary_reaches_the_whole_fleet(embedded: Tenant) -> None:
    t = embedded
    fleet = t.group("fleet")
    canary = t.group("canary", parent=fleet)
    rest = t.group("rest", parent=fleet)
    canary_ids = t.devices(canary, 2, "1.0.0", "canary")
    rest_ids = t.devices(rest, 3, "1.0.0", "rest")
    current_ids = t.devices(rest, 1, "1.1.0", "current")

    fleets = [
        t.sim(canary, canary_ids, "1.0.0"),
        t.sim(rest, rest_ids, "1.0.0"),
        t.sim(rest, current_ids, "1.1.0"),
    ]
    rollout_id, _ = asyncio.run(
        run_fleets(t, fleets, lambda: t.deploy(fleet, "1.1.0", canary=canary["id"])["rollout"]["id"])
    )
    state = t.rollout(rollout_id)
    assert state["state"] == "complete", state
    assert [s["state"] for s in state["stages"]] == ["passed", "complete"]
    versions = t.versions()
    assert {versions[i] for i in canary_ids + rest_ids + current_ids} == {"1.1.0"}
    outcomes = {(d["stage"], d["id"]): d["outcome"] for d in state["devices"]}
    assert all(o == "succeeded" for o in outcomes.values())


def test_a_failing_canary_halts_and_the_fleet_is_never_triggered(embedded: Tenant) -> None:
    t = embedded
    fleet = t.group("fleet")
    canary = t.group("canary", parent=fleet)
    rest = t.group("rest", parent=fleet)
    canary_ids = t.devices(canary, 2, "1.0.0", "canary")
    rest_ids = t.devices(rest, 2, "1.0.0", "rest")

    fleets = [t.sim(canary, canary_ids, "1.0.0", fail_rate=1.0), t.sim(rest, rest_ids, "1.0.0")]
    rollout_id, (canary_summary, rest_summary) = asyncio.run(
        run_fleets(
            t,
            fleets,
            lambda: t.deploy(fleet, "1.1.0", canary=canary["id"], canary_timeout="60")["rollout"]["id"],
        )
    )
    state = t.rollout(rollout_id)
    assert state["state"] == "halted"
    assert "canary device(s) failed" in state["reason"]
    assert all(d.rollbacks >= 1 for d in canary_summary.devices)
    assert [d.triggers for d in rest_summary.devices] == [0, 0]
    assert t.latest(fleet) is None and t.latest(rest) is None
    versions = t.versions()
    assert {versions[i] for i in rest_ids} == {"1.0.0"}


def test_a_deploy_to_the_parent_reaches_subgroup_devices_on_another_version(mosquitto: Tenant) -> None:
    t = mosquitto
    fleet = t.group("fleet")
    sub = t.group("kitchen", parent=fleet)
    old_ids = t.devices(sub, 2, "2.0.0", "old")
    current_ids = t.devices(sub, 1, "2.1.0", "current")

    fleets = [t.sim(sub, old_ids, "2.0.0"), t.sim(sub, current_ids, "2.1.0")]

    def deploy() -> tuple[None, Any]:
        t.deploy(fleet, "2.1.0")
        return None, lambda: all(t.versions()[i] == "2.1.0" for i in old_ids)

    _, (old, current) = asyncio.run(run_fleets(t, fleets, deploy))
    assert [d.version for d in old.devices] == ["2.1.0", "2.1.0"]
    assert [d.updates for d in old.devices] == [1, 1]
    # Triggered too, but it answers 202 and downloads nothing.
    assert [(d.updates, d.last_code) for d in current.devices] == [(0, 202)]
    versions = t.versions()
    assert {versions[i] for i in old_ids + current_ids} == {"2.1.0"}


def test_reports_from_another_owner_are_ignored(mosquitto: Tenant) -> None:
    t = mosquitto
    group = t.group("fleet")
    (device_id,) = t.devices(group, 1, "1.0.0", "mine")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="intruder")
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    try:
        for topic, payload in (
            (f"/someone-else/devices/{device_id}/status", '{"fw_version": "6.6.6"}'),
            (f"/{t.mqtt_user}/devices/{device_id}/status", "not json"),
            (f"/{t.mqtt_user}/devices/{device_id}/status", '{"fw_version": ["x"]}'),
            (f"/{t.mqtt_user}/devices/{device_id}/status", '{"fw_version": "1.0.1", "uptime": 5}'),
        ):
            client.publish(topic, payload, qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and t.versions()[device_id] != "1.0.1":
            time.sleep(0.2)
    finally:
        client.loop_stop()
        client.disconnect()
    assert t.versions()[device_id] == "1.0.1"
    # The receiver is still up and answering.
    assert httpx.get(f"{t.receiver.url}/v1/ota/group", headers=t.headers).status_code == 200


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[tuple[int, Any]]:
    """A Mosquitto of our own, so the test can stop and restart it."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        require("Mosquitto", ("127.0.0.1", 1))  # fails in CI, skips elsewhere
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        processes.append(
            subprocess.Popen(
                [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)

    def stop() -> None:
        for process in processes:
            process.terminate()
            process.wait(10)
        processes.clear()

    start()
    yield port, (start, stop)
    stop()


def test_a_trigger_published_while_the_broker_is_down_arrives_after_it_returns(
    tmp_path: Path, own_mosquitto: tuple[int, Any]
) -> None:
    port, (start, stop) = own_mosquitto
    t = make_tenant(tmp_path / "data", f"mqtt://127.0.0.1:{port}", f"127.0.0.1:{port}")
    try:
        group, later = t.group("fleet"), t.group("later")
        stop()
        t.deploy(group, "3.0.0")  # the broker is down: the trigger waits in the outbox
        received: list[bytes] = []
        received_later: list[bytes] = []
        start()
        topic, later_topic = trigger_topic(t.mqtt_user, group["id"]), trigger_topic(t.mqtt_user, later["id"])
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
        client.on_message = lambda c, u, m: (received if m.topic == topic else received_later).append(
            bytes(m.payload)
        )
        client.connect("127.0.0.1", port)
        client.subscribe([(topic, 1), (later_topic, 1)])
        client.loop_start()
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
        # A second trigger from the receiver, after the first: a repeat of the
        # first would have arrived before it.
        t.deploy(later, "3.0.1")
        while not received_later and time.monotonic() < deadline:
            time.sleep(0.1)
        client.loop_stop()
        client.disconnect()
        assert received_later == [b'{"version": "3.0.1"}']
        assert received == [b'{"version": "3.0.0"}']
    finally:
        t.receiver.stop()


def test_a_rollout_survives_a_receiver_restart(mosquitto: Tenant) -> None:
    t = mosquitto
    fleet = t.group("fleet")
    canary = t.group("canary", parent=fleet)
    canary_ids = t.devices(canary, 2, "1.0.0", "canary")
    rest_ids = t.devices(fleet, 2, "1.0.0", "rest")
    body = t.deploy(fleet, "1.1.0", canary=canary["id"])
    rollout_id: str = body["rollout"]["id"]
    t.receiver.stop()  # killed in the canary stage
    t.receiver.start()
    assert t.rollout(rollout_id)["state"] == "canary"

    fleets = [t.sim(canary, canary_ids, "1.0.0"), t.sim(fleet, rest_ids, "1.0.0")]

    def retrigger() -> str:
        # The canary devices were offline when their trigger went out; an
        # operator re-sends it, and they check in as IoTaaP OS devices do.
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="operator")
        client.connect("127.0.0.1", 1883)
        client.loop_start()
        client.publish(trigger_topic(t.mqtt_user, canary["id"]), "{}", qos=1).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        return rollout_id

    asyncio.run(run_fleets(t, fleets, retrigger))
    state = t.rollout(rollout_id)
    assert state["state"] == "complete", state
    versions = t.versions()
    assert {versions[i] for i in canary_ids + rest_ids} == {"1.1.0"}
