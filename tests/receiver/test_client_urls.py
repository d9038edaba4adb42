"""`--format env`: the admin commands print shell assignments that a POSIX shell evaluates,
and the URLs in them follow the receiver's settings (OTASHIP_PUBLIC_URL first)."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from otaship.receiver.cli import cli
from otaship.receiver.client_urls import device_mqtt_url, receiver_url, shell_exports
from otaship.receiver.settings import Settings, SettingsError
from tests.receiver_process import cli_env, migrated_env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return migrated_env(tmp_path / "data", OTASHIP_PORT="9000", OTASHIP_MQTT_URL="embedded://127.0.0.1:1884")


def run(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env=env, prog_name="otaship")
    assert result.exit_code == 0, result.output
    return result.stdout


def evaluated(script: str) -> dict[str, str]:
    """What bash has in its environment after `eval "$script"`: the real shell, not a parser."""
    shown = subprocess.run(
        ["bash", "-c", 'eval "$1" && env -0', "bash", script],
        capture_output=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout.decode()
    pairs = (item.split("=", 1) for item in shown.split("\0") if "=" in item)
    return {name: value for name, value in pairs if name.startswith("OTASHIP_")}


def test_user_create_env_sets_what_the_next_commands_use(env: dict[str, str]) -> None:
    output = run(env, "user", "create", "ada@example.com", "--plan", "pro", "--format", "env")
    assert all(line.startswith("export OTASHIP_") for line in output.splitlines())
    values = evaluated(output)
    assert set(values) == {
        "OTASHIP_RECEIVER_URL",
        "OTASHIP_API_KEY",
        "OTASHIP_MQTT_USER",
        "OTASHIP_MQTT_PASSWORD",
        "OTASHIP_DEVICE_MQTT_URL",
    }
    assert values["OTASHIP_RECEIVER_URL"] == "http://127.0.0.1:9000"
    assert values["OTASHIP_API_KEY"].startswith("osk_")
    user, password = values["OTASHIP_MQTT_USER"], values["OTASHIP_MQTT_PASSWORD"]
    assert values["OTASHIP_DEVICE_MQTT_URL"] == f"mqtt://{user}:{password}@127.0.0.1:1884"
    listed = json.loads(run(env, "user", "list"))
    assert [(u["email"], u["plan"], u["mqtt_user"]) for u in listed] == [("ada@example.com", "pro", user)]


def test_the_default_output_is_still_one_json_object(env: dict[str, str]) -> None:
    created = json.loads(run(env, "user", "create", "ada@example.com"))
    assert set(created) == {"id", "email", "plan", "api_key", "mqtt_user", "mqtt_password"}
    assert set(json.loads(run(env, "user", "key", "ada@example.com", "--format", "json"))) == {
        "id",
        "email",
        "api_key",
    }


def test_group_subgroup_device_and_key(env: dict[str, str]) -> None:
    run(env, "user", "create", "ada@example.com", "--plan", "pro")
    fleet = evaluated(run(env, "group", "create", "fleet", "--owner", "ada@example.com", "--format", "env"))
    assert set(fleet) == {"OTASHIP_GROUP", "OTASHIP_GROUP_TOKEN"}
    canary = evaluated(
        run(
            env,
            *("group", "create", "canary", "--owner", "ada@example.com"),
            *("--parent", fleet["OTASHIP_GROUP"], "--format", "env"),
        )
    )
    assert set(canary) == {"OTASHIP_CANARY", "OTASHIP_CANARY_TOKEN"}
    groups = {g["id"]: g for g in json.loads(run(env, "group", "list"))}
    assert groups[fleet["OTASHIP_GROUP"]]["token"] == fleet["OTASHIP_GROUP_TOKEN"]
    assert groups[canary["OTASHIP_CANARY"]]["parent"] == fleet["OTASHIP_GROUP"]
    assert groups[canary["OTASHIP_CANARY"]]["token"] == canary["OTASHIP_CANARY_TOKEN"]

    device = evaluated(
        run(env, "device", "create", "bench-1", "--group", canary["OTASHIP_CANARY"], "--format", "env")
    )
    assert [d["id"] for d in json.loads(run(env, "device", "list"))] == [device["OTASHIP_DEVICE"]]

    key = evaluated(run(env, "user", "key", "ada@example.com", "--format", "env"))
    assert set(key) == {"OTASHIP_API_KEY"} and key["OTASHIP_API_KEY"].startswith("osk_")


def test_an_unknown_format_is_a_usage_error(env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        cli, ["user", "create", "a@example.com", "--format", "yaml"], env=env, prog_name="otaship"
    )
    assert result.exit_code == 2
    assert "'yaml' is not one of 'json', 'env'" in result.output


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://127.0.0.1:8080"),
        ({"OTASHIP_HOST": "0.0.0.0", "OTASHIP_PORT": "9000"}, "http://127.0.0.1:9000"),
        ({"OTASHIP_HOST": "::1"}, "http://[::1]:8080"),
        ({"OTASHIP_HOST": "10.0.0.5"}, "http://10.0.0.5:8080"),
        ({"OTASHIP_PUBLIC_URL": "https://ota.example.com/"}, "https://ota.example.com"),
        ({"OTASHIP_PUBLIC_URL": "https://example.com/ota", "OTASHIP_PORT": "1"}, "https://example.com/ota"),
    ],
)
def test_receiver_url(env: dict[str, str], url: str) -> None:
    assert receiver_url(settings(**env)) == url


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "mqtt://u%40x:p%2Fw%20d@127.0.0.1:1883"),
        ({"OTASHIP_MQTT_URL": "embedded://0.0.0.0:1884"}, "mqtt://u%40x:p%2Fw%20d@127.0.0.1:1884"),
        (
            {"OTASHIP_MQTT_URL": "embedded://0.0.0.0:1883", "OTASHIP_PUBLIC_URL": "https://ota.example.com"},
            "mqtt://u%40x:p%2Fw%20d@ota.example.com:1883",
        ),
        (
            {"OTASHIP_MQTT_URL": "mqtts://otaship:s3cret@broker.example.com:8883"},
            "mqtts://u%40x:p%2Fw%20d@broker.example.com:8883",
        ),
        ({"OTASHIP_MQTT_URL": "none"}, None),
    ],
)
def test_device_mqtt_url(env: dict[str, str], url: str | None) -> None:
    assert device_mqtt_url(settings(**env), "u@x", "p/w d") == url


def test_shell_exports_quote_every_value() -> None:
    hostile = 'a\'b $HOME `id` "c"\nd'
    script = shell_exports([("OTASHIP_X", hostile), ("OTASHIP_SKIPPED", None)])
    assert script == f"export OTASHIP_X={shlex.quote(hostile)}"
    assert evaluated(script) == {"OTASHIP_X": hostile}


@pytest.mark.parametrize(
    "value", ["ota.example.com", "ftp://ota.example.com", "https://", "https://h:x", "https://h/?a=1"]
)
def test_a_public_url_that_is_not_a_base_url_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="OTASHIP_PUBLIC_URL must be the receiver's base URL"):
        settings(OTASHIP_PUBLIC_URL=value)


def served_document(public_url: str | None, tmp_path: Path) -> dict[str, Any]:
    from starlette.testclient import TestClient

    from otaship.receiver.app import create_app

    app = create_app(
        Settings(data_dir=tmp_path / "data", mqtt_url="none", public_url=public_url, gc_interval=0)
    )
    with TestClient(app) as client:
        document: dict[str, Any] = client.get("/openapi.json").json()
        return document


def test_the_openapi_document_names_the_public_url(tmp_path: Path) -> None:
    assert served_document("https://ota.example.com", tmp_path)["servers"] == [
        {"url": "https://ota.example.com"}
    ]
    assert "servers" not in served_document(None, tmp_path)


def test_the_public_url_is_what_clients_and_devices_are_given(tmp_path: Path) -> None:
    env = migrated_env(
        tmp_path / "data",
        OTASHIP_HOST="0.0.0.0",
        OTASHIP_PUBLIC_URL="https://ota.example.com/",
        OTASHIP_MQTT_URL="embedded://0.0.0.0:1883",
    )
    values = evaluated(run(env, "user", "create", "ada@example.com", "--format", "env"))
    assert values["OTASHIP_RECEIVER_URL"] == "https://ota.example.com"
    login = f"{values['OTASHIP_MQTT_USER']}:{values['OTASHIP_MQTT_PASSWORD']}"
    assert values["OTASHIP_DEVICE_MQTT_URL"] == f"mqtt://{login}@ota.example.com:1883"


def test_a_bad_public_url_stops_the_cli_in_one_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data", OTASHIP_PUBLIC_URL="ota.example.com")
    result = CliRunner().invoke(cli, ["user", "list"], env=env, prog_name="otaship")
    assert result.exit_code == 1
    assert result.stderr == (
        "otaship: error: OTASHIP_PUBLIC_URL must be the receiver's base URL, such as "
        "https://ota.example.com, not 'ota.example.com'\n"
    )
