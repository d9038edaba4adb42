"""One MQTT connection of a simulated device, driven by the fleet's event loop.

paho's socket is handed to the loop once connected: `loop_read` runs when it is
readable, `loop_write` while paho has bytes to send (fleet.py says why).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from otaship.simulator.device import Device

log = logging.getLogger(__name__)

# Seconds a closing connection gets to send its DISCONNECT before its socket is dropped.
DISCONNECT_GRACE = 2.0


class ConnectionLost(Exception):
    """The device's MQTT connection closed under an operation."""


class Connection:
    """One MQTT connection of one device, from CONNECT until its socket closes.

    A reboot or a lost connection ends it; the device then opens a new one with
    a fresh paho client, as a rebooted ESP32 starts from scratch.
    """

    def __init__(self, device: Device, client: mqtt.Client) -> None:
        self.device = device
        self.fleet = device.fleet
        self.client = client
        self.sock: Any = None
        self.connack: Any = None  # paho ReasonCode once CONNACK arrived
        self.subscribed = False
        self.closed = False
        self.unacked: set[int] = set()
        self._write_soon = False
        self._watching_write = False
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
            raise ConnectionLost("no socket after connect")
        loop = self.fleet.loop
        self.sock = sock
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = lambda _c, _u, _s: self._want_write()
        self.client.on_socket_unregister_write = lambda _c, _u, _s: self._no_writer()
        loop.add_reader(sock, self._readable)
        if self.client.want_write():
            self._add_writer()

    # paho asks for the socket to be watched for writing on every publish, and
    # to stop once it is written. Each ask was two epoll changes per packet; a
    # write is tried first, on the loop's next turn (which also sends a
    # device's publishes of one turn together), and the socket watched only
    # when it cannot take everything.

    def _want_write(self) -> None:
        if not self._write_soon and not self._watching_write:
            self._write_soon = True
            self.fleet.loop.call_soon(self._write_now)

    def _write_now(self) -> None:
        self._write_soon = False
        if self.closed or self.sock is None:
            return
        self._writable()
        if not self.closed and self.client.want_write():
            self._add_writer()

    def _add_writer(self) -> None:
        if not self._watching_write:
            self._watching_write = True
            self.fleet.loop.add_writer(self.sock, self._writable)

    def _no_writer(self) -> None:
        if self._watching_write:
            self._watching_write = False
            self.fleet.loop.remove_writer(self.sock)

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
        self._watching_write = False
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
            self._watching_write = False
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
            raise ConnectionLost(topic)
        info = self.client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1)
        if info.rc != 0:  # MQTT_ERR_SUCCESS
            self.fleet.inflight.release()
            raise ConnectionLost(f"publish to {topic}: rc {info.rc}")
        self.unacked.add(info.mid)

    async def flush(self, timeout: float) -> None:
        """Wait until every publish is acknowledged."""
        await self.wait_for(lambda: not self.unacked or self.closed, timeout)
        if self.closed:
            raise ConnectionLost("closed before its publishes were acknowledged")
