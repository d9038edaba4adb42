"""`otaship serve` with two worker processes on one database, against Mosquitto.

Both workers run every background loop: the outbox publisher, the rollout
clock and report ingestion (over one shared subscription). A canary rollout
must still be promoted once, and each group triggered once: a real paho
subscriber counts every trigger the broker delivers.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from otaship.protocol import trigger_topic
from otaship.receiver.serve.workers import claim_slot, release_slot, worker_client_id, worker_count
from otaship.receiver.settings import Settings, SettingsError
from tests.action_fixtures import OWNER, Tenant
from tests.receiver.mqtt.test_fleet import run_fleets
from tests.receiver_process import ReceiverProcess, migrated_env, otaship_json
from tests.services import MOSQUITTO, require


class TriggerCounter:
    """Counts the triggers the broker delivers for each of one owner's groups."""

    def __init__(self, mqtt_user: str) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"trigger-counter-{secrets.token_hex(4)}"
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(*MOSQUITTO)
        self.client.loop_start()
        self.client.subscribe(trigger_topic(mqtt_user, "+"), qos=1)
        assert self._subscribed.wait(10), "could not subscribe to the triggers"

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        group_id = message.topic.split("/")[3]
        with self._lock:
            self.counts[group_id] += 1

    def of(self, group: dict[str, Any]) -> int:
        with self._lock:
            return self.counts[group["id"]]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# Both databases on the default server; uvicorn's workers on one SQLite file too.
@pytest.fixture(params=[("granian", "sqlite"), ("granian", "postgres"), ("uvicorn", "sqlite")], ids="-".join)
def setup(request: pytest.FixtureRequest) -> dict[str, str]:
    server, database = request.param
    if database == "sqlite":
        return {"OTASHIP_SERVER": server}  # one file in the data directory, shared by both workers
    return {"OTASHIP_SERVER": server, "OTASHIP_DATABASE_URL": request.getfixturevalue("postgres_url")}


@pytest.fixture
def two_workers(tmp_path: Path, setup: dict[str, str]) -> Iterator[Tenant]:
    require("Mosquitto", MOSQUITTO)
    env = migrated_env(
        tmp_path / "data",
        OTASHIP_MQTT_URL="mqtt://127.0.0.1:1883",
        # Unique on the shared broker; the second worker adds -w1 to it.
        OTASHIP_MQTT_CLIENT_ID=f"otaship-workers-{secrets.token_hex(4)}",
        OTASHIP_WORKERS="2",
        # A share group of its own: the broker would hand some of our reports
        # to any other receiver in the default group on it.
        OTASHIP_MQTT_SHARE_GROUP=f"otaship-test-{secrets.token_hex(4)}",
        **setup,
    )
    user = otaship_json(env, "user", "create", OWNER, "--plan", "pro")
    receiver = ReceiverProcess(env).start()
    try:
        yield Tenant(
            env, receiver, user["api_key"], user["mqtt_user"], user["mqtt_password"], "127.0.0.1:1883"
        )
    finally:
        receiver.stop()


def _log(receiver: ReceiverProcess) -> str:
    assert receiver.log is not None
    receiver.log.seek(0)
    return receiver.log.read().decode(errors="replace")


