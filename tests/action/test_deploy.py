"""`otaship-deploy deploy` against a real receiver (`otaship serve` in a subprocess).

The receiver (the `tenant` of tests/action_fixtures.py) runs on its embedded
defaults (SQLite and a local folder in a temp dir, MQTT off); users and groups
come from the `otaship` CLI. The one test
double is a small HTTP proxy that answers 503 to the first requests and then
forwards to the receiver: a network that fails for a while, which a healthy
receiver cannot be made to do.
"""

from __future__ import annotations

import io
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from otaship.action import exit_codes
from otaship.action.__main__ import main
from tests.action_fixtures import DeployStep, StepRun, Tenant, receiver_env
from tests.esp_image import write_image
from tests.receiver_process import otaship_json

COMMIT = "1111111111111111111111111111111111111111"
OTHER_COMMIT = "2222222222222222222222222222222222222222"


@dataclass(frozen=True)
class Credentials:
    api_key: str
    group: str
    token: str


@pytest.fixture(scope="module")
def pro(tenant: Tenant) -> Credentials:
    group = tenant.group("fleet")
    return Credentials(tenant.api_key, group["id"], group["token"])


@pytest.fixture(scope="module")
def free(tenant: Tenant) -> Credentials:
    user = otaship_json(tenant.env, "user", "create", "free@example.com")
    group = otaship_json(tenant.env, "group", "create", "hobby", "--owner", "free@example.com")
    return Credentials(user["api_key"], group["id"], group["token"])


def new_group(tenant: Tenant, name: str) -> tuple[str, str]:
    group = tenant.group(name)
    return group["id"], group["token"]


def deploy(
    deploy_step: DeployStep,
    url: str,
    api_key: str,
    group: str,
    token: str,
    image: Path,
    version: str,
    commit: str = COMMIT,
    *extra: str,
) -> StepRun:
    env = {"GITHUB_SHA": commit, **receiver_env(url, api_key, group, token)}
    return deploy_step("deploy", "--firmware", str(image), "--version", version, *extra, env=env)


def test_upload_then_an_idempotent_rerun(tmp_path: Path, tenant: Tenant, deploy_step: DeployStep) -> None:
    group, token = new_group(tenant, "rerun")
    image = write_image(tmp_path / "fw.bin", "3.0.0", seed=30)
    first = deploy(deploy_step, tenant.url, tenant.api_key, group, token, image, "v3.0.0")
    assert first.code == exit_codes.OK, first.log
    assert "::notice title=Deployed::3.0.0 deployed" in first.log
    assert "| Deployed | yes |" in first.summary
    [ota] = tenant.otas(group)
    assert (ota["version"], ota["__v"]) == ("3.0.0", 0)

    again = deploy(deploy_step, tenant.url, tenant.api_key, group, token, image, "3.0.0")
    assert again.code == exit_codes.OK, again.log
    assert (
        "nothing was redeployed" in again.log and "## ✅ otaship: `3.0.0` already deployed" in again.summary
    )
    assert [ota["__v"] for ota in tenant.otas(group)] == [0]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad token", "400: Group token is not valid"),
        ("bad key", "401: Unauthorized (check the api-key input"),
        ("unknown group", "404: No such group (check the group input"),
        ("bad group id", "400: Group ID is not valid"),
        ("free plan", "403: Group OTA update is not available in free model"),
    ],
)
def test_a_4xx_is_a_configuration_error_with_the_receiver_message(
    tmp_path: Path,
    tenant: Tenant,
    pro: Credentials,
    free: Credentials,
    deploy_step: DeployStep,
    case: str,
    expected: str,
) -> None:
    image = write_image(tmp_path / "fw.bin", "1.0.0")
    key, group, token = tenant.api_key, pro.group, pro.token
    if case == "bad token":
        token = "x" * 16
    elif case == "bad key":
        key = "osk_not-a-key"
    elif case == "unknown group":
        group = "f" * 24
    elif case == "bad group id":
        group = "not-hex"
    elif case == "free plan":
        key, group, token = free.api_key, free.group, free.token
    result = deploy(deploy_step, tenant.url, key, group, token, image, "1.0.0")
    assert result.code == exit_codes.BAD_INPUT
    assert "::error title=Receiver rejected the deploy::the receiver answered " + expected in result.log
    assert "## ❌ otaship: `1.0.0` failed" in result.summary
    assert "Retrying" not in result.log  # a 4xx is never retried
    # Whatever was wrong, the credentials were masked first and never printed again.
    lines = result.log.splitlines()
    assert lines[0] == f"::add-mask::{key}"
    assert all(key not in line for line in lines[2:])


