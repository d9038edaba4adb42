"""A whole day of the receiver at debug level, and every line it wrote searched
for every secret the day used: API keys, group tokens, MQTT passwords and the
database URL's password. The count must be 0.

It runs the real thing: the `otaship` CLI, `otaship serve` with its embedded
broker on a PostgreSQL database reached with a password, `otaship-deploy`,
`otaship simulate`, and a paho device. Only command output whose purpose is to
hand out a secret is left unsearched: `user create` and `user key` print the
API key and MQTT password once, and `group create` and `group list` print
group tokens for the operator to configure devices with. Everything else, on
stdout or stderr, is searched.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.esp_image import build_image, write_image
from tests.postgres import ADMIN_URL
from tests.receiver.mqtt.test_broker import Client
from tests.receiver_process import OTASHIP, SERVERS, ReceiverProcess, cli_env
from tests.services import POSTGRES, free_port, require
from tests.waiting import eventually

DEADLINE = 20.0


@dataclass
class Transcript:
    """Everything the flow's processes wrote, by where it came from."""

    outputs: dict[str, str] = field(default_factory=dict)

    def add(self, source: str, text: str) -> None:
        self.outputs[source] = self.outputs.get(source, "") + text

    def run(
        self,
        source: str,
        command: list[str],
        env: dict[str, str],
        *,
        searched_stdout: bool = True,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        self.add(f"{source} (stderr)", result.stderr)
        if searched_stdout:
            self.add(f"{source} (stdout)", result.stdout)
        if check:
            assert result.returncode == 0, f"{source} exited {result.returncode}: {result.stderr}"
        return result

    def otaship(
        self, env: dict[str, str], *args: str, searched_stdout: bool = True, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            f"otaship {' '.join(args[:2])}",
            [*OTASHIP, *args],
            env,
            searched_stdout=searched_stdout,
            check=check,
        )

    def leaks(self, secrets_used: dict[str, str]) -> list[str]:
        return [
            f"{name} leaked in {source}: {line}"
            for source, output in self.outputs.items()
            for line in output.splitlines()
            for name, secret in secrets_used.items()
            if secret in line
        ]


@pytest.fixture
def postgres_with_password() -> Iterator[tuple[str, str]]:
    """A role with a password and a database it owns, dropped afterwards.

    This machine's PostgreSQL trusts local connections, so the password is not
    checked; what matters here is that the URL the receiver gets carries one.
    """
    require("PostgreSQL", POSTGRES)
    name = f"otaship_logs_{secrets.token_hex(6)}"
    password = secrets.token_hex(16)
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'"))
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER "{name}"'))
    try:
        yield f"postgresql+psycopg://{name}:{password}@127.0.0.1:5432/{name}", password
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))
        admin.dispose()


