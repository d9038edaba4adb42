"""What the action's tests (and the fleet's) share, as fixtures.

- `tenant` (one per test module), `embedded` and `mosquitto` (one per test): a
  real receiver, `otaship serve` in a subprocess, with one pro owner, made with
  the `otaship` CLI; without MQTT, or with a real broker for simulated devices.
- `deploy_step`: `otaship-deploy` in this process, as a workflow step runs it.
- `scripted`: an HTTP server on a real socket that answers from a script, for
  what a healthy receiver never does (503s, dropped connections, rollouts that
  move on each poll).
- `stage_json`: a rollout stage as GET /v1/rollouts/<id> has it.

conftest.py registers this module as a plugin.
"""

from __future__ import annotations

import io
import json
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from otaship.action.__main__ import main
from otaship.simulator.config import SimulationConfig
from tests.action_runner import parse_file_commands
from tests.esp_image import build_image
from tests.receiver_process import ReceiverProcess, migrated_env, otaship_json
from tests.services import MOSQUITTO, free_port, require

OWNER = "ops@example.com"

# -- a real receiver with an owner ------------------------------------------------------


@dataclass
class Tenant:
    env: dict[str, str]
    receiver: ReceiverProcess
    api_key: str
    mqtt_user: str
    mqtt_password: str
    broker: str  # host:port devices connect to; "" without MQTT

    @property
    def url(self) -> str:
        return self.receiver.url

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def group(self, name: str, parent: dict[str, Any] | None = None) -> dict[str, Any]:
        args = ["group", "create", name, "--owner", OWNER]
        if parent is not None:
            args += ["--parent", parent["id"]]
        return otaship_json(self.env, *args)  # type: ignore[no-any-return]

    def devices(self, group: dict[str, Any], count: int, version: str, prefix: str) -> list[str]:
        ids = [f"{prefix}-{n}" for n in range(count)]
        for device_id in ids:
            otaship_json(
                self.env,
                "device",
                "create",
                device_id,
                "--group",
                group["id"],
                "--firmware-version",
                version,
                "--id",
                device_id,
            )
        return ids

    def sim(self, group: dict[str, Any], ids: list[str], version: str, **extra: Any) -> SimulationConfig:
        return SimulationConfig(
            server=self.receiver.url,
            mqtt_url=f"mqtt://{self.mqtt_user}:{self.mqtt_password}@{self.broker}",
            group_id=group["id"],
            token=group["token"],
            devices=len(ids),
            device_ids=ids,
            version=version,
            status_interval=1.0,
            reboot_delay=(0.05, 0.2),
            **extra,
        )

    def deploy(self, group: dict[str, Any], version: str, **fields: str) -> dict[str, Any]:
        response = httpx.post(
            f"{self.receiver.url}/v1/ota/group",
            headers=self.headers,
            data={"group": group["id"], "token": group["token"], "version": version, **fields},
            files={"firmware": ("firmware.bin", build_image(version))},
            timeout=30,
        )
        assert response.status_code == 201, f"{response.text}\nthe receiver's log:\n{self.receiver.peek()}"
        return response.json()  # type: ignore[no-any-return]

    def otas(self, group_id: str, *, api_key: str | None = None) -> list[dict[str, Any]]:
        """The group's OTAs, as its owner (or the holder of `api_key`) lists them."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else self.headers
        response = httpx.get(f"{self.receiver.url}/v1/ota/group", headers=headers, timeout=10)
        response.raise_for_status()
        return [ota for ota in response.json()["otas"] if ota["group"] == group_id]

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(
            f"{self.receiver.url}/v1/rollouts/{rollout_id}", headers=self.headers, timeout=10
        ).json()
        return body

    def versions(self) -> dict[str, str]:
        return {d["id"]: d["firmware_version"] for d in otaship_json(self.env, "device", "list")}

    def latest(self, group: dict[str, Any]) -> str | None:
        ver: str | None = (
            httpx.get(f"{self.receiver.url}/v1/ota/group/latest/{group['id']}", timeout=10).json().get("ver")
        )
        return ver


def make_tenant(data_dir: Path, mqtt_url: str = "none", broker: str = "", **settings: str) -> Tenant:
    """An owner and a receiver on `mqtt_url`; `settings` are more OTASHIP_* variables for both."""
    # A share group of its own: on the machine's Mosquitto, any other receiver
    # in the same group would be handed some of this one's reports.
    env = migrated_env(
        data_dir,
        OTASHIP_MQTT_URL=mqtt_url,
        OTASHIP_MQTT_SHARE_GROUP=f"otaship-test-{secrets.token_hex(4)}",
        **settings,
    )
    user = otaship_json(env, "user", "create", OWNER, "--plan", "pro")
    receiver = ReceiverProcess(env).start()
    return Tenant(env, receiver, user["api_key"], user["mqtt_user"], user["mqtt_password"], broker)


@pytest.fixture(scope="module")
def tenant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenant]:
    """A receiver without MQTT, shared by a test module's tests."""
    running = make_tenant(tmp_path_factory.mktemp("receiver") / "data")
    yield running
    running.receiver.stop()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Tenant]:
    """A receiver with its embedded broker."""
    port = free_port()
    running = make_tenant(tmp_path / "data", f"embedded://127.0.0.1:{port}", f"127.0.0.1:{port}")
    yield running
    running.receiver.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Tenant]:
    """A receiver on this machine's Mosquitto."""
    require("Mosquitto", MOSQUITTO)
    running = make_tenant(tmp_path / "data", "mqtt://127.0.0.1:1883", "127.0.0.1:1883")
    yield running
    running.receiver.stop()


