"""The trigger outbox publisher (receiver/mqtt/triggers.py) on its own: outbox rows in,
QoS 1 publishes out, through the receiver's MqttLink to a real broker (the embedded
one, and Mosquitto), on both databases."""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from otaship.protocol import BrokerAddress, parse_trigger_topic, trigger_topic
from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.models import TriggerMessage
from otaship.receiver.ids import utcnow
from otaship.receiver.metrics import Metrics
from otaship.receiver.mqtt import triggers
from otaship.receiver.mqtt.link import MqttLink
from otaship.receiver.mqtt.triggers import TriggerPublisher
from otaship.receiver.services import Services
from tests.receiver.mqtt.test_broker import USERS, BrokerThread
from tests.services import MOSQUITTO, forget_mqtt_session, require

TIMEOUT = 10.0


@dataclass
class Broker:
    address: BrokerAddress
    # The receiver's login, and an owner's, whose namespace the triggers go to.
    link_login: tuple[str | None, str | None]
    owner: str
    owner_password: str | None


@pytest.fixture(params=["embedded", "mosquitto"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "mosquitto":
        require("Mosquitto", MOSQUITTO)
        # A namespace of our own on the shared broker.
        yield Broker(
            BrokerAddress("mqtt", *MOSQUITTO), (None, None), f"triggers-{secrets.token_hex(4)}", None
        )
        return
    running = BrokerThread()
    running.run(running.broker.start())
    try:
        yield Broker(
            BrokerAddress("embedded", "127.0.0.1", running.port),
            (running.broker.internal_username, running.broker.internal_password),
            "alice",
            USERS["alice"],
        )
    finally:
        running.close()


@pytest.fixture
def link(broker: Broker) -> Iterator[MqttLink]:
    client_id = f"otaship-test-{secrets.token_hex(6)}"
    username, password = broker.link_login
    running = MqttLink(
        broker.address,
        client_id=client_id,
        on_message=lambda _t, _p: None,
        username=username,
        password=password,
    )
    running.start()
    try:
        assert running.wait_connected(TIMEOUT), "the link did not connect"
        yield running
    finally:
        running.stop()
        if running.persistent:
            forget_mqtt_session(broker.address, client_id)


class Watcher:
    """An owner's client subscribed to every trigger of its namespace: (topic, payload, qos) in order."""

    def __init__(self, broker: Broker) -> None:
        self.messages: queue.Queue[tuple[str, bytes, int]] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"watcher-{secrets.token_hex(6)}", protocol=mqtt.MQTTv311
        )
        self.client.username_pw_set(broker.owner, broker.owner_password)
        self.client.on_connect = lambda c, *_: c.subscribe(trigger_topic(broker.owner, "+"), qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload), m.qos))
        self.client.connect(broker.address.host, broker.address.port)
        self.client.loop_start()
        assert self._subscribed.wait(TIMEOUT), "the watcher could not subscribe"

    def next(self) -> tuple[str, bytes, int]:
        return self.messages.get(timeout=TIMEOUT)

    def received_nothing_else(self) -> bool:
        return self.messages.empty()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def watcher(broker: Broker) -> Iterator[Watcher]:
    running = Watcher(broker)
    yield running
    running.stop()


def outbox(engine: Engine, *added: TriggerMessage) -> list[int]:
    with write_session(engine) as session:
        session.add_all(added)
        session.flush()
        ids = [row.id for row in added if row.id is not None]
    assert len(ids) == len(added)
    return ids


def trigger(
    broker: Broker, group: str, version: str, *, claimed_until: datetime | None = None, attempts: int = 0
) -> TriggerMessage:
    return TriggerMessage(
        topic=trigger_topic(broker.owner, group),
        payload=f'{{"version": "{version}"}}',
        claimed_until=claimed_until,
        attempts=attempts,
    )


def rows(engine: Engine) -> dict[int, TriggerMessage]:
    with read_session(engine) as session:
        stored = session.exec(select(TriggerMessage).order_by(col(TriggerMessage.id)))
        return {row.id: row for row in stored if row.id is not None}


