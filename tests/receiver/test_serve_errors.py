"""What `otaship serve` and the admin commands say about a configuration they cannot use:
one line that names the value and what to write instead, exit 1, no traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from otaship.receiver.cli import cli

STORAGE = "OTASHIP_STORAGE_URL must be file:///PATH or gs://BUCKET[/PREFIX], not "
DATABASE = "OTASHIP_DATABASE_URL must be sqlite:///PATH or postgresql+psycopg://HOST/DATABASE, not "
MQTT = "OTASHIP_MQTT_URL must be embedded://HOST:PORT, mqtt://…, mqtts://… or none, not "


def run(tmp_path: Path, args: list[str], **variables: str) -> tuple[int, str, str]:
    env = {
        "OTASHIP_DATA_DIR": str(tmp_path / "data"),
        "OTASHIP_MQTT_URL": "none",
        "OTASHIP_DATABASE_URL": "",
        "OTASHIP_STORAGE_URL": "",
        **variables,
    }
    result = CliRunner().invoke(cli, args, env=env, prog_name="otaship")
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_taken_http_port_says_what_to_do(tmp_path: Path, taken_port: int) -> None:
    for args, variables in (
        (["serve", "--port", str(taken_port)], {}),
        (["serve"], {"OTASHIP_PORT": str(taken_port)}),
    ):
        assert run(tmp_path, args, **variables) == (
            1,
            "",
            f"otaship: error: Cannot serve HTTP on 127.0.0.1:{taken_port}: it is already in use. "
            "Stop whatever listens there (another otaship serve?), or pick another port with "
            f"OTASHIP_PORT={taken_port + 1} or otaship serve --port.\n",
        )
    # Checked before anything started: not even the database was made.
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"OTASHIP_HOST": "no-such-host.invalid"}, "cannot resolve the host 'no-such-host.invalid'"),
        ({"OTASHIP_HOST": "192.0.2.1"}, "Cannot assign requested address"),
    ],
)
def test_an_address_that_cannot_be_served_is_named(
    tmp_path: Path, variables: dict[str, str], message: str
) -> None:
    code, stdout, stderr = run(tmp_path, ["serve", "--port", "0"], **variables)
    assert (code, stdout) == (1, "")
    assert stderr.startswith(f"otaship: error: Cannot serve HTTP on {variables['OTASHIP_HOST']}:0: ")
    assert message in stderr
    assert stderr.endswith("Check OTASHIP_HOST and OTASHIP_PORT (or serve --host and --port).\n")
    assert stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("OTASHIP_STORAGE_URL", "s3://b", STORAGE + "s3://…"),
        ("OTASHIP_STORAGE_URL", "/var/lib/otaship", STORAGE + "a value without a scheme"),
        ("OTASHIP_DATABASE_URL", "mysql://otaship:db-secret@db/otaship", DATABASE + "mysql://…"),
        (
            "OTASHIP_DATABASE_URL",
            "postgresql+psycopg2://u:db-secret@db/x",
            DATABASE + "postgresql+psycopg2://…",
        ),
        ("OTASHIP_DATABASE_URL", "otaship:db-secret@db://x", DATABASE + "a value without a scheme"),
        ("OTASHIP_DATABASE_URL", "nonsense", DATABASE + "a value without a scheme"),
        ("OTASHIP_MQTT_URL", "amqp://u:mq-secret@broker", MQTT + "'amqp'"),
        ("OTASHIP_MQTT_URL", "mqtt://u:mq-secret@broker:port", "OTASHIP_MQTT_URL has an invalid port"),
        ("OTASHIP_PORT", "70000", "OTASHIP_PORT must be at most 65535, not 70000"),
        ("OTASHIP_PORT", "http", "OTASHIP_PORT must be a whole number, not 'http'"),
        ("OTASHIP_LOG_FORMAT", "xml", "OTASHIP_LOG_FORMAT must be text or json, not 'xml'"),
        (
            "OTASHIP_RATE_LIMIT_READS",
            "fast",
            "OTASHIP_RATE_LIMIT_READS must be requests per second (200), a rate such as 200/second "
            "or 1000/minute, or off, not 'fast'",
        ),
        ("OTASHIP_MAX_FIRMWARE_BYTES", "0", "OTASHIP_MAX_FIRMWARE_BYTES must be at least 1, not 0"),
        ("OTASHIP_GC_GRACE", "10", "OTASHIP_GC_GRACE must be at least 60, not 10"),
        ("OTASHIP_REBOOT_LOOP_BOOTS", "0", "OTASHIP_REBOOT_LOOP_BOOTS must be at least 1, not 0"),
    ],
)
@pytest.mark.parametrize("command", [["serve"], ["user", "list"]], ids=["serve", "user-list"])
def test_a_bad_setting_is_one_line_naming_it(
    tmp_path: Path, command: list[str], name: str, value: str, message: str
) -> None:
    code, stdout, stderr = run(tmp_path, command, **{name: value})
    assert (code, stdout, stderr) == (1, "", f"otaship: error: {message}\n")
    assert "secret" not in stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"OTASHIP_LOG_LEVEL": "loud"},
            "OTASHIP_LOG_LEVEL must be one of critical, error, warning, info, debug, trace, not 'loud'",
        ),
        (
            {"OTASHIP_DATA_DIR": "/proc/otaship"},
            "cannot create the database's folder /proc/otaship: No such file or directory; "
            "set OTASHIP_DATA_DIR or OTASHIP_DATABASE_URL",
        ),
    ],
)
def test_what_only_serve_uses_is_one_line_too(
    tmp_path: Path, variables: dict[str, str], message: str
) -> None:
    assert run(tmp_path, ["serve", "--port", "0"], **variables) == (1, "", f"otaship: error: {message}\n")
