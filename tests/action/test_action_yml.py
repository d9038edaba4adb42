"""action.yml itself: linted, then executed step by step the way the runner does.

PlatformIO cannot download its toolchains on this machine, so `pio` on PATH is
a stand-in (tests/action/fake_pio) that answers `pio project config --json-output` from
the project's platformio.ini and makes `pio run` write a real ESP32 image, built
by esptool, into `.pio/build/<env>/`. Everything after it is real: the action's
Python, the image check and an `otaship serve` receiver in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from otaship.firmware.signing_keys import Scheme, load_public_key
from tests.action_fixtures import Tenant
from tests.action_runner import ActionRun, parse_file_commands, python_stand_in, run_action
from tests.esp_image import build_image, write_image
from tests.signing import private_pem, public_pem, sign

REPO = Path(__file__).resolve().parents[2]
ACTION_YML = REPO / "action.yml"
FAKE_PIO = Path(__file__).resolve().parent / "fake_pio"
SHA = "0123456789abcdef0123456789abcdef01234567"


def action() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ACTION_YML.read_text())
    return loaded


# --- lint -------------------------------------------------------------------


def test_no_expression_is_pasted_into_a_run_block() -> None:
    """Inputs reach scripts through env: only; `${{ inputs.x }}` in a script is shell injection."""
    for step in action()["runs"]["steps"]:
        if "run" in step:
            assert "${{ inputs." not in step["run"], step["name"]
            assert "${{" not in step["run"], f"step {step['name']!r} pastes an expression into its script"


def test_the_lint_catches_an_input_in_a_run_block() -> None:
    bad = yaml.safe_load("steps:\n  - run: echo ${{ inputs.version }}\n")
    assert any("${{ inputs." in step.get("run", "") for step in bad["steps"])


def test_third_party_actions_are_pinned_by_full_commit_sha_with_a_version_comment() -> None:
    uses_lines = [
        line.strip() for line in ACTION_YML.read_text().splitlines() if line.strip().startswith("uses:")
    ]
    assert len(uses_lines) == 2
    for line in uses_lines:
        assert re.fullmatch(r"uses: [\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+", line), line
    assert any("actions/setup-python@" in line for line in uses_lines)
    assert any("actions/cache@" in line for line in uses_lines)


def test_metadata_inputs_and_outputs() -> None:
    definition = action()
    assert {"name", "description", "author", "branding"} <= set(definition)
    inputs = definition["inputs"]
    assert set(inputs) == {
        "receiver-url",
        "api-key",
        "group",
        "group-token",
        "version",
        "project-dir",
        "environment",
        "firmware",
        "signing-key",
        "signing-key-2",
        "verify-key",
        "canary",
        "waves",
        "max-failure-rate",
        "min-devices",
        "rollback",
        "canary-timeout",
        "success-threshold",
        "error-threshold",
        "soak",
        "wait",
        "timeout",
        "github-deployment",
        "github-token",
        "python-version",
    }
    assert all(spec.get("description") for spec in inputs.values())
    assert {name for name, spec in inputs.items() if spec.get("required")} == {
        "receiver-url",
        "api-key",
        "group",
        "group-token",
    }
    assert (
        inputs["wait"]["default"] == "true"
        and inputs["timeout"]["default"] == "3600"
        and inputs["project-dir"]["default"] == "."
    )
    assert set(definition["outputs"]) == {
        "version",
        "firmware-path",
        "sha256",
        "size",
        "rollout-id",
        "rollout-state",
    }
    cache = next(step for step in definition["runs"]["steps"] if "actions/cache@" in step.get("uses", ""))
    assert cache["with"]["path"].split() == ["~/.cache/pip", "~/.platformio/.cache"]


def test_the_masks_come_first() -> None:
    first = action()["runs"]["steps"][0]
    assert "add-mask" in first["run"] and set(first["env"]) == {
        "OTASHIP_API_KEY",
        "OTASHIP_GROUP_TOKEN",
        "OTASHIP_SIGNING_KEY",
        "OTASHIP_SIGNING_KEY_2",
        "OTASHIP_GITHUB_TOKEN",
    }


def test_the_runner_emulation_reads_both_file_command_forms() -> None:
    assert parse_file_commands("a=1\nb<<EOF\nx\ny=z\nEOF\nc=\n") == {"a": "1", "b": "x\ny=z", "c": ""}


# --- executed -------------------------------------------------------------------


@dataclass
class Target:
    """The receiver (its owner's key) and the group the action deploys to."""

    tenant: Tenant
    group: str
    token: str

    @property
    def api_key(self) -> str:
        return self.tenant.api_key

    def inputs(self, **extra: str) -> dict[str, str]:
        return {
            "receiver-url": self.tenant.url,
            "api-key": self.api_key,
            "group": self.group,
            "group-token": self.token,
            **extra,
        }

    def otas(self) -> list[dict[str, Any]]:
        return self.tenant.otas(self.group)


@pytest.fixture(scope="module")
def target(tenant: Tenant) -> Target:
    group = tenant.group("fleet")
    return Target(tenant, group["id"], group["token"])


@dataclass
class Job:
    workspace: Path
    env: dict[str, str]
    runner_temp: Path
    pip_log: Path
    pio_log: Path

    def run(self, inputs: dict[str, str]) -> ActionRun:
        return run_action(
            REPO, inputs=inputs, workspace=self.workspace, env=self.env, runner_temp=self.runner_temp
        )

    def pio_calls(self) -> list[list[str]]:
        if not self.pio_log.exists():
            return []
        return [json.loads(line) for line in self.pio_log.read_text().splitlines()]


@pytest.fixture
def job(tmp_path: Path) -> Job:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "platformio.ini").write_text(
        "[platformio]\ndefault_envs = esp32dev\n\n"
        "[env:esp32dev]\nplatform = espressif32\nboard = esp32dev\nframework = arduino\ncustom_app_version = 1.4.0\n\n"
        "[env:debug]\nplatform = espressif32\nboard = esp32dev\n"
    )
    runner_temp = tmp_path / "runner_temp"
    runner_temp.mkdir()
    pip_log, pio_log = tmp_path / "pip.log", tmp_path / "pio.log"
    python_dir = python_stand_in(tmp_path / "setup-python", pip_log, FAKE_PIO / "pio")
    env = {
        # No pio yet: as on a fresh runner, it arrives with `pip install platformio`.
        "PATH": f"{python_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "FAKE_PIO_PYTHON": sys.executable,
        "FAKE_PIO_LOG": str(pio_log),
        "GITHUB_REF": "refs/tags/v1.4.0",
        "GITHUB_REF_NAME": "v1.4.0",
        "GITHUB_REF_TYPE": "tag",
        "GITHUB_SHA": SHA,
        "GITHUB_REPOSITORY": "acme/thermostat",
    }
    return Job(workspace, env, runner_temp, pip_log, pio_log)