# Debug as an operator would turn it on, and trace, where uvicorn also logs
# every request's scope: its path and raw_path, with the token on `download`.
@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(("log_level", "log_format"), [("debug", "text"), ("trace", "json")])
def test_no_secret_reaches_any_line_at_debug_level(
    tmp_path: Path, postgres_with_password: tuple[str, str], log_level: str, log_format: str, server: str
) -> None:
    database_url, database_password = postgres_with_password
    broker_port = free_port()
    env = cli_env(
        tmp_path / "data",
        server=server,
        OTASHIP_DATABASE_URL=database_url,
        OTASHIP_LOG_LEVEL=log_level,
        OTASHIP_LOG_FORMAT=log_format,
        OTASHIP_MQTT_URL=f"embedded://127.0.0.1:{broker_port}",
    )
    day = Transcript()

    # --- the operator sets up, through the CLI
    day.otaship(env, "migrate")
    user = json.loads(
        day.otaship(env, "user", "create", "ops@example.com", "--plan", "pro", searched_stdout=False).stdout
    )
    second_key = json.loads(
        day.otaship(env, "user", "key", "ops@example.com", "--keep", searched_stdout=False).stdout
    )["api_key"]
    fleet = json.loads(
        day.otaship(
            env, "group", "create", "fleet", "--owner", "ops@example.com", searched_stdout=False
        ).stdout
    )
    canary = json.loads(
        day.otaship(
            env,
            "group",
            "create",
            "canary",
            "--owner",
            "ops@example.com",
            "--parent",
            fleet["id"],
            searched_stdout=False,
        ).stdout
    )
    day.otaship(
        env,
        "device",
        "create",
        "bench",
        "--group",
        canary["id"],
        "--id",
        "bench-1",
        "--firmware-version",
        "0.9.0",
    )
    day.otaship(env, "user", "list")
    day.otaship(env, "group", "list", searched_stdout=False)
    # A mistyped admin command: its error names what is wrong, not the secrets around it.
    day.otaship(env, "group", "create", "x", "--owner", "nobody@example.com", check=False)

    bad_key = "osk_" + secrets.token_urlsafe(32)
    wrong_mqtt_password = secrets.token_urlsafe(24)
    used = {
        "the API key": user["api_key"],
        "the second API key": second_key,
        "a rejected API key": bad_key,
        "the fleet's group token": fleet["token"],
        "the canary's group token": canary["token"],
        "the owner's MQTT password": user["mqtt_password"],
        "a wrong MQTT password": wrong_mqtt_password,
        "the database URL's password": database_password,
    }
    key = {"Authorization": f"Bearer {user['api_key']}"}
    receiver = ReceiverProcess(env).start()
    try:
        url = receiver.url
        with httpx.Client(base_url=url, timeout=30) as http:
            # --- the management API: good and bad requests
            assert http.get("/v1/ota/group", headers=key).status_code == 200
            assert (
                http.get("/v1/ota/group", headers={"Authorization": f"Bearer {second_key}"}).status_code
                == 200
            )
            assert (
                http.get("/v1/ota/group", headers={"Authorization": f"Bearer {bad_key}"}).status_code == 401
            )
            assert http.get("/v1/ota/group").status_code == 401
            assert http.get("/v1/ota/group?offset=-1", headers=key).status_code == 400
            assert http.get(f"/v1/rollouts?group={'0' * 24}", headers=key).status_code == 404

            # --- a deploy from CI
            image = write_image(tmp_path / "fw.bin", "1.0.0")
            deploy_env = {
                **{k: v for k, v in env.items() if not k.startswith("OTASHIP_")},
                "OTASHIP_RECEIVER_URL": url,
                "OTASHIP_API_KEY": user["api_key"],
                "OTASHIP_GROUP": fleet["id"],
                "OTASHIP_GROUP_TOKEN": fleet["token"],
            }
            day.run(
                "otaship-deploy",
                [
                    sys.executable,
                    "-m",
                    "otaship.action",
                    "deploy",
                    "--firmware",
                    str(image),
                    "--version",
                    "1.0.0",
                    "--wait",
                    "false",
                ],
                deploy_env,
            )
            conflict = http.post(
                "/v1/ota/group",
                headers=key,
                data={"group": fleet["id"], "token": fleet["token"], "version": "1.0.0"},
                files={"firmware": ("firmware.bin", build_image("1.0.0", seed=7))},
            )
            assert conflict.status_code == 409
            wrong_token = http.post(
                "/v1/ota/group",
                headers=key,
                data={"group": fleet["id"], "token": canary["token"], "version": "1.0.1"},
                files={"firmware": ("firmware.bin", build_image("1.0.1"))},
            )
            assert wrong_token.status_code == 400
            staged = http.post(
                "/v1/ota/group",
                headers=key,
                data={
                    "group": fleet["id"],
                    "token": fleet["token"],
                    "version": "1.1.0",
                    "canary": canary["id"],
                    "auto_promote": "false",
                },
                files={"firmware": ("firmware.bin", build_image("1.1.0"))},
            )
            assert staged.status_code == 201, staged.text
            rollout = staged.json()["rollout"]["id"]
            assert http.get(f"/v1/rollouts/{rollout}", headers=key).status_code == 200

            # --- devices: the right calls, a wrong token, and the id and token on latest by mistake
            assert http.get(f"/v1/ota/group/latest/{fleet['id']}").json() == {"ver": "1.0.0"}
            assert http.get(f"/v1/ota/group/latest/{fleet['id']}{fleet['token']}").status_code == 404
            assert http.get(f"/v1/ota/group/latest/{canary['id']}{canary['token']}").status_code == 404
            assert http.get(f"/v1/ota/group/download/{fleet['id']}{fleet['token']}").status_code == 200
            ranged = http.get(
                f"/v1/ota/group/download/{canary['id']}{canary['token']}", headers={"Range": "bytes=0-15"}
            )
            assert ranged.status_code == 206
            assert http.head(f"/v1/ota/group/download/{fleet['id']}{fleet['token']}").status_code == 200
            assert http.get(f"/v1/ota/group/download/{fleet['id']}{canary['token']}").status_code == 404

            # --- MQTT: a device logs in with the owner's password, one with a wrong password is refused
            device = Client(broker_port, user["mqtt_user"], user["mqtt_password"])
            assert not device.connect().is_failure
            device.publish(f"/{user['mqtt_user']}/devices/bench-1/update-response", b'{"code": 201}')
            device.publish(
                f"/{user['mqtt_user']}/devices/bench-1/status",
                json.dumps({"fw_version": "1.1.0", "uptime": 5}).encode(),
            )
            # A device nobody registered: its reports are counted in a summary line.
            device.publish(
                f"/{user['mqtt_user']}/devices/unregistered-1/status",
                json.dumps({"fw_version": "1.0.0", "uptime": 5}).encode(),
            )
            intruder = Client(broker_port, user["mqtt_user"], wrong_mqtt_password)
            assert intruder.connect().is_failure
            # The receiver took the report in: the canary's device succeeded.
            eventually(
                lambda: (
                    http.get(f"/v1/rollouts/{rollout}", headers=key).json()["stages"][0]["succeeded"] == 1
                ),
                "the status report",
                DEADLINE,
            )
            device.close()
            assert http.post(f"/v1/rollouts/{rollout}/abort", headers=key).status_code == 200
            assert http.post(f"/v1/rollouts/{rollout}/abort", headers=key).status_code == 409

            # --- the simulator, as an owner would run it, and with a mistyped URL
            mqtt_url = f"mqtt://{user['mqtt_user']}:{user['mqtt_password']}@127.0.0.1:{broker_port}"
            simulate = [
                "simulate",
                "--group",
                canary["id"],
                "--token",
                canary["token"],
                "--server",
                url,
                "--devices",
                "2",
                "--version",
                "1.0.0",
                "--duration",
                "3",
                "--status-interval",
                "1",
                "--register",
            ]
            day.otaship(env, *simulate, "--mqtt-url", mqtt_url)
            day.otaship(env, *simulate, "--mqtt-url", mqtt_url.replace("mqtt://", "mqttx://"), check=False)
    finally:
        day.add("otaship serve", receiver.stop())

    leaks = day.leaks(used)
    print(
        f"{len(leaks)} secret(s) in {sum(len(o.splitlines()) for o in day.outputs.values())} lines "
        f"from {len(day.outputs)} sources"
    )
    assert leaks == [], "\n".join(leaks)
    # The flow really ran at debug level and logged what it should have.
    served = day.outputs["otaship serve"]
    assert (" DEBUG " in served) if log_format == "text" else ('"level": "DEBUG"' in served)
    if log_level == "trace":
        assert "ASGI [" in served and "Started scope=" in served
    for expected in ("/v1/ota/group/latest/", "/v1/ota/group/download/", " 401", " 409"):
        assert expected in served
    assert f"/v1/ota/group/latest/{fleet['id']}[redacted]" in served
    # The event lines of the day, with their ids.
    for expected in (
        f"deployed version=1.0.0 group={fleet['id']} owner={user['id']} kind=plain",
        f"deployed version=1.1.0 group={canary['id']} owner={user['id']} kind=canary rollout={rollout}",
        f"rollout {rollout} new -> canary: group={fleet['id']}",
        f"rollout {rollout} canary -> aborted: group={fleet['id']}",
        "reason: aborted by request",
        f"refused MQTT login: user={user['mqtt_user']!r}",
        "reason: unknown user name or wrong password",
        "device checks (GET latest) in the last",
        "report(s) of unregistered or foreign devices in the last",
        "unregistered-1=1",
    ):
        assert expected in served, expected