def published_count(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("otaship_triggers_published_total")


def test_rows_go_out_in_order_once_each_and_are_marked(
    services: Services, broker: Broker, link: MqttLink, watcher: Watcher
) -> None:
    ids = outbox(
        services.engine,
        trigger(broker, "g1", "1.0.0"),
        trigger(broker, "g2", "1.0.0"),
        trigger(broker, "g1", "1.1.0"),
    )
    metrics = Metrics()
    publisher = TriggerPublisher(services.engine, link, metrics=metrics)

    assert publisher.publish_pending() is False  # not a full batch: nothing more waits
    received = [watcher.next() for _ in ids]
    assert received == [
        (f"/{broker.owner}/groups/g1/update-trigger", b'{"version": "1.0.0"}', 1),
        (f"/{broker.owner}/groups/g2/update-trigger", b'{"version": "1.0.0"}', 1),
        (f"/{broker.owner}/groups/g1/update-trigger", b'{"version": "1.1.0"}', 1),
    ]
    assert [parse_trigger_topic(t) is not None for t, _, _ in received] == [True] * 3
    stored = rows(services.engine)
    assert [stored[i].published_at is not None for i in ids] == [True] * 3
    assert [(stored[i].claimed_until, stored[i].attempts) for i in ids] == [(None, 1)] * 3
    assert publisher.published == 3 and published_count(metrics) == 3

    # Published rows stay published: the next round sends only the new row.
    (later,) = outbox(services.engine, trigger(broker, "g3", "2.0.0"))
    assert publisher.publish_pending() is False
    assert watcher.next() == (f"/{broker.owner}/groups/g3/update-trigger", b'{"version": "2.0.0"}', 1)
    assert watcher.received_nothing_else()
    assert rows(services.engine)[later].attempts == 1
    assert publisher.published == 4 and published_count(metrics) == 4


def test_a_row_another_replica_holds_is_left_to_it(
    services: Services, broker: Broker, link: MqttLink, watcher: Watcher
) -> None:
    now = utcnow()
    held, expired, fresh = outbox(
        services.engine,
        trigger(broker, "held", "1", claimed_until=now + timedelta(hours=1), attempts=1),
        trigger(broker, "expired", "1", claimed_until=now - timedelta(seconds=1), attempts=1),
        trigger(broker, "fresh", "1"),
    )
    publisher = TriggerPublisher(services.engine, link)
    assert publisher.publish_pending() is False
    # In id order: the held row, first of the three, would have come first.
    assert [watcher.next()[0] for _ in range(2)] == [
        f"/{broker.owner}/groups/expired/update-trigger",
        f"/{broker.owner}/groups/fresh/update-trigger",
    ]
    stored = rows(services.engine)
    assert (stored[held].published_at, stored[held].attempts) == (None, 1)
    assert stored[held].claimed_until is not None
    assert [(stored[i].published_at is not None, stored[i].attempts) for i in (expired, fresh)] == [
        (True, 2),
        (True, 1),
    ]
    assert publisher.published == 2


def test_a_full_batch_says_more_may_wait(
    services: Services, broker: Broker, link: MqttLink, watcher: Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(triggers, "BATCH", 2)
    outbox(services.engine, *(trigger(broker, f"g{n}", "1") for n in range(3)))
    publisher = TriggerPublisher(services.engine, link)
    assert publisher.publish_pending() is True
    assert publisher.published == 2
    assert publisher.publish_pending() is False
    assert publisher.published == 3
    assert [watcher.next()[0].split("/")[3] for _ in range(3)] == ["g0", "g1", "g2"]


def test_without_the_broker_rows_wait_untouched(services: Services, broker: Broker) -> None:
    (row,) = outbox(services.engine, trigger(broker, "g1", "1"))
    username, password = broker.link_login
    never_started = MqttLink(
        broker.address,
        client_id="never",
        on_message=lambda _t, _p: None,
        username=username,
        password=password,
    )
    publisher = TriggerPublisher(services.engine, never_started)
    assert publisher.publish_pending() is False
    stored = rows(services.engine)[row]
    assert (stored.published_at, stored.claimed_until, stored.attempts) == (None, None, 0)
    assert publisher.published == 0


def test_a_deploy_wakes_the_idle_loop(
    services: Services, broker: Broker, link: MqttLink, watcher: Watcher
) -> None:
    # Idle for an hour: only wake() can explain a publish within the test's timeout.
    publisher = TriggerPublisher(services.engine, link, idle_interval=3600)

    async def scenario() -> list[tuple[str, bytes, int]]:
        outbox(services.engine, trigger(broker, "first", "1"))
        running = asyncio.create_task(publisher.run())
        try:
            # The first round publishes what was waiting, then the loop sleeps.
            first = await asyncio.to_thread(watcher.next)
            outbox(services.engine, trigger(broker, "second", "1"))
            publisher.wake()
            second = await asyncio.to_thread(watcher.next)
            # Marked once acknowledged: wait for the row, not for a time.
            deadline = time.monotonic() + TIMEOUT
            while any(row.published_at is None for row in rows(services.engine).values()):
                assert time.monotonic() < deadline, "the second trigger was never marked published"
                await asyncio.sleep(0.02)
        finally:
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
        return [first, second]

    started = time.monotonic()
    received = asyncio.run(scenario())
    assert [topic.split("/")[3] for topic, _, _ in received] == ["first", "second"]
    assert time.monotonic() - started < TIMEOUT
    assert publisher.published == 2


def test_triggers_that_waited_for_the_broker_are_logged_once_it_is_back(
    services: Services, broker: Broker, watcher: Watcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="otaship.triggers")
    outbox(services.engine, trigger(broker, "g2", "1"), trigger(broker, "g1", "1"))
    username, password = broker.link_login
    client_id = f"otaship-test-{secrets.token_hex(6)}"
    link = MqttLink(
        broker.address,
        client_id=client_id,
        on_message=lambda _t, _p: None,
        username=username,
        password=password,
    )
    publisher = TriggerPublisher(services.engine, link)
    # The broker cannot be reached yet: the triggers wait.
    assert publisher.publish_pending() is False
    link.start()
    try:
        assert link.wait_connected(TIMEOUT), "the link did not connect"
        publisher.publish_pending()
        assert {watcher.next()[0].split("/")[3] for _ in range(2)} == {"g1", "g2"}
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert len(infos) == 1
        assert re.fullmatch(
            r"published 2 trigger\(s\) that waited for the MQTT broker \(\d+ s without it\): groups g1 g2",
            infos[0],
        )
        # With the broker there all along, a publish is no news at info.
        caplog.clear()
        outbox(services.engine, trigger(broker, "g3", "1"))
        publisher.publish_pending()
        assert watcher.next()[0].split("/")[3] == "g3"
        assert [r.getMessage() for r in caplog.records] == ["published 1 trigger(s)"]
        assert caplog.records[0].levelno == logging.DEBUG
    finally:
        link.stop()
        if link.persistent:
            forget_mqtt_session(broker.address, client_id)


def test_the_line_of_held_triggers_names_ten_groups_at_most() -> None:
    groups = [f"g{i:02d}" for i in range(12)] + ["g00"]
    assert triggers.held_triggers_line(13, 61.4, groups) == (
        "published 13 trigger(s) that waited for the MQTT broker (61 s without it): "
        "groups g00 g01 g02 g03 g04 g05 g06 g07 g08 g09 and 2 more"
    )