def test_a_tag_push_builds_deploys_and_reports(job: Job, target: Target) -> None:
    run = job.run(target.inputs())
    assert run.failed is None, run.failed and (run.failed.stdout + run.failed.stderr)
    assert [step.skipped for step in run.steps] == [False, True, True, False, False, False]

    image = Path(run.outputs["firmware-path"])
    assert image.is_absolute() and image == job.workspace / ".pio" / "build" / "esp32dev" / "firmware.bin"
    data = image.read_bytes()
    assert run.outputs == {
        "version": "1.4.0",
        "firmware-path": str(image),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": str(len(data)),
        "rollout-id": "",
        "rollout-state": "",
    }
    assert job.pio_calls() == [
        ["project", "config", "-d", ".", "--json-output"],
        ["run", "-d", ".", "-e", "esp32dev"],
    ]
    pip = job.pip_log.read_text().splitlines()
    assert pip == [
        "-m pip install --disable-pip-version-check platformio",
        f"-m pip install --disable-pip-version-check {REPO}",
    ]

    # The secrets are masked by the first step, before anything else prints.
    first = run.steps[0].stdout.splitlines()
    assert first == [f"::add-mask::{target.api_key}", f"::add-mask::{target.token}"]
    # Later steps may mask again (the CLI masks too, for use outside this action).
    later = "\n".join(
        line
        for step in run.steps[1:]
        for line in (step.stdout + step.stderr).splitlines()
        if not line.startswith("::add-mask::")
    )
    assert target.api_key not in later and target.token not in later

    build_log = run.step("build").stdout
    assert "::group::PlatformIO build (esp32dev)" in build_log and "[SUCCESS]" in build_log
    assert "::notice title=Deployed::1.4.0 deployed to group" in run.step("deploy").stdout

    for expected in (
        "## ✅ otaship: `1.4.0` deployed",
        "| Version | 1.4.0 |",
        f"| Size | {len(data):,} bytes |",
        f"`{hashlib.sha256(data).hexdigest()}`",
        f"| Group | {target.group} |",
        f"| Commit | {SHA} |",
    ):
        assert expected in run.summary
    deployed = [ota for ota in target.otas() if ota["group"] == target.group]
    assert [ota["version"] for ota in deployed] == ["1.4.0"]

    # A CI re-run of the same commit rebuilds and succeeds without deploying again.
    again = job.run(target.inputs())
    assert again.failed is None
    assert "already deployed" in again.summary
    assert [ota["__v"] for ota in target.otas() if ota["group"] == target.group] == [deployed[0]["__v"]]


