"""`otaship-deploy`'s options: flags, the variables they fall back to, and their bounds.

The command line runs in this process (click's CliRunner) with the deploy itself
replaced by a recorder: what is checked is what would reach it. The deploy
against a real receiver is tests/action/test_deploy.py.
"""

from __future__ import annotations

import io
import os
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from otaship.action import deploy, exit_codes
from otaship.action.__main__ import cli, main

CREDENTIALS = {
    "OTASHIP_RECEIVER_URL": "https://ota.example.com",
    "OTASHIP_API_KEY": "osk_key",
    "OTASHIP_GROUP": "a" * 24,
    "OTASHIP_GROUP_TOKEN": "t" * 16,
}


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> list[deploy.DeployInputs]:
    seen: list[deploy.DeployInputs] = []

    def run_deploy_command(inputs: deploy.DeployInputs, *_: object) -> int:
        seen.append(inputs)
        return exit_codes.OK

    monkeypatch.setattr(deploy, "run_deploy_command", run_deploy_command)
    return seen


def invoke(*args: str, **env: str) -> Result:
    # Only the variables given here: none of this machine's CI variables.
    unset: dict[str, str | None] = {
        name: None for name in os.environ if name.startswith(("OTASHIP_", "GITHUB_", "CI_"))
    }
    return CliRunner().invoke(
        cli, list(args), env={**unset, **CREDENTIALS, **env}, prog_name="otaship-deploy"
    )


def deployed(received: list[deploy.DeployInputs], *args: str, **env: str) -> deploy.DeployInputs:
    result = invoke("deploy", "--firmware", "fw.bin", *args, **env)
    assert result.exit_code == exit_codes.OK, result.output
    return received.pop()


@pytest.mark.parametrize(
    ("env", "flag", "commit"),
    [
        ({}, None, None),
        ({"CI_COMMIT_SHA": "gitlab"}, None, "gitlab"),
        ({"GITHUB_SHA": "github", "CI_COMMIT_SHA": "gitlab"}, None, "github"),
        ({"OTASHIP_COMMIT": "explicit", "GITHUB_SHA": "github"}, None, "explicit"),
        # Blank counts as unset: an action input left out arrives as "".
        ({"OTASHIP_COMMIT": "  ", "GITHUB_SHA": "github"}, None, "github"),
        ({"OTASHIP_COMMIT": "explicit"}, "flag", "flag"),
    ],
)
def test_the_commit_falls_back_to_github_then_gitlab(
    received: list[deploy.DeployInputs], env: dict[str, str], flag: str | None, commit: str | None
) -> None:
    args = ["--commit", flag] if flag else []
    assert deployed(received, *args, **env).commit == commit


def test_every_input_comes_through_its_variable_stripped(received: list[deploy.DeployInputs]) -> None:
    inputs = deployed(
        received,
        OTASHIP_RECEIVER_URL=" https://ota.example.com/base ",
        OTASHIP_VERSION=" v1.2.3 ",
        OTASHIP_PROJECT_DIR="firmware",
        OTASHIP_ENVIRONMENT="esp32dev",
        OTASHIP_CANARY="c" * 24,
        OTASHIP_CANARY_TIMEOUT="600",
        OTASHIP_SUCCESS_THRESHOLD="0.5",
        OTASHIP_ERROR_THRESHOLD="1",
        OTASHIP_SOAK="30",
        OTASHIP_AUTO_PROMOTE=" Off ",
        OTASHIP_WAIT="NO",
        OTASHIP_TIMEOUT="90",
        OTASHIP_POLL_INTERVAL="0.5",
    )
    assert inputs.receiver == deploy.ReceiverInputs("https://ota.example.com/base", "osk_key")
    assert (inputs.group, inputs.token) == ("a" * 24, "t" * 16)
    assert (inputs.build.version, inputs.build.project_dir, inputs.build.environment) == (
        "v1.2.3",
        Path("firmware"),
        "esp32dev",
    )
    rollout = inputs.rollout
    assert (rollout.canary, rollout.canary_timeout, rollout.success_threshold) == ("c" * 24, 600, 0.5)
    assert (rollout.error_threshold, rollout.soak, rollout.auto_promote) == (1, 30, False)
    assert (inputs.wait, inputs.timeout, inputs.poll_interval) == (False, 90.0, 0.5)


def test_the_defaults(received: list[deploy.DeployInputs]) -> None:
    inputs = deployed(received, OTASHIP_TIMEOUT="", OTASHIP_WAIT="")
    assert (inputs.build.project_dir, inputs.build.firmware) == (Path("."), Path("fw.bin"))
    assert (inputs.wait, inputs.timeout, inputs.poll_interval) == (True, 3600.0, 5.0)
    assert inputs.rollout.auto_promote is None and inputs.rollout.soak is None


