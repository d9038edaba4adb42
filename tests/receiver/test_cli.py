"""The admin CLI's contract, and `otaship serve` as a subprocess sharing its database."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from otaship.receiver.app import create_app
from otaship.receiver.cli import cli
from otaship.receiver.settings import Settings
from tests.conftest import Fleet
from tests.esp_image import build_image
from tests.receiver.http.management.test_ota import FREE_PLAN
from tests.receiver_process import OTASHIP, SERVERS, ReceiverProcess, migrated_env, otaship, otaship_json


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return migrated_env(tmp_path / "data")


def test_user_create_prints_one_json_object(env: dict[str, str]) -> None:
    result = otaship(env, "user", "create", "ada@example.com", "--plan", "pro")
    assert result.stdout.count("\n") == 1
    user = otaship_json(env, "user", "create", "bob@example.com")
    assert set(user) == {"id", "email", "plan", "api_key", "mqtt_user", "mqtt_password"}
    assert re.fullmatch(r"[0-9a-f]{24}", user["id"])
    assert user["email"] == "bob@example.com"
    assert user["plan"] == "free"
    users = otaship_json(env, "user", "list")
    assert [u["email"] for u in users] == ["ada@example.com", "bob@example.com"]
    # Secrets are shown once, never listed.
    assert all("api_key" not in u and "mqtt_password" not in u for u in users)


def test_group_and_device_create(env: dict[str, str]) -> None:
    otaship(env, "user", "create", "ada@example.com", "--plan", "pro")
    group = otaship_json(env, "group", "create", "fleet", "--owner", "ada@example.com", "--chip", "esp32")
    assert set(group) == {"id", "name", "token", "owner", "parent", "chip", "anti_rollback"}
    assert re.fullmatch(r"[0-9a-f]{24}", group["id"])
    assert re.fullmatch(r"[A-Za-z0-9]{16}", group["token"])
    assert (group["name"], group["owner"], group["parent"], group["chip"]) == (
        "fleet",
        "ada@example.com",
        None,
        "esp32",
    )
    canary = otaship_json(
        env, "group", "create", "canary", "--owner", "ada@example.com", "--parent", group["id"]
    )
    assert canary["parent"] == group["id"]
    assert canary["chip"] == "esp32"  # inherited

    device = otaship_json(
        env, "device", "create", "kitchen", "--group", canary["id"], "--firmware-version", "1.0.0"
    )
    assert set(device) == {"id", "name", "group", "firmware_version"}
    assert (device["name"], device["group"], device["firmware_version"]) == ("kitchen", canary["id"], "1.0.0")
    assert [d["id"] for d in otaship_json(env, "device", "list", "--group", canary["id"])] == [device["id"]]
    assert [g["id"] for g in otaship_json(env, "group", "list")] == [group["id"], canary["id"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("user", "create", "ada@example.com"), "a user with email ada@example.com already exists"),
        (("group", "create", "x", "--owner", "nobody@example.com"), "no user with email nobody@example.com"),
        (
            ("group", "create", "x", "--owner", "ada@example.com", "--parent", "0" * 24),
            f"no group {'0' * 24} owned by ada@example.com",
        ),
        (("device", "create", "d", "--group", "0" * 24), f"no group {'0' * 24}"),
        (("user", "key", "nobody@example.com"), "no user with email nobody@example.com"),
        (("user", "plan", "nobody@example.com", "pro"), "no user with email nobody@example.com"),
    ],
)
def test_errors_are_one_line_and_non_zero(env: dict[str, str], args: tuple[str, ...], message: str) -> None:
    otaship(env, "user", "create", "ada@example.com")
    result = otaship(env, *args, check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"otaship: error: {message}\n"


def no_database_line(path: Path) -> str:
    return (
        f"otaship: error: no database at {path}: run otaship from the folder where otaship serve runs "
        "(or set OTASHIP_DATA_DIR or OTASHIP_DATABASE_URL as for serve); "
        "otaship serve or otaship migrate creates a new one\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("user", "list"),
        ("user", "create", "ada@example.com", "--plan", "pro"),
        ("user", "key", "ada@example.com"),
        ("user", "plan", "ada@example.com", "pro"),
        ("group", "list"),
        ("group", "create", "fleet", "--owner", "ada@example.com"),
        ("device", "list"),
        ("device", "create", "d", "--group", "0" * 24),
        ("gc", "--dry-run"),
        (
            "simulate",
            "--register",
            "--group",
            "0" * 24,
            "--token",
            "t" * 16,
            "--mqtt-url",
            "mqtt://u:p@127.0.0.1:1",
            "--server",
            "http://127.0.0.1:1",
        ),
    ],
)
def test_an_admin_command_never_creates_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    # Run from another folder than the server's: the default data dir is not there.
    monkeypatch.chdir(tmp_path)
    env = {"OTASHIP_MQTT_URL": "none", "OTASHIP_DATA_DIR": "", "OTASHIP_DATABASE_URL": ""}
    result = CliRunner().invoke(cli, args, env=env, prog_name="otaship")
    expected = no_database_line(tmp_path.resolve() / "otaship-data" / "otaship.db")
    assert result.stdout == ""
    # simulate's errors are usage errors (2), the admin commands' failures (1).
    assert (result.exit_code, result.stderr) == (2 if args[0] == "simulate" else 1, expected)
    assert list(tmp_path.iterdir()) == []


def test_a_database_url_to_a_missing_file_is_named_as_given(tmp_path: Path) -> None:
    missing = tmp_path / "moved" / "otaship.db"
    env = {"OTASHIP_MQTT_URL": "none", "OTASHIP_DATABASE_URL": f"sqlite:///{missing}"}
    result = CliRunner().invoke(cli, ["user", "list"], env=env, prog_name="otaship")
    assert (result.exit_code, result.stderr) == (1, no_database_line(missing))
    assert not missing.parent.exists()
    # migrate is the way to a new one, and the command then works.
    assert CliRunner().invoke(cli, ["migrate"], env=env).exit_code == 0
    listed = CliRunner().invoke(cli, ["user", "list"], env=env, prog_name="otaship")
    assert (listed.exit_code, listed.stdout) == (0, "[]\n")


def test_user_plan_changes_the_plan_in_one_line(env: dict[str, str]) -> None:
    created = otaship_json(env, "user", "create", "ada@example.com")
    result = otaship(env, "user", "plan", "ADA@example.com", "pro")
    assert result.stderr == ""
    assert result.stdout == (
        f'{{"id": "{created["id"]}", "email": "ada@example.com", "plan": "pro", '
        f'"mqtt_user": "{created["mqtt_user"]}"}}\n'
    )
    assert [u["plan"] for u in otaship_json(env, "user", "list")] == ["pro"]
    otaship(env, "user", "plan", "ada@example.com", "free")
    assert [u["plan"] for u in otaship_json(env, "user", "list")] == ["free"]


def test_a_free_user_moved_to_pro_may_deploy_at_once(
    client: TestClient, fleet: Fleet, settings: Settings
) -> None:
    owner = fleet.owner(plan="free")
    group = fleet.group(owner)

    def deploy() -> httpx.Response:
        response: httpx.Response = client.post(
            "/v1/ota/group",
            headers=owner.headers,
            data={"group": group.id, "token": group.token, "version": "1.0.0"},
            files={"firmware": ("firmware.bin", build_image("1.0.0"), "application/octet-stream")},
        )
        return response

    refused = deploy()
    assert refused.status_code == 403
    assert refused.json() == {"message": FREE_PLAN}
    env = {"OTASHIP_DATABASE_URL": settings.resolved_database_url, "OTASHIP_DATA_DIR": str(settings.data_dir)}
    result = CliRunner().invoke(cli, ["user", "plan", owner.user.email, "pro"], env=env, prog_name="otaship")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and '"plan": "pro"' in result.stdout
    accepted = deploy()
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["deployed"] is True


def test_a_parent_of_another_owner_is_refused(env: dict[str, str]) -> None:
    otaship(env, "user", "create", "ada@example.com")
    otaship(env, "user", "create", "eve@example.com")
    adas = otaship_json(env, "group", "create", "fleet", "--owner", "ada@example.com")
    result = otaship(
        env, "group", "create", "x", "--owner", "eve@example.com", "--parent", adas["id"], check=False
    )
    assert result.returncode == 1
    assert "owned by eve@example.com" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "Missing command."),
        (("user",), "Missing command."),
        (("user", "create"), "Missing argument 'EMAIL'."),
        (
            ("user", "create", "ada@example.com", "--plan", "gold"),
            "Invalid value for '--plan': 'gold' is not one of 'free', 'pro'.",
        ),
        (("group", "create", "fleet"), "Missing option '--owner'."),
        (
            ("group", "create", "fleet", "--owner", "ada@example.com", "--chip", "esp8266"),
            "Invalid value for '--chip': 'esp8266' is not one of",
        ),
        (("serve", "--port", "http"), "Invalid value for '--port': 'http' is not a valid integer."),
        # Digits only, as always: no sign, blank or underscore.
        (("gc", "--grace", "+5"), "argument --grace: must be a whole number of seconds, not '+5'"),
        (("gc", "--grace", " 5"), "argument --grace: must be a whole number of seconds, not ' 5'"),
        (("gc", "--grace", "1_0"), "argument --grace: must be a whole number of seconds, not '1_0'"),
        (("device", "list", "--colour"), "No such option '--colour'."),
        (
            ("user", "plan", "ada@example.com", "gold"),
            "Invalid value for '{free|pro}': 'gold' is not one of 'free', 'pro'.",
        ),
        (("user", "plan"), "Missing argument 'EMAIL'."),
    ],
)
def test_usage_errors_exit_2_naming_what_is_wrong(
    env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    result = CliRunner().invoke(cli, args, env=env, prog_name="otaship")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Usage: otaship")
    assert result.stderr.splitlines()[-1].startswith(f"Error: {message}")


@pytest.fixture(params=SERVERS)
def receiver(request: pytest.FixtureRequest, env: dict[str, str]) -> Iterator[ReceiverProcess]:
    process = ReceiverProcess({**env, "OTASHIP_SERVER": request.param}).start()
    yield process
    process.stop()


def test_serve_and_cli_share_the_database(
    receiver: ReceiverProcess, env: dict[str, str], tmp_path: Path
) -> None:
    # Everything the CLI creates while `serve` runs works at once.
    user = otaship_json(env, "user", "create", "ada@example.com", "--plan", "pro")
    group = otaship_json(env, "group", "create", "fleet", "--owner", "ada@example.com")
    headers = {"Authorization": f"Bearer {user['api_key']}"}
    image = build_image("1.0.0")
    response = httpx.post(
        f"{receiver.url}/v1/ota/group",
        headers=headers,
        data={"group": group["id"], "token": group["token"], "version": "1.0.0"},
        files={"firmware": ("firmware.bin", image)},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    listing = httpx.get(f"{receiver.url}/v1/ota/group", headers=headers).json()
    assert [o["version"] for o in listing["otas"]] == ["1.0.0"]
    assert httpx.get(f"{receiver.url}/v1/ota/group/latest/{group['id']}").json() == {"ver": "1.0.0"}

    # A key rotated with the CLI stops working on the running server.
    new = otaship_json(env, "user", "key", "ada@example.com")
    assert httpx.get(f"{receiver.url}/v1/ota/group", headers=headers).status_code == 401
    assert (
        httpx.get(
            f"{receiver.url}/v1/ota/group", headers={"Authorization": f"Bearer {new['api_key']}"}
        ).status_code
        == 200
    )


def test_a_download_in_progress_finishes_with_the_image_it_started(
    receiver: ReceiverProcess, env: dict[str, str]
) -> None:
    user = otaship_json(env, "user", "create", "ada@example.com", "--plan", "pro")
    group = otaship_json(env, "group", "create", "fleet", "--owner", "ada@example.com")
    headers = {"Authorization": f"Bearer {user['api_key']}"}
    old, new = build_image("1.0.0", code_size=1_500_000), build_image("2.0.0", code_size=1_500_000)
    for version, image in (("1.0.0", old),):
        httpx.post(
            f"{receiver.url}/v1/ota/group",
            headers=headers,
            data={"group": group["id"], "token": group["token"], "version": version},
            files={"firmware": ("firmware.bin", image)},
            timeout=30,
        ).raise_for_status()
    url = f"{receiver.url}/v1/ota/group/download/{group['id']}{group['token']}"
    with httpx.stream("GET", url, timeout=30) as download:
        chunks = download.iter_raw(4096)
        received = next(chunks)
        httpx.post(
            f"{receiver.url}/v1/ota/group",
            headers=headers,
            data={"group": group["id"], "token": group["token"], "version": "2.0.0"},
            files={"firmware": ("firmware.bin", new)},
            timeout=30,
        ).raise_for_status()
        received += b"".join(chunks)
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(old).hexdigest()
    assert httpx.get(url, timeout=30).content == new


@pytest.mark.parametrize("server", SERVERS)
def test_serve_honours_otaship_port(env: dict[str, str], server: str) -> None:
    process = ReceiverProcess({**env, "OTASHIP_SERVER": server}).start()
    try:
        assert httpx.get(f"http://127.0.0.1:{process.port}/v1/ota/group").status_code == 401
    finally:
        process.stop()


def test_github_bind_list_and_unbind(tmp_path: Path) -> None:
    env = migrated_env(
        tmp_path / "data", OTASHIP_SECRET_KEY="k" * 40, OTASHIP_PUBLIC_URL="https://ota.example.com"
    )
    otaship(env, "user", "create", "ada@example.com", "--plan", "pro")
    group = otaship_json(env, "group", "create", "fleet", "--owner", "ada@example.com")
    base = (
        "github",
        "bind",
        "--owner",
        "ada@example.com",
        "--repo",
        "octo-org/thermostat",
        "--group",
        group["id"],
    )
    unset = otaship({**env, "GH_TOKEN_UNSET": ""}, *base, "--token-env", "GH_TOKEN_UNSET", check=False)
    assert (unset.returncode, unset.stderr) == (
        1,
        "otaship: error: --token-env GH_TOKEN_UNSET: that environment variable is not set\n",
    )
    token = "ghp_" + "c" * 36
    bound = otaship_json(
        {**env, "GH_TOKEN": token}, *base, "--asset", "firmware*.bin", "--token-env", "GH_TOKEN"
    )
    assert bound["secret"].startswith("oshk_")
    assert bound["webhook_url"] == f"https://ota.example.com/v1/webhooks/github?binding={bound['id']}"
    assert (bound["asset"], bound["token"], bound["prereleases"]) == ("firmware*.bin", True, False)
    listed = otaship_json(env, "github", "list")
    # The secret is shown once; the token never.
    assert listed == [{k: v for k, v in bound.items() if k != "secret"}]
    assert token not in json.dumps(listed)
    assert otaship_json(env, "github", "unbind", bound["id"], "--owner", "ada@example.com") == {
        "id": bound["id"],
        "removed": True,
    }
    again = otaship(env, "github", "unbind", bound["id"], "--owner", "ada@example.com", check=False)
    assert (again.returncode, again.stderr) == (
        1,
        f"otaship: error: no GitHub binding {bound['id']} owned by ada@example.com\n",
    )
    unkeyed = otaship({**env, "OTASHIP_SECRET_KEY": ""}, *base, check=False)
    assert (unkeyed.returncode, unkeyed.stderr) == (
        1,
        "otaship: error: set OTASHIP_SECRET_KEY (at least 32 characters) to use GitHub bindings\n",
    )


def test_user_password_reads_stdin_and_signs_in(env: dict[str, str], tmp_path: Path) -> None:
    created = otaship_json(env, "user", "create", "ada@example.com")

    def set_password(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*OTASHIP, "user", "password", "ada@example.com"],
            env=env,
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
        )

    short = set_password("short\n")
    assert (short.returncode, short.stdout) == (1, "")
    assert short.stderr == "otaship: error: the password is too short: use at least 10 characters\n"
    done = set_password("a long enough password\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f'{{"id": "{created["id"]}", "email": "ada@example.com", "password": "set"}}\n'
    settings = Settings.from_env(env)
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/v1/auth/login", json={"email": "ada@example.com", "password": "a long enough password"}
        )
        assert answer.status_code == 200
        assert answer.json()["user"]["id"] == created["id"]
