"""The embedded broker, driven by real paho-mqtt clients over TCP.

The broker runs in a thread with its own event loop, as it would inside uvicorn,
while paho's own network threads play the devices and the receiver.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from otaship.receiver.log_summary import Throttle
from otaship.receiver.mqtt.broker import (
    BAD_CREDENTIALS,
    REFUSALS_LOGGED_PER_MINUTE,
    BrokerPortInUse,
    EmbeddedBroker,
    owner_may_use,
    refusal_line,
)
from tests.services import MOSQUITTO, require

HOST = "127.0.0.1"
TIMEOUT = 5.0
USERS = {"alice": "alice-secret", "bob": "bob-secret"}


class BrokerThread:
    """Runs an EmbeddedBroker on an event loop in a background thread."""

    def __init__(self, port: int = 0, **options: Any) -> None:
        self.auth_threads: list[threading.Thread] = []
        # The credential store (the database) failing for everyone, as in an outage.
        self.store_down = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.broker = EmbeddedBroker(HOST, port, authenticate=self._authenticate, **options)

    def _authenticate(self, username: str, password: str) -> bool:
        self.auth_threads.append(threading.current_thread())
        if username == "broken-db" or self.store_down:
            raise RuntimeError(f"connection lost while running a query with {password!r}")
        return USERS.get(username) == password

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT * 2)

    @property
    def port(self) -> int:
        return self.broker.port

    def close(self) -> None:
        """Stop the broker and the loop, and check that stop() left no task behind."""
        try:
            self.run(self.broker.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            leftovers = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
            if leftovers:
                for task in leftovers:
                    task.cancel()
                self.loop.run_until_complete(asyncio.wait(leftovers))
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()
        assert leftovers == []


@pytest.fixture
def running() -> Iterator[BrokerThread]:
    runner = BrokerThread(connect_timeout=0.5)
    runner.run(runner.broker.start())
    yield runner
    runner.close()


class Client:
    """A paho client (MQTT 3.1.1) whose callbacks land in queues."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        will_topic: str | None = None,
    ) -> None:
        self.port = port
        self.connacks: queue.Queue[ReasonCode] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.disconnected = threading.Event()
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
        )
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will_topic is not None:
            self.paho.will_set(will_topic, b"gone", qos=1)
        self.paho.on_connect = self._on_connect
        self.paho.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.put(rcs)
        self.paho.on_message = lambda _c, _u, message: self.messages.put(message)
        self.paho.on_disconnect = lambda *_args: self.disconnected.set()

    def _on_connect(
        self, paho: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            # Otherwise paho's network thread keeps retrying the refused login.
            paho.disconnect()
        self.connacks.put(reason)

    def connect(self) -> ReasonCode:
        self.paho.connect(HOST, self.port, keepalive=30)
        self.paho.loop_start()
        reason = self.connacks.get(timeout=TIMEOUT)
        if reason.is_failure:
            self.paho.loop_stop()
        return reason

    def subscribe(self, *topics: str) -> list[int]:
        self.paho.subscribe([(topic, 1) for topic in topics])
        return [reason.value for reason in self.subacks.get(timeout=TIMEOUT)]

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.paho.publish(topic, payload, qos=qos).wait_for_publish(TIMEOUT)

    def next_message(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT)

    def assert_no_message(self) -> None:
        """Nothing else arrived: call it once a marker published after the unwanted
        message has arrived, since the broker delivers in order."""
        with pytest.raises(queue.Empty):
            message = self.messages.get_nowait()
            pytest.fail(f"unexpected message on {message.topic}")

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def clients(running: BrokerThread) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def connect(username: str | None, password: str | None = None, **kwargs: Any) -> Client:
        client = Client(running.port, username, password, **kwargs)
        reason = client.connect()
        assert not reason.is_failure, reason
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def owner(name: str) -> dict[str, str]:
    return {"username": name, "password": USERS[name]}


@pytest.mark.parametrize(
    ("username", "topic", "allowed"),
    [
        ("alice", "/alice/devices/d1/status", True),
        ("alice", "/alice/groups/g1/update-trigger", True),
        ("alice", "/alice/#", True),
        ("alice", "/alice/devices/+/status", True),
        ("alice", "/alice", False),
        ("alice", "alice/devices/d1/status", False),
        ("alice", "/alicex/devices/d1/status", False),
        ("alice", "/bob/devices/d1/status", False),
        ("alice", "#", False),
        ("alice", "+/alice/#", False),
        ("alice", "/+/devices/+/status", False),
        ("alice", "/#", False),
        ("alice", "$SYS/#", False),
        ("", "//x", False),
        ("+", "/+/devices/d1/status", False),
        ("#", "/#/x", False),
        ("a/b", "/a/b/x", False),
    ],
)
def test_owner_namespace_rule(username: str, topic: str, allowed: bool) -> None:
    assert owner_may_use(username, topic) is allowed


def test_device_owner_logs_in_and_credentials_are_checked_off_the_loop(running: BrokerThread) -> None:
    client = Client(running.port, "alice", USERS["alice"])
    try:
        assert client.connect() == "Success"
    finally:
        client.close()
    assert running.auth_threads
    assert running.thread not in running.auth_threads


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", "wrong"),
        ("alice", USERS["bob"]),
        ("mallory", "anything"),
        ("alice", None),
        (None, None),
    ],
    ids=["wrong-password", "other-owners-password", "unknown-user", "no-password", "anonymous"],
)
def test_bad_logins_are_refused(running: BrokerThread, username: str | None, password: str | None) -> None:
    client = Client(running.port, username, password)
    # amqtt answers every refused login with 3.1.1 code 5, which paho reports as 135.
    reason = client.connect()
    assert reason.is_failure
    assert reason == "Not authorized"


