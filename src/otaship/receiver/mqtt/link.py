"""The receiver's own MQTT connection (paho-mqtt), to the embedded or an external broker.

paho runs its network loop in its own thread and reconnects by itself; the
rest of the receiver only asks whether the link is up, publishes, and gets
messages through `on_message` (called in paho's thread).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from otaship.protocol import BrokerAddress, report_filters

log = logging.getLogger("otaship.mqtt")

# Reports published while the receiver restarts wait in the broker this long.
SESSION_EXPIRY_SECONDS = 24 * 3600


class MqttLink:
    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str,
        on_message: Callable[[str, bytes], None],
        username: str | None = None,
        password: str | None = None,
        share_group: str | None = None,
    ) -> None:
        self.address = address
        self.on_message = on_message
        # MQTT 5 (shared subscriptions, session expiry) on external brokers; the
        # embedded amqtt broker speaks 3.1.1 only and lives and dies with us.
        self.mqtt5 = not address.embedded
        self.persistent = not address.embedded
        self._connected = threading.Event()
        # Set by stop(): the disconnect that follows is ours, not a lost broker.
        self._stopping = threading.Event()
        # Replicas of one receiver split the reports; the embedded broker has
        # only one subscriber, and amqtt no shared subscriptions.
        self._filters = report_filters(share_group=share_group if self.mqtt5 else None)
        if self.mqtt5:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=True,
            )
        user = username if username is not None else address.username
        secret = password if password is not None else address.password
        if user is not None:
            self.client.username_pw_set(user, secret)
        if address.tls:
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        properties = None
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho's own signature is untyped
            properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
            self.client.connect_async(
                self.address.host,
                self.address.port,
                keepalive=30,
                clean_start=not self.persistent,
                properties=properties,
            )
        else:
            self.client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping.set()
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            self._connected.clear()

    def publish(self, topic: str, payload: bytes | str) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, properties: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT broker %s refused the connection: %s", self.address.describe(), reason)
            return
        log.info("connected to MQTT broker %s", self.address.describe())
        client.subscribe([(f, 1) for f in self._filters])
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, properties: object
    ) -> None:
        if self._stopping.is_set():
            log.info("disconnected from MQTT broker %s", self.address.describe())
        elif self._connected.is_set():
            log.warning("lost the MQTT broker %s (%s); reconnecting", self.address.describe(), reason)
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            self.on_message(message.topic, bytes(message.payload))
        except Exception:
            # Nothing a device sends may stop the subscriber.
            log.exception("dropped an MQTT message on %s", message.topic)
