"""The machine's real services (PostgreSQL, Mosquitto) for tests that need them.

Absent, such a test skips and says why; with OTASHIP_REQUIRE_SERVICES=1 (as CI
sets it) a missing service fails the test instead, so it cannot pass unseen.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from otaship.protocol import BrokerAddress

POSTGRES = ("127.0.0.1", 5432)
MOSQUITTO = ("127.0.0.1", 1883)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(name: str, address: tuple[str, int]) -> None:
    if port_open(*address):
        return
    reason = f"{name} is not listening on {address[0]}:{address[1]}"
    if os.environ.get("OTASHIP_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and OTASHIP_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def forget_mqtt_session(address: BrokerAddress, client_id: str, timeout: float = 10.0) -> None:
    """Drop the link's persistent session from the shared broker: a clean start with no expiry."""
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = lambda *_: connected.set()
    client.connect(address.host, address.port, clean_start=True)
    client.loop_start()
    try:
        assert connected.wait(timeout), "could not clear the link's session"
    finally:
        client.disconnect()
        client.loop_stop()