def test_a_409_from_the_same_commit_is_a_rerun_and_from_another_is_a_moved_tag(
    tmp_path: Path, tenant: Tenant, deploy_step: DeployStep
) -> None:
    group, token = new_group(tenant, "conflict")
    first = write_image(tmp_path / "a.bin", "1.1.0", seed=1)
    rebuilt = write_image(tmp_path / "b.bin", "1.1.0", seed=2)  # a rebuild embeds another date: other bytes
    assert (
        deploy(deploy_step, tenant.url, tenant.api_key, group, token, first, "1.1.0", COMMIT).code
        == exit_codes.OK
    )

    rerun = deploy(deploy_step, tenant.url, tenant.api_key, group, token, rebuilt, "1.1.0", COMMIT)
    assert rerun.code == exit_codes.OK, rerun.log
    assert (
        "::warning title=Already deployed::version 1.1.0 is already deployed from this commit (111111111111)"
        in rerun.log
    )
    assert "not redeployed" in rerun.summary

    moved = deploy(deploy_step, tenant.url, tenant.api_key, group, token, rebuilt, "1.1.0", OTHER_COMMIT)
    assert moved.code == exit_codes.DEPLOY_FAILED
    assert (
        "::error title=Version already deployed::version 1.1.0 is already deployed to this group from commit 111111111111"
        in moved.log
    )
    assert "bump the version (for example to v1.1.1)" in moved.log
    [ota] = tenant.otas(group)
    assert ota["__v"] == 0  # neither attempt replaced the deployed image


def test_an_invalid_image_is_refused_before_uploading(
    tmp_path: Path, tenant: Tenant, pro: Credentials, deploy_step: DeployStep
) -> None:
    junk = tmp_path / "firmware.bin"
    junk.write_bytes(b"\x00" * 4096)
    result = deploy(deploy_step, tenant.url, tenant.api_key, pro.group, pro.token, junk, "1.0.0")
    assert result.code == exit_codes.BAD_INPUT
    assert "::error title=Invalid image::" in result.log and "deploying" not in result.log


class FlakyProxy(ThreadingHTTPServer):
    """Answers 503 to the first `failures` requests, then forwards to the receiver."""

    daemon_threads = True

    def __init__(self, upstream: str, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), FlakyHandler)
        self.upstream = upstream
        self.failures = failures
        self.seen = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FlakyHandler(BaseHTTPRequestHandler):
    server: FlakyProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        with self.server.lock:
            self.server.seen += 1
            fail = self.server.seen <= self.server.failures
        if fail:
            payload = b'{"message": "Service temporarily unavailable"}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {
            key: value for key, value in self.headers.items() if key.lower() not in {"host", "connection"}
        }
        response = httpx.request(
            self.command, self.server.upstream + self.path, headers=headers, content=body
        )
        self.send_response(response.status_code)
        for key, value in response.headers.items():
            if key.lower() not in {"transfer-encoding", "connection", "content-length", "content-encoding"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.content)))
        self.end_headers()
        self.wfile.write(response.content)

    do_GET = do_POST = _forward


def test_a_5xx_is_retried_until_the_receiver_answers(
    tmp_path: Path, tenant: Tenant, deploy_step: DeployStep
) -> None:
    group, token = new_group(tenant, "flaky")
    proxy = FlakyProxy(tenant.url, failures=2)
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        image = write_image(tmp_path / "fw.bin", "4.0.0", seed=40)
        result = deploy(deploy_step, proxy.url, tenant.api_key, group, token, image, "4.0.0")
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert result.code == exit_codes.OK, result.log
    assert (
        result.log.count(
            "::warning title=Retrying::the receiver answered 503 (Service temporarily unavailable)"
        )
        == 2
    )
    assert proxy.seen == 3
    assert [ota["version"] for ota in tenant.otas(group)] == ["4.0.0"]


def test_deploy_builds_the_project_itself_outside_github(tmp_path: Path, tenant: Tenant) -> None:
    """The GitLab CI / laptop path: no --firmware, no GITHUB_* files, a plain log.

    `pio` is the stand-in from tests/action/fake_pio: PlatformIO cannot download its
    toolchains here. It writes a real esptool-built image.
    """
    group, token = new_group(tenant, "gitlab")
    project = tmp_path / "project"
    project.mkdir()
    (project / "platformio.ini").write_text(
        "[env:board]\nplatform = espressif32\ncustom_app_version = 5.0.0\ncustom_image_seed = 50\n"
    )
    out = io.StringIO()
    environ = {
        "PATH": f"{Path(__file__).parent / 'fake_pio'}:/usr/bin:/bin",
        "FAKE_PIO_PYTHON": sys.executable,
        "CI_COMMIT_TAG": "v5.0.0",
        "CI_COMMIT_SHA": COMMIT,
        **receiver_env(tenant.url, tenant.api_key, group, token),
        "OTASHIP_PROJECT_DIR": str(project),
    }
    code = main(["deploy"], environ, out)
    log = out.getvalue()
    assert code == exit_codes.OK, log
    assert "::" not in log  # no workflow commands outside GitHub Actions
    assert "--- PlatformIO build (board)" in log and "notice: Deployed: 5.0.0 deployed" in log
    assert tenant.api_key not in log
    [ota] = tenant.otas(group)
    assert (ota["version"], ota["commit"]) == ("5.0.0", COMMIT)


def test_missing_inputs_are_a_usage_error_naming_input_flag_and_variable(tmp_path: Path) -> None:
    out = io.StringIO()
    with pytest.raises(SystemExit) as caught:
        main(
            ["deploy", "--firmware", "x.bin"],
            {"GITHUB_ACTIONS": "true", "OTASHIP_API_KEY": "osk_secret"},
            out,
        )
    assert caught.value.code == exit_codes.BAD_INPUT
    log = out.getvalue()
    assert log.startswith("::add-mask::osk_secret\n")
    assert "missing receiver URL (input receiver-url, --receiver-url, OTASHIP_RECEIVER_URL)" in log
    assert "group token (input group-token, --group-token, OTASHIP_GROUP_TOKEN)" in log