def test_internal_user_with_wrong_password_is_refused(running: BrokerThread) -> None:
    client = Client(running.port, running.broker.internal_username, "guess")
    assert client.connect() == "Not authorized"


def test_internal_credentials_are_fresh_per_broker() -> None:
    first = EmbeddedBroker(HOST, 0, authenticate=lambda _u, _p: False)
    second = EmbeddedBroker(HOST, 0, authenticate=lambda _u, _p: False)
    assert first.internal_username != second.internal_username
    assert first.internal_password != second.internal_password
    assert len(first.internal_password) >= 32


def test_owner_publishes_and_subscribes_in_own_namespace(clients: Callable[..., Client]) -> None:
    app = clients(**owner("alice"))
    device = clients(**owner("alice"))
    assert app.subscribe("/alice/devices/+/status") == [1]

    device.publish("/alice/devices/d1/status", b'{"fw_version": "1.0.0"}')

    message = app.next_message()
    assert (message.topic, message.payload, message.qos) == (
        "/alice/devices/d1/status",
        b'{"fw_version": "1.0.0"}',
        1,
    )


@pytest.mark.parametrize(
    "topic_filter",
    ["#", "/#", "+/#", "/+/devices/+/status", "/bob/#", "/bob/devices/d1/status", "alice/#", "$SYS/#"],
)
def test_subscribing_outside_own_namespace_gets_suback_0x80(
    clients: Callable[..., Client], topic_filter: str
) -> None:
    alice = clients(**owner("alice"))
    # One SUBSCRIBE with an allowed and a refused filter: only the refused one fails,
    # and the connection stays up.
    assert alice.subscribe("/alice/#", topic_filter) == [1, 0x80]
    alice.publish("/alice/devices/d1/status", b"still connected")
    assert alice.next_message().payload == b"still connected"


