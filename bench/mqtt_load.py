"""MQTT load for the status benchmark: a raw QoS 1 publisher and a bare paho counter.

The publisher writes pre-encoded MQTT 3.1.1 PUBLISH packets on one socket, so
its own cost is small next to any subscriber's: what is measured is the
subscriber, not the load generator. It caps unacknowledged QoS 1 messages
(paho numbers them with 16-bit ids: past 65,535 in flight, messages are lost
silently).

    python -m bench.mqtt_load publish --port P --user U --prefix D --devices N --messages M \
        --version V --final F
    python -m bench.mqtt_load count --port P --user U --expect N   # the baseline subscriber
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence

WINDOW = 10_000  # unacknowledged QoS 1 publishes, well under 65,535
SEND_BATCH = 500


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str) -> bytes:
    # MQTT 3.1.1, clean session, no keepalive (the run is short and never idle).
    body = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _string(client_id)
    return b"\x10" + _length(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    body = _string(topic) + struct.pack("!H", packet_id) + payload
    return b"\x32" + _length(len(body)) + body


def device_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{n:05d}" for n in range(count)]


def status_messages(
    user: str, device_ids: Sequence[str], per_device: int, version: str, final: str
) -> list[tuple[str, bytes]]:
    """IoTaaP OS status reports, round-robin over the devices; each device's last one brings `final`."""
    messages = []
    for k in range(per_device):
        fw = final if k == per_device - 1 else version
        for device_id in device_ids:
            payload = json.dumps(
                {"battery": 3.9, "uptime": 60 + 5 * k, "core_version": "1.0.0", "fw_version": fw},
                separators=(",", ":"),
            ).encode()
            messages.append((f"/{user}/devices/{device_id}/status", payload))
    return messages


def publish(
    host: str, port: int, messages: Iterable[tuple[str, bytes]], *, window: int = WINDOW
) -> dict[str, float]:
    """Publish at QoS 1 with at most `window` unacknowledged; returns monotonic timestamps."""
    packets = [publish_packet(topic, payload, n % 65535 + 1) for n, (topic, payload) in enumerate(messages)]
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(connect_packet(f"bench-pub-{time.monotonic_ns()}"))
        connack = _read_exactly(sock, 4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"the broker refused the publisher: {connack!r}")
        started = time.monotonic()
        sent = acked = 0
        pending = b""
        while acked < len(packets):
            room = min(len(packets) - sent, window - (sent - acked), SEND_BATCH)
            if room > 0:
                sock.sendall(b"".join(packets[sent : sent + room]))
                sent += room
                sock.setblocking(False)
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    data = None
                finally:
                    sock.setblocking(True)
            else:
                data = sock.recv(1 << 16)
            if data is None:
                continue
            if not data:
                raise RuntimeError(f"the broker closed the connection after {acked} acknowledgements")
            pending += data
            # Only PUBACKs (4 bytes: 0x40 0x02 id id) come back to a client that subscribes to nothing.
            whole = len(pending) // 4
            acked += whole
            pending = pending[whole * 4 :]
        finished = time.monotonic()
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    return {"started": started, "finished": finished, "messages": len(packets)}


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("the broker closed the connection")
        data += chunk
    return data


def count(host: str, port: int, user: str, expect: int, timeout: float) -> dict[str, float]:
    """A bare paho subscriber (MQTT 5, QoS 1, the receiver's topics) counting messages."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-count-{time.monotonic_ns()}", protocol=mqtt.MQTTv5
    )
    state = {"count": 0, "first": 0.0, "last": 0.0}

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe([(f"/{user}/devices/+/status", 1), (f"/{user}/devices/+/update-response", 1)])

    def on_subscribe(*_: object) -> None:
        state["cpu_ready"] = time.process_time()
        print("ready", flush=True)

    def on_message(c: mqtt.Client, _userdata: object, _message: mqtt.MQTTMessage) -> None:
        state["count"] += 1
        if state["count"] == 1:
            state["first"] = time.monotonic()
        if state["count"] >= expect:
            state["last"] = time.monotonic()
            c.disconnect()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port, keepalive=60)
    deadline = time.monotonic() + timeout
    while state["last"] == 0.0 and time.monotonic() < deadline:
        client.loop(timeout=0.5)
    state["cpu"] = time.process_time() - state.get("cpu_ready", 0.0)
    return state


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt_load")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("publish", "count"):
        p = sub.add_parser(name)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--user", required=True)
    p = sub.choices["publish"]
    p.add_argument("--prefix", required=True, help="device ids are PREFIX-00000, PREFIX-00001, ...")
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--messages", type=int, required=True, help="per device")
    p.add_argument("--version", required=True)
    p.add_argument("--final", required=True)
    p = sub.choices["count"]
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    if args.command == "publish":
        result = publish(
            args.host,
            args.port,
            status_messages(
                args.user, device_ids(args.prefix, args.devices), args.messages, args.version, args.final
            ),
        )
    else:
        result = count(args.host, args.port, args.user, args.expect, args.timeout)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