# -- otaship-deploy as a workflow step -----------------------------------------------------


@dataclass
class StepRun:
    code: int
    log: str
    outputs: dict[str, str]
    summary: str


DeployStep = Callable[..., StepRun]


@pytest.fixture
def deploy_step(tmp_path: Path) -> DeployStep:
    """`deploy_step(*args, env)`: `otaship-deploy ARGS` on a GitHub runner, with the job's
    `env`; its exit code, log, parsed $GITHUB_OUTPUT and job summary."""

    def run(*args: str, env: Mapping[str, str]) -> StepRun:
        out = io.StringIO()
        output_file, summary_file = tmp_path / "output", tmp_path / "summary"
        output_file.write_text("")
        summary_file.write_text("")
        environ = {
            "GITHUB_ACTIONS": "true",
            "GITHUB_OUTPUT": str(output_file),
            "GITHUB_STEP_SUMMARY": str(summary_file),
            **env,
        }
        code = main(list(args), environ, out)
        return StepRun(
            code, out.getvalue(), parse_file_commands(output_file.read_text()), summary_file.read_text()
        )

    return run


def receiver_env(url: str, api_key: str, group: str, token: str) -> dict[str, str]:
    """The variables action.yml passes for its four required inputs."""
    return {
        "OTASHIP_RECEIVER_URL": url,
        "OTASHIP_API_KEY": api_key,
        "OTASHIP_GROUP": group,
        "OTASHIP_GROUP_TOKEN": token,
    }


# -- a scripted HTTP server ---------------------------------------------------------------

Reply = tuple[int, Any, dict[str, str]]


class ScriptedServer(ThreadingHTTPServer):
    """Answers each request with the next scripted reply for its method; the last one repeats."""

    daemon_threads = True

    def __init__(self, replies: dict[str, list[Reply]]) -> None:
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.replies = replies
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_reply(self, method: str) -> Reply:
        with self.lock:
            script = self.replies[method]
            return script.pop(0) if len(script) > 1 else script[0]


class ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def _answer(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        self.server.requests.append((method, self.path, dict(self.headers), body))
        status, payload, headers = self.server.next_reply(method)
        if status == 0:  # drop the connection without an answer
            self.close_connection = True
            self.connection.close()
            return
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")


Scripted = Callable[[dict[str, list[Reply]]], ScriptedServer]


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    """`scripted(replies)`: a running ScriptedServer, shut down after the test."""
    servers: list[ScriptedServer] = []

    def start(replies: dict[str, list[Reply]]) -> ScriptedServer:
        server = ScriptedServer(replies)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# -- rollout JSON ------------------------------------------------------------------------


def stage_json(name: str, group: str, counts: tuple[int, int, int, int], state: str) -> dict[str, Any]:
    """A stage of GET /v1/rollouts/<id>; `counts` are targeted, succeeded, failed, pending."""
    targeted, succeeded, failed, pending = counts
    return {
        "name": name,
        "group": group,
        "state": state,
        "targeted": targeted,
        "succeeded": succeeded,
        "failed": failed,
        "pending": pending,
        "started_at": "2024-01-01T00:00:00Z",
        "ended_at": None,
    }