def test_publishing_to_another_owners_topic_is_dropped(clients: Callable[..., Client]) -> None:
    bob = clients(**owner("bob"))
    assert bob.subscribe("/bob/#") == [1]
    alice = clients(**owner("alice"))
    bobs_device = clients(**owner("bob"))

    # amqtt still acknowledges the refused QoS 1 publish; it just never forwards it.
    alice.publish("/bob/groups/g1/update-trigger", b'{"version": "6.6.6"}')
    # Broadcasts are queued in order, so the forged message would arrive first.
    bobs_device.publish("/bob/devices/d1/status", b"marker")

    assert bob.next_message().payload == b"marker"
    bob.assert_no_message()
    assert not alice.disconnected.is_set()


def test_internal_user_receives_every_devices_status(
    running: BrokerThread, clients: Callable[..., Client]
) -> None:
    receiver = clients(running.broker.internal_username, running.broker.internal_password)
    assert receiver.subscribe("/+/devices/+/status") == [1]
    alice = clients(**owner("alice"))
    bob = clients(**owner("bob"))

    alice.publish("/alice/devices/a1/status", b"a")
    bob.publish("/bob/devices/b1/status", b"b")

    got = {receiver.next_message().topic, receiver.next_message().topic}
    assert got == {"/alice/devices/a1/status", "/bob/devices/b1/status"}

    # ...and it may publish triggers into any owner's namespace.
    assert alice.subscribe("/alice/groups/g1/update-trigger") == [1]
    receiver.publish("/alice/groups/g1/update-trigger", b'{"version": "1.2.3"}')
    assert alice.next_message().payload == b'{"version": "1.2.3"}'


def test_persistent_session_does_not_pass_to_another_owner(
    running: BrokerThread, clients: Callable[..., Client]
) -> None:
    bobs_app = clients(**owner("bob"), client_id="shared-id", clean_session=False)
    assert bobs_app.subscribe("/bob/#") == [1]
    bobs_app.close()

    # amqtt would hand bob's session (subscriptions and queued messages) to anyone
    # reusing its client id.
    alice = Client(running.port, "alice", USERS["alice"], client_id="shared-id", clean_session=False)
    assert alice.connect() == "Not authorized"

    bob_again = clients(**owner("bob"), client_id="shared-id", clean_session=False)
    bob_device = clients(**owner("bob"))
    bob_device.publish("/bob/devices/d1/status", b"for bob")
    assert bob_again.next_message().payload == b"for bob"


def test_failed_login_with_a_live_client_id_leaves_that_session_alone(
    running: BrokerThread, clients: Callable[..., Client]
) -> None:
    bob = clients(**owner("bob"), client_id="bob-app")
    assert bob.subscribe("/bob/#") == [1]

    # amqtt would drop bob's session (and subscriptions) before checking any of these.
    for username, password in [("bob", "wrong"), (None, None), ("alice", USERS["alice"])]:
        intruder = Client(running.port, username, password, client_id="bob-app")
        assert intruder.connect() == "Not authorized"

    clients(**owner("bob")).publish("/bob/devices/d1/status", b"still subscribed")
    assert bob.next_message().payload == b"still subscribed"
    assert not bob.disconnected.is_set()


def test_will_outside_own_namespace_is_refused(running: BrokerThread) -> None:
    # amqtt publishes a will without any topic check: a forged status for bob's device.
    forger = Client(running.port, "alice", USERS["alice"], will_topic="/bob/devices/d1/status")
    assert forger.connect() == "Not authorized"


def test_will_in_own_namespace_is_published_when_a_device_vanishes(
    running: BrokerThread, clients: Callable[..., Client]
) -> None:
    receiver = clients(running.broker.internal_username, running.broker.internal_password)
    assert receiver.subscribe("/+/devices/+/status") == [1]
    packet = _connect_packet(
        "alice", USERS["alice"], keep_alive=30, will=("/alice/devices/d1/status", "offline")
    )
    with socket.create_connection((HOST, running.port), timeout=TIMEOUT) as sock:
        sock.sendall(packet)
        assert sock.recv(4) == bytes([0x20, 0x02, 0x00, 0x00])
    # Closed without a DISCONNECT, like a device losing power.
    message = receiver.next_message()
    assert (message.topic, message.payload) == ("/alice/devices/d1/status", b"offline")


