"""The receiver's MQTT connection on Mosquitto: replicas of one receiver split the
reports, and two receivers on one broker each get all of their own."""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from otaship.protocol import parse_mqtt_url, status_topic
from otaship.receiver.mqtt.link import MqttLink
from otaship.receiver.settings import Settings
from tests.services import MOSQUITTO, forget_mqtt_session, require
from tests.waiting import eventually

ADDRESS = parse_mqtt_url(f"mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}")
TIMEOUT = 10.0


class Received:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.payloads: list[bytes] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.payloads.append(payload)

    def got(self, payload: bytes) -> bool:
        with self.lock:
            return payload in self.payloads


class Links:
    """Receiver links started by a test, each with what it received; all stopped after."""

    def __init__(self) -> None:
        self.started: list[tuple[MqttLink, str]] = []

    def start(self, share_group: str) -> Received:
        assert ADDRESS is not None
        received = Received()
        client_id = f"otaship-test-{secrets.token_hex(6)}"
        link = MqttLink(ADDRESS, client_id=client_id, on_message=received, share_group=share_group)
        self.started.append((link, client_id))
        link.start()
        assert link.wait_connected(TIMEOUT), "the link did not connect"
        return received

    def stop(self) -> None:
        assert ADDRESS is not None
        for link, client_id in self.started:
            link.stop()
            forget_mqtt_session(ADDRESS, client_id)


@pytest.fixture
def links() -> Iterator[Links]:
    require("Mosquitto", MOSQUITTO)
    started = Links()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def device() -> Iterator[mqtt.Client]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"device-{secrets.token_hex(6)}")
    client.connect(*MOSQUITTO)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def _report(device: mqtt.Client, topic: str, n: int) -> bytes:
    payload = b'{"fw_version": "1.0.0", "uptime": %d}' % n
    device.publish(topic, payload, qos=1).wait_for_publish(TIMEOUT)
    return payload


def test_two_receivers_on_one_broker_each_get_every_report(links: Links, device: mqtt.Client) -> None:
    topic = status_topic(f"user{secrets.token_hex(4)}", "device-1")
    staging, production = links.start("otaship-staging"), links.start("otaship-production")
    # A link subscribes once connected; report until both have one, so that
    # nothing below is published before a subscription stands.
    counter = itertools.count()
    eventually(
        lambda: (
            bool(_report(device, topic, next(counter)))
            and bool(staging.payloads)
            and bool(production.payloads)
        ),
        "both receivers to be subscribed",
        TIMEOUT,
        interval=0.1,
    )
    sent = [_report(device, topic, 1000 + n) for n in range(20)]
    eventually(
        lambda: all(staging.got(p) and production.got(p) for p in sent), "every report at both", TIMEOUT
    )


def test_replicas_of_one_receiver_split_the_reports(links: Links, device: mqtt.Client) -> None:
    topic = status_topic(f"user{secrets.token_hex(4)}", "device-1")
    group = f"otaship-{secrets.token_hex(6)}"
    first, second = links.start(group), links.start(group)
    counter = itertools.count()
    eventually(
        lambda: (
            bool(_report(device, topic, next(counter))) and bool(first.payloads) and bool(second.payloads)
        ),
        "both replicas to be given reports",
        TIMEOUT,
        interval=0.1,
    )
    sent = [_report(device, topic, 1000 + n) for n in range(20)]
    eventually(
        lambda: all(first.got(p) or second.got(p) for p in sent), "every report at one replica", TIMEOUT
    )
    # The last report arrived, so every earlier one has: none went to both.
    assert not [p for p in sent if first.got(p) and second.got(p)]


def test_the_share_group_comes_from_the_database_without_its_password() -> None:
    pg = "postgresql+psycopg://otaship:{}@db.internal:5432/otaship"
    first = Settings(database_url=pg.format("old-secret")).resolved_mqtt_share_group
    assert first == Settings(database_url=pg.format("rotated")).resolved_mqtt_share_group
    assert first.startswith("otaship-") and len(first) == len("otaship-") + 12
    assert "secret" not in first
    other = Settings(database_url="postgresql+psycopg://otaship:x@db.internal:5432/staging")
    assert other.resolved_mqtt_share_group != first
    assert Settings(mqtt_share_group="fleet-a").resolved_mqtt_share_group == "fleet-a"


@pytest.mark.parametrize("bad", ["a/b", "a+", "#", "x" * 129, "tab\there"])
def test_a_share_group_that_is_not_one_topic_level_is_refused(bad: str) -> None:
    with pytest.raises(Exception, match="OTASHIP_MQTT_SHARE_GROUP must be one MQTT topic level"):
        Settings.from_env({"OTASHIP_MQTT_SHARE_GROUP": bad})