def test_a_bad_tag_fails_before_building(job: Job, target: Target) -> None:
    job.env.update({"GITHUB_REF": "refs/tags/release-7", "GITHUB_REF_NAME": "release-7"})
    run = job.run(target.inputs())
    assert run.failed is not None and run.failed.id == "build" and run.failed.returncode == 2
    assert (
        "::error title=No valid version::tag 'release-7' is not a semantic version: expected MAJOR.MINOR.PATCH"
        in run.failed.stdout
    )
    assert job.pio_calls() == []
    assert "## ❌ otaship: firmware failed" in run.summary and "release-7" in run.summary
    assert run.outputs["version"] == "" and run.outputs["rollout-state"] == ""


def test_a_branch_push_with_an_explicit_version_and_a_prebuilt_image(
    job: Job, target: Target, tmp_path: Path
) -> None:
    job.env.update({"GITHUB_REF": "refs/heads/main", "GITHUB_REF_NAME": "main", "GITHUB_REF_TYPE": "branch"})
    image = write_image(tmp_path / "prebuilt.bin", "2.0.0-rc.1", seed=5)
    run = job.run(target.inputs(version="v2.0.0-rc.1", firmware=str(image)))
    assert run.failed is None, run.failed and run.failed.stdout
    assert run.outputs["version"] == "2.0.0-rc.1" and run.outputs["firmware-path"] == str(image)
    assert job.pio_calls() == []
    assert "platformio" not in job.pip_log.read_text()


def test_a_runner_that_has_platformio_keeps_it(job: Job, target: Target) -> None:
    job.env["PATH"] = f"{FAKE_PIO}:{job.env['PATH']}"
    job.env.update({"GITHUB_REF_NAME": "v1.4.2", "GITHUB_REF": "refs/tags/v1.4.2"})
    run = job.run(target.inputs())
    assert run.failed is None, run.failed and run.failed.stdout
    assert "platformio" not in job.pip_log.read_text()
    assert len(job.pio_calls()) == 2


def test_several_envs_without_a_choice_fail_listing_them(job: Job, target: Target) -> None:
    ini = job.workspace / "platformio.ini"
    ini.write_text(ini.read_text().replace("default_envs = esp32dev\n", ""))
    run = job.run(target.inputs())
    assert run.failed is not None and run.failed.id == "build" and run.failed.returncode == 2
    assert "several envs (esp32dev, debug)" in run.failed.stdout and "job matrix" in run.failed.stdout
    assert job.pio_calls() == [["project", "config", "-d", ".", "--json-output"]]


def test_a_failed_build_is_folded_and_summarised(job: Job, target: Target) -> None:
    ini = job.workspace / "platformio.ini"
    ini.write_text(ini.read_text() + "custom_fail = yes\n")
    run = job.run(target.inputs(environment="debug"))
    assert run.failed is not None and run.failed.id == "build" and run.failed.returncode == 1
    log = run.failed.stdout
    assert (
        log.index("::group::PlatformIO build (debug)")
        < log.index("error: 'oops'")
        < log.index("::endgroup::")
    )
    assert "::error title=Build failed::`pio run -e debug` failed with exit code 1" in log
    assert "## ❌ otaship: `1.4.0` failed" in run.summary


def test_a_custom_build_dir_and_progname_are_found(job: Job, target: Target, tmp_path: Path) -> None:
    job.env.update(
        {"PLATFORMIO_BUILD_DIR": str(tmp_path / "elsewhere"), "FAKE_PIO_PROGNAME": "thermostat_1.4.0"}
    )
    job.env.update({"GITHUB_REF_NAME": "v1.4.1", "GITHUB_REF": "refs/tags/v1.4.1"})
    ini = job.workspace / "platformio.ini"
    ini.write_text(
        ini.read_text().replace(
            "custom_app_version = 1.4.0", "custom_app_version = 1.4.0\ncustom_image_seed = 2"
        )
    )
    run = job.run(target.inputs())
    assert run.failed is None, run.failed and run.failed.stdout
    assert run.outputs["firmware-path"] == str(tmp_path / "elsewhere" / "esp32dev" / "thermostat_1.4.0.bin")
    # The image says 1.4.0 but the tag says 1.4.1: a warning, not a failure.
    assert "::warning title=Version mismatch::the image's app descriptor says version '1.4.0'" in run.stdout
    assert run.outputs["version"] == "1.4.1"


def test_an_input_cannot_become_shell_code(job: Job, target: Target) -> None:
    marker = job.workspace / "pwned"
    run = job.run(target.inputs(version=f'1.0.0"; touch {marker}; echo "'))
    assert run.failed is not None and run.failed.returncode == 2
    assert not marker.exists()


