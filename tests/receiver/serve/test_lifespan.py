"""`otaship serve`'s lifespan on each server: the embedded broker, the paho link, the
outbox publisher and the rollout clock start with it, and SIGTERM ends them cleanly."""

from __future__ import annotations

import json
import queue
import signal
import socket
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from otaship.protocol import trigger_topic
from tests.esp_image import build_image
from tests.receiver_process import SERVERS, ReceiverProcess, migrated_env, otaship_json
from tests.services import free_port


@pytest.mark.parametrize("server", SERVERS)
def test_the_lifespan_runs_the_broker_and_the_background_and_ends_on_sigterm(
    tmp_path: Path, server: str
) -> None:
    broker_port = free_port()
    env = migrated_env(
        tmp_path / "data", server=server, OTASHIP_MQTT_URL=f"embedded://127.0.0.1:{broker_port}"
    )
    user = otaship_json(env, "user", "create", "ada@example.com", "--plan", "pro")
    group = otaship_json(env, "group", "create", "fleet", "--owner", "ada@example.com")
    receiver = ReceiverProcess(env).start()
    triggers: queue.Queue[bytes] = queue.Queue()
    subscribed = queue.Queue[int]()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lifespan-test", protocol=mqtt.MQTTv311)
    client.username_pw_set(user["mqtt_user"], user["mqtt_password"])
    client.on_message = lambda _c, _u, message: triggers.put(bytes(message.payload))
    client.on_subscribe = lambda *_: subscribed.put(1)
    try:
        # The embedded broker runs inside the worker and takes the owner's login.
        client.connect("127.0.0.1", broker_port)
        client.loop_start()
        client.subscribe(trigger_topic(user["mqtt_user"], group["id"]), qos=1)
        subscribed.get(timeout=10)
        response = httpx.post(
            f"{receiver.url}/v1/ota/group",
            headers={"Authorization": f"Bearer {user['api_key']}"},
            data={"group": group["id"], "token": group["token"], "version": "1.0.0"},
            files={"firmware": ("firmware.bin", build_image("1.0.0"))},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        # The deploy's outbox row, published by the background through the paho link.
        assert json.loads(triggers.get(timeout=15)) == {"version": "1.0.0"}
        client.disconnect()
        client.loop_stop()

        process = receiver.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        output = receiver.stop()
    # granian exits 0; uvicorn re-raises the signal after its graceful stop.
    assert code in ((0,) if server == "granian" else (0, -signal.SIGTERM)), output
    assert output.index("Application startup complete.") < output.index("Application shutdown complete."), (
        output
    )
    assert "Traceback" not in output and " ERROR " not in output, output
    # The broker went with the lifespan: its port is free again.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", broker_port))