def test_credential_store_failure_refuses_without_logging_the_password(
    running: BrokerThread, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client(running.port, "broken-db", "hunter2-secret")
    assert client.connect() == "Not authorized"
    assert "Could not check the MQTT credentials of 'broken-db'" in caplog.text
    assert "hunter2-secret" not in caplog.text


def test_during_a_credential_store_outage_only_logins_that_worked_before_get_in(
    running: BrokerThread, caplog: pytest.LogCaptureFixture
) -> None:
    def login(username: str, password: str) -> ReasonCode:
        client = Client(running.port, username, password)
        try:
            return client.connect()
        finally:
            client.close()

    assert login("alice", USERS["alice"]) == "Success"
    assert login("alice", "wrong") == "Not authorized"
    running.store_down = True
    assert login("alice", USERS["alice"]) == "Success"
    assert login("alice", "wrong") == "Not authorized"
    assert login("alice", USERS["bob"]) == "Not authorized"
    # Never seen to log in: nothing to go by.
    assert login("bob", USERS["bob"]) == "Not authorized"
    assert "accepted the login that worked before" in caplog.text
    assert USERS["alice"] not in caplog.text
    running.store_down = False
    assert login("bob", USERS["bob"]) == "Success"
    running.store_down = True
    assert login("bob", USERS["bob"]) == "Success"


def test_binary_and_large_payloads_within_the_limit_are_delivered(clients: Callable[..., Client]) -> None:
    app = clients(**owner("alice"))
    device = clients(**owner("alice"))
    assert app.subscribe("/alice/#") == [1]
    garbage = bytes(range(256)) * 4
    big = b"x" * (200 * 1024)

    device.publish("/alice/devices/d1/status", garbage)
    device.publish("/alice/devices/d1/status", b"")
    device.publish("/alice/devices/d1/status", big)

    assert app.next_message().payload == garbage
    assert app.next_message().payload == b""
    assert app.next_message().payload == big


def test_oversized_publish_drops_only_that_client(clients: Callable[..., Client]) -> None:
    app = clients(**owner("alice"))
    assert app.subscribe("/alice/#") == [1]
    flooder = clients(**owner("alice"))

    flooder.paho.publish("/alice/devices/d1/status", b"x" * (1024 * 1024), qos=0)

    assert flooder.disconnected.wait(TIMEOUT)
    flooder.close()
    # Published after the flooder was dropped: the oversized one would have come first.
    clients(**owner("alice")).publish("/alice/devices/d1/status", b"marker")
    assert app.next_message().payload == b"marker"
    app.assert_no_message()
    other = clients(**owner("alice"))
    other.publish("/alice/devices/d2/status", b"broker still fine")
    assert app.next_message().payload == b"broker still fine"


def _remaining_length(length: int) -> bytes:
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def _string(value: str) -> bytes:
    return len(value.encode()).to_bytes(2, "big") + value.encode()


def _connect_packet(
    username: str, password: str, keep_alive: int, will: tuple[str, str] | None = None
) -> bytes:
    # MQTT 3.1.1, clean session, user name and password, and maybe a QoS 1 will.
    flags = 0xC2 | (0x0C if will else 0)
    variable_header = _string("MQTT") + bytes([4, flags]) + keep_alive.to_bytes(2, "big")
    payload = _string(f"raw-{uuid.uuid4().hex[:8]}")
    if will:
        payload += _string(will[0]) + _string(will[1])
    payload += _string(username) + _string(password)
    body = variable_header + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


@pytest.mark.parametrize(
    ("raw", "then_close"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (bytes([0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]), True),
        (bytes([0x10, 0x05]) + b"\x00\x04MQ", True),
        # Left open: the broker must hang up by itself rather than wait for 200 MB...
        (bytes([0x10]) + _remaining_length(200_000_000) + b"\x00\x04MQTT", False),
        # ...or for a CONNECT that never comes.
        (b"", False),
    ],
    ids=["http", "bad-length", "truncated-connect", "huge-connect", "silent"],
)
def test_garbage_on_the_socket_does_not_hurt_the_broker(
    running: BrokerThread, clients: Callable[..., Client], raw: bytes, then_close: bool
) -> None:
    with socket.create_connection((HOST, running.port), timeout=TIMEOUT) as sock:
        sock.sendall(raw)
        if then_close:
            sock.shutdown(socket.SHUT_WR)
        assert _read_until_closed(sock) == b""
    app = clients(**owner("alice"))
    assert app.subscribe("/alice/#") == [1]
    app.publish("/alice/devices/d1/status", b"ok")
    assert app.next_message().payload == b"ok"


def test_client_silent_past_its_keep_alive_is_dropped(running: BrokerThread) -> None:
    with socket.create_connection((HOST, running.port), timeout=TIMEOUT) as sock:
        sock.sendall(_connect_packet("alice", USERS["alice"], keep_alive=1))
        started = time.monotonic()
        # CONNACK accepted, then nothing until the broker hangs up after 1.5 s.
        assert _read_until_closed(sock) == bytes([0x20, 0x02, 0x00, 0x00])
        assert 1.4 <= time.monotonic() - started < 3


@pytest.mark.parametrize("topic", ["$SYS/broker/uptime", ""])
def test_publish_to_dollar_or_empty_topic_drops_the_client(
    running: BrokerThread, clients: Callable[..., Client], topic: str
) -> None:
    app = clients(**owner("alice"))
    assert app.subscribe("/alice/#") == [1]
    body = _string(topic) + b"payload"
    with socket.create_connection((HOST, running.port), timeout=TIMEOUT) as sock:
        sock.sendall(_connect_packet("alice", USERS["alice"], keep_alive=30))
        sock.sendall(bytes([0x30]) + _remaining_length(len(body)) + body)
        assert _read_until_closed(sock) == bytes([0x20, 0x02, 0x00, 0x00])
    clients(**owner("alice")).publish("/alice/devices/d1/status", b"ok")
    assert app.next_message().payload == b"ok"


def test_stop_closes_a_connection_that_never_logged_in() -> None:
    runner = BrokerThread(connect_timeout=60)
    runner.run(runner.broker.start())
    with socket.create_connection((HOST, runner.port), timeout=TIMEOUT) as sock:
        # Until the broker serves it: a connection it has not accepted yet proves nothing.
        deadline = time.monotonic() + TIMEOUT
        while not runner.broker._connections:
            assert time.monotonic() < deadline, "the broker never took the connection"
            time.sleep(0.01)
        started = time.monotonic()
        runner.close()  # also checks that no task is left behind
        assert time.monotonic() - started < 1
        assert _read_until_closed(sock) == b""


def test_taken_port_raises_broker_port_in_use() -> None:
    with socket.socket() as squatter:
        squatter.bind((HOST, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        runner = BrokerThread(port)
        try:
            with pytest.raises(BrokerPortInUse) as caught:
                runner.run(runner.broker.start())
        finally:
            runner.close()
    message = str(caught.value)
    assert f"{HOST}:{port} is already in use" in message
    assert f"OTASHIP_MQTT_URL=embedded://{HOST}:{port + 1}" in message
    assert "OTASHIP_MQTT_URL=mqtt://user:pass@host:1883" in message


@pytest.mark.mosquitto
def test_port_1883_taken_by_mosquitto_raises_broker_port_in_use() -> None:
    require("Mosquitto", MOSQUITTO)
    runner = BrokerThread(MOSQUITTO[1])
    try:
        with pytest.raises(BrokerPortInUse, match=r"127\.0\.0\.1:1883 is already in use"):
            runner.run(runner.broker.start())
    finally:
        runner.close()


def test_stop_releases_the_port_for_a_restart(running: BrokerThread) -> None:
    port = running.port
    connected = Client(port, "alice", USERS["alice"])
    assert connected.connect() == "Success"

    running.run(running.broker.stop())
    assert connected.disconnected.wait(TIMEOUT)
    connected.close()
    with pytest.raises(OSError):
        socket.create_connection((HOST, port), timeout=1).close()

    again = BrokerThread(port)
    try:
        again.run(again.broker.start())
        assert again.port == port
        client = Client(port, "bob", USERS["bob"])
        assert client.connect() == "Success"
        client.close()
    finally:
        again.close()


def test_start_stop_start_on_one_instance(running: BrokerThread) -> None:
    running.run(running.broker.stop())
    running.run(running.broker.stop())  # stopping twice is harmless
    running.run(running.broker.start())
    client = Client(running.port, "alice", USERS["alice"])
    assert client.connect() == "Success"
    client.close()


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "otaship.receiver.mqtt.broker" and r.getMessage().startswith("refused ")
    ]


def test_a_refused_login_is_one_info_line_with_the_user_and_why_never_the_password(
    running: BrokerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    wrong = Client(running.port, "alice", "not-alices-password-42", client_id="dev-a1")
    assert wrong.connect() == "Not authorized"
    anonymous = Client(running.port, None, None, client_id="dev-a2")
    assert anonymous.connect() == "Not authorized"
    peer = r"127\.0\.0\.1:\d+"
    lines = refusals(caplog)
    assert len(lines) == 2
    assert re.fullmatch(
        rf"refused MQTT login: user='alice' client_id='dev-a1' peer={peer}; "
        r"reason: unknown user name or wrong password",
        lines[0],
    )
    assert re.fullmatch(
        rf"refused MQTT login: user=- client_id='dev-a2' peer={peer}; reason: no user name or password",
        lines[1],
    )
    assert all(r.levelno == logging.INFO for r in caplog.records if r.getMessage() in lines)
    assert "not-alices-password-42" not in caplog.text


def test_a_flood_of_refused_logins_is_counted_past_twenty_lines_a_minute(
    running: BrokerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for attempt in range(REFUSALS_LOGGED_PER_MINUTE + 5):
        client = Client(running.port, "mallory", f"guess-{attempt}")
        assert client.connect() == "Not authorized"
    assert len(refusals(caplog)) == REFUSALS_LOGGED_PER_MINUTE
    running.broker.write_summary(60.0)
    assert refusals(caplog)[-1] == (
        "refused 5 more MQTT login(s) in the last 60 s without a line each (at most 20 lines a minute)"
    )
    # Counted once: the next summary has nothing to say.
    running.broker.write_summary(60.0)
    assert len(refusals(caplog)) == REFUSALS_LOGGED_PER_MINUTE + 1
    assert "guess-" not in caplog.text


def test_the_throttle_lets_a_limit_through_per_window() -> None:
    now = [0.0]
    throttle = Throttle(2, window=60, clock=lambda: now[0])
    assert [throttle.allow() for _ in range(4)] == [True, True, False, False]
    now[0] = 59.9
    assert throttle.allow() is False
    now[0] = 60.0
    assert [throttle.allow() for _ in range(3)] == [True, True, False]
    assert throttle.take_held() == 4
    assert throttle.take_held() == 0


def test_the_refusal_line_cuts_what_the_client_sent() -> None:
    assert refusal_line("u" * 100, None, "10.0.0.7:51012", BAD_CREDENTIALS) == (
        f"refused MQTT login: user={'u' * 64!r} client_id=- peer=10.0.0.7:51012; "
        "reason: unknown user name or wrong password"
    )