# --- signing ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_target(tenant: Tenant) -> Target:
    """A group of its own with a signing key: every deploy to it must be signed."""
    group = tenant.group("signed")
    public = public_pem(private_pem(Scheme.RSA_3072, "ci")).decode()
    response = httpx.post(
        f"{tenant.url}/v1/groups/{group['id']}/keys", json={"public_key": public}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    return Target(tenant, group["id"], group["token"])


def test_the_action_signs_with_a_key_from_a_secret_and_never_prints_it(
    job: Job, signed_target: Target, tmp_path: Path
) -> None:
    private = private_pem(Scheme.RSA_3072, "ci")
    digest = load_public_key(public_pem(private)).digest
    image = write_image(tmp_path / "app.bin", "1.5.0", seed=7)
    job.env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    run = job.run(
        signed_target.inputs(version="1.5.0", firmware=str(image), **{"signing-key": private.decode()})
    )
    assert run.failed is None, run.failed and (run.failed.stdout + run.failed.stderr)

    signed = Path(run.outputs["firmware-path"])
    assert signed == tmp_path / "app-signed.bin"
    assert run.outputs["sha256"] == hashlib.sha256(signed.read_bytes()).hexdigest()
    (ota,) = signed_target.otas()
    assert (ota["version"], ota["signed"], ota["signed_by"], ota["sha256"]) == (
        "1.5.0",
        True,
        digest,
        run.outputs["sha256"],
    )
    assert f"| Signed by | key `{digest}` |" in run.summary
    assert f"| Receiver verified | key `{digest}` |" in run.summary
    # The key file existed only while espsecure read it.
    assert list((tmp_path / "tmp").iterdir()) == []

    # Every line of the key is masked by the first step; the runner consumes those
    # commands. Anywhere else in the whole output, line by line: no line of the key.
    key_lines = [line for line in private.decode().splitlines() if line.strip()]
    masks = {line.removeprefix("::add-mask::") for line in run.steps[0].stdout.splitlines()}
    assert set(key_lines) <= masks
    everything = [
        line
        for text in (*(step.stdout + step.stderr for step in run.steps), run.summary, *run.outputs.values())
        for line in text.splitlines()
        if not line.startswith("::add-mask::")
    ]
    hits = [line for line in everything for key_line in key_lines if key_line in line]
    assert hits == []


def test_two_signing_keys_during_a_rotation(job: Job, signed_target: Target, tmp_path: Path) -> None:
    keys = [private_pem(Scheme.RSA_3072, "ci"), private_pem(Scheme.RSA_3072, "next")]
    digests = [load_public_key(public_pem(key)).digest for key in keys]
    inputs = {"signing-key": keys[0].decode(), "signing-key-2": keys[1].decode()}
    # An ESP32 reads only the first block: the action says so rather than upload a useless second one.
    esp32 = write_image(tmp_path / "app.bin", "1.6.0", seed=8)
    run = job.run(signed_target.inputs(version="1.6.0", firmware=str(esp32), **inputs))
    assert run.failed is not None and run.failed.id == "build" and run.failed.returncode == 2
    assert (
        f"esp32 reads only the first signature block, which is by key {digests[0]}: it cannot take a "
        "second key for a rotation"
    ) in run.failed.stdout
    image = write_image(tmp_path / "s3.bin", "1.6.0", seed=8, chip="esp32s3")
    run = job.run(signed_target.inputs(version="1.6.0", firmware=str(image), **inputs))
    assert run.failed is None, run.failed and (run.failed.stdout + run.failed.stderr)
    assert f"| Signed by | key `{digests[0]}`, key `{digests[1]}` |" in run.summary


def test_verify_key_fails_before_the_upload(job: Job, signed_target: Target, tmp_path: Path) -> None:
    # Signed elsewhere (a signing service, say), by a key that is not the expected one.
    image = tmp_path / "app.bin"
    image.write_bytes(sign(build_image("1.7.0", seed=9), private_pem(Scheme.RSA_3072, "elsewhere")))
    expected = public_pem(private_pem(Scheme.RSA_3072, "ci")).decode()
    run = job.run(signed_target.inputs(version="1.7.0", firmware=str(image), **{"verify-key": expected}))
    assert run.failed is not None and run.failed.id == "build" and run.failed.returncode == 2
    elsewhere = load_public_key(public_pem(private_pem(Scheme.RSA_3072, "elsewhere"))).digest
    ours = load_public_key(expected.encode()).digest
    assert (
        f"::error title=Signature::app.bin does not pass the signature check with key {ours}: no signature "
        f"block is by it; the image's blocks are by key {elsewhere}"
    ) in run.failed.stdout
    assert [ota["version"] for ota in signed_target.otas()] in ([], ["1.5.0"], ["1.6.0"])