@pytest.mark.parametrize("word", ["true", "YES", "1", "On", " true "])
def test_switches_take_the_true_words(received: list[deploy.DeployInputs], word: str) -> None:
    assert deployed(received, "--auto-promote", word).rollout.auto_promote is True


@pytest.mark.parametrize("word", ["false", "No", "0", "OFF"])
def test_switches_take_the_false_words(received: list[deploy.DeployInputs], word: str) -> None:
    assert deployed(received, "--wait", word).wait is False


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--wait", "maybe"),
        ("--wait", "y"),
        ("--success-threshold", "0"),
        ("--success-threshold", "1.5"),
        ("--success-threshold", "nan"),
        ("--error-threshold", "-1"),
        ("--error-threshold", "1.5"),
        ("--soak", "-1"),
        ("--canary-timeout", "0"),
        ("--timeout", "0"),
        ("--poll-interval", "-1"),
        ("--timeout", "soon"),
        ("--receiver-url", "ftp://ota.example.com"),
        ("--receiver-url", "ota.example.com"),
    ],
)
def test_a_value_out_of_bounds_is_a_usage_error_naming_the_option(
    received: list[deploy.DeployInputs], option: str, value: str
) -> None:
    result = invoke("deploy", "--firmware", "fw.bin", option, value)
    assert result.exit_code == exit_codes.BAD_INPUT
    assert f"Invalid value for '{option}'" in result.stderr
    assert received == []


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--success-threshold", "1"),
        ("--error-threshold", "0"),
        ("--soak", "0"),
        ("--canary-timeout", "1"),
        ("--timeout", "0.5"),
        ("--timeout", "inf"),
    ],
)
def test_the_bounds_themselves_are_accepted(
    received: list[deploy.DeployInputs], option: str, value: str
) -> None:
    deployed(received, option, value)


def test_a_bad_variable_is_a_usage_error_naming_it(received: list[deploy.DeployInputs]) -> None:
    result = invoke("deploy", OTASHIP_TIMEOUT="soon")
    assert result.exit_code == exit_codes.BAD_INPUT
    assert "OTASHIP_TIMEOUT" in result.stderr and "'soon'" in result.stderr
    assert received == []


def test_in_a_workflow_a_usage_error_is_also_an_annotation(received: list[deploy.DeployInputs]) -> None:
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        main(["deploy", "--soak", "-1"], {"GITHUB_ACTIONS": "true", **CREDENTIALS}, out)
    assert exited.value.code == exit_codes.BAD_INPUT
    assert out.getvalue().startswith("::error title=otaship-deploy usage::Invalid value for '--soak'")
    assert received == []


def test_the_package_version_flag_does_not_take_the_firmware_version(
    received: list[deploy.DeployInputs],
) -> None:
    for flag in ("-V", "--package-version"):
        result = invoke(flag)
        assert (result.exit_code, result.stdout) == (0, f"otaship-deploy, version {version('otaship')}\n")
    assert deployed(received, "--version", "1.2.3").build.version == "1.2.3"
    result = invoke("version", "--version", "v2.0.0")
    assert (result.exit_code, result.stdout) == (0, "2.0.0\n")


def test_no_command_is_a_usage_error() -> None:
    result = invoke()
    assert result.exit_code == exit_codes.BAD_INPUT
    assert "Missing command" in result.stderr


def test_waves_and_the_failure_rate_reach_the_rollout(received: list[deploy.DeployInputs]) -> None:
    waves = f"{'1' * 24},{'2' * 24}"
    inputs = deployed(received, OTASHIP_WAVES=waves, OTASHIP_MAX_FAILURE_RATE="0.2", OTASHIP_MIN_DEVICES="5")
    rollout = inputs.rollout
    assert (rollout.waves, rollout.max_failure_rate, rollout.min_devices, rollout.staged) == (
        waves,
        0.2,
        5,
        True,
    )
    assert {k: v for k, v in rollout.form_fields().items() if v is not None} == {
        "waves": waves,
        "max_failure_rate": 0.2,
        "min_devices": 5,
    }


def test_rollback_reaches_the_rollout_only_when_given(received: list[deploy.DeployInputs]) -> None:
    canary = "1" * 24
    assert deployed(received, OTASHIP_CANARY=canary).rollout.form_fields()["rollback"] is None
    inputs = deployed(received, OTASHIP_CANARY=canary, OTASHIP_ROLLBACK="true")
    assert inputs.rollout.form_fields()["rollback"] == "true"
    assert deployed(received, "--rollback", "false", OTASHIP_CANARY=canary).rollout.rollback is False