def test_two_workers_promote_a_canary_once_and_trigger_each_group_once(two_workers: Tenant) -> None:
    t = two_workers
    base = t.env["OTASHIP_MQTT_CLIENT_ID"]
    # Both workers are up, each on the broker with its own client id.
    expected = [
        *(f"MQTT client id {worker_client_id(base, slot)}\n" for slot in (0, 1)),
    ]
    # Each server says it started two workers, in its own words.
    started = "Started worker-" if t.env["OTASHIP_SERVER"] == "granian" else "Application startup complete."
    deadline = time.monotonic() + 30
    while not (
        all(line in (log := _log(t.receiver)) for line in expected)
        and log.count("connected to MQTT broker") == 2
        and log.count(started) == 2
    ):
        assert time.monotonic() < deadline, log
        time.sleep(0.2)

    fleet = t.group("fleet")
    canary = t.group("canary", parent=fleet)
    rest = t.group("rest", parent=fleet)
    canary_ids = t.devices(canary, 2, "1.0.0", "canary")
    rest_ids = t.devices(rest, 3, "1.0.0", "rest")
    counter = TriggerCounter(t.mqtt_user)
    try:
        fleets = [t.sim(canary, canary_ids, "1.0.0"), t.sim(rest, rest_ids, "1.0.0")]
        rollout_id, _ = asyncio.run(
            run_fleets(t, fleets, lambda: t.deploy(fleet, "1.1.0", canary=canary["id"])["rollout"]["id"])
        )
        state = t.rollout(rollout_id)
        assert state["state"] == "complete", state
        # One promotion: the canary stage passed once, the fleet stage ran once.
        assert [s["state"] for s in state["stages"]] == ["passed", "complete"], state
        assert {t.versions()[i] for i in canary_ids + rest_ids} == {"1.1.0"}
        # The canary's trigger at the start, the fleet's and its subgroup's at the
        # promotion: each once, though two publishers and two clocks ran.
        assert (counter.of(canary), counter.of(fleet), counter.of(rest)) == (1, 1, 1), counter.counts
        assert [o["version"] for o in t.otas(fleet["id"])] == ["1.1.0"]
    finally:
        counter.stop()


def _settings(**env: str) -> Settings:
    return Settings.from_env(env)


def test_worker_count_defaults_and_limits() -> None:
    assert worker_count(_settings(), cpus=4) == 1  # the embedded broker
    assert worker_count(_settings(OTASHIP_MQTT_URL="none"), cpus=4) == 1
    assert worker_count(_settings(OTASHIP_MQTT_URL="mqtt://broker:1883"), cpus=4) == 4
    assert worker_count(_settings(OTASHIP_MQTT_URL="mqtt://broker:1883", OTASHIP_WORKERS="3"), cpus=4) == 3
    assert worker_count(_settings(OTASHIP_MQTT_URL="none", OTASHIP_WORKERS="2"), cpus=4) == 2
    assert worker_count(_settings(OTASHIP_WORKERS="1"), cpus=4) == 1
    with pytest.raises(SettingsError, match="OTASHIP_WORKERS must be 1 with the embedded MQTT broker"):
        worker_count(_settings(OTASHIP_WORKERS="2"), cpus=4)
    with pytest.raises(SettingsError, match="OTASHIP_WORKERS must be at least 1, not 0"):
        _settings(OTASHIP_WORKERS="0")
    with pytest.raises(SettingsError, match="OTASHIP_MQTT_SHARE_GROUP must be one MQTT topic level"):
        _settings(OTASHIP_MQTT_SHARE_GROUP="a/b")
    assert _settings(OTASHIP_MQTT_SHARE_GROUP="staging").resolved_mqtt_share_group == "staging"
    with pytest.raises(SettingsError, match="OTASHIP_SERVER must be granian or uvicorn, not 'gunicorn'"):
        _settings(OTASHIP_SERVER="gunicorn")
    assert (_settings().server, _settings(OTASHIP_SERVER=" Uvicorn ").server) == ("granian", "uvicorn")


def test_the_first_worker_keeps_the_replicas_client_id() -> None:
    assert [worker_client_id("otaship-0", slot) for slot in range(3)] == [
        "otaship-0",
        "otaship-0-w1",
        "otaship-0-w2",
    ]


def test_each_process_claims_the_lowest_free_slot(tmp_path: Path) -> None:
    # A slot is a lock held by a process: children claim, hold, and release by exiting.
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ready, release = context.Queue(), context.Event()
    holders = [context.Process(target=_hold_slot, args=(tmp_path, ready, release)) for _ in range(2)]
    for holder in holders:
        holder.start()
    try:
        claimed = sorted(ready.get(timeout=30) for _ in holders)
        assert claimed == [0, 1]
        try:
            assert claim_slot(tmp_path) == 2  # this process: the next one
        finally:
            release_slot()
    finally:
        release.set()
        for holder in holders:
            holder.join(30)
    # The holders are gone; a new process takes the lowest slot again.
    again = context.Process(target=_hold_slot, args=(tmp_path, ready, release))
    again.start()
    assert ready.get(timeout=30) == 0
    again.join(30)


def _hold_slot(run_dir: Path, ready: Any, release: Any) -> None:
    ready.put(claim_slot(run_dir))
    release.wait(30)
