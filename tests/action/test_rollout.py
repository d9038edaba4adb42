"""Deploying with a canary and following the rollout, through the CLI.

Staged rollouts and the device simulator belong to the fleet work, which is not
in the receiver yet, so these tests serve scripted rollout JSON (the shapes of
GET /v1/rollouts/<id> and GET /v1/rollouts?group=) from a small real HTTP server.
End-to-end canary runs against `otaship serve` with simulated devices come with
that work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from otaship.action import exit_codes
from tests.action_fixtures import DeployStep, Reply, Scripted, StepRun, receiver_env, stage_json
from tests.esp_image import write_image

GROUP, CANARY, ROLLOUT, COMMIT = "a" * 24, "c" * 24, "f" * 24, "3" * 40


def rollout(
    state: str,
    canary: tuple[int, int, int, int],
    fleet: tuple[int, int, int, int] | None = None,
    devices: list[dict[str, Any]] | None = None,
    reason: str | None = None,
    version: str = "1.5.0",
) -> dict[str, Any]:
    stages = [stage_json("canary", CANARY, canary, "running" if state == "canary" else "done")]
    if fleet is not None:
        stages.append(stage_json("fleet", GROUP, fleet, "running" if state == "fleet" else "done"))
    return {
        "id": ROLLOUT,
        "group": GROUP,
        "canary": CANARY,
        "version": version,
        "state": state,
        "reason": reason,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "stages": stages,
        "devices": devices or [],
    }


def created(state: str = "canary", deployed: bool = True) -> Reply:
    return (
        201,
        {
            "message": "Firmware successfully deployed",
            "deployed": deployed,
            "ota": {"_id": "o" * 24, "group": CANARY, "__v": 0, "version": "1.5.0"},
            "rollout": {"id": ROLLOUT, "state": state},
        },
        {},
    )


def run_cli(deploy_step: DeployStep, url: str, *args: str) -> StepRun:
    env = {
        "GITHUB_SHA": COMMIT,
        "GITHUB_REF_TYPE": "tag",
        "GITHUB_REF_NAME": "v1.5.0",
        **receiver_env(url, "osk_key", GROUP, "t" * 16),
        "OTASHIP_POLL_INTERVAL": "0.01",
    }
    return deploy_step(*args, env=env)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_image(tmp_path / "firmware.bin", "1.5.0", seed=15)


def test_a_canary_rollout_followed_to_complete(
    deploy_step: DeployStep, image: Path, scripted: Scripted
) -> None:
    server = scripted(
        {
            "POST": [created()],
            "GET": [
                (200, body, {})
                for body in (
                    rollout("canary", (2, 0, 0, 2)),
                    rollout("canary", (2, 1, 0, 1)),
                    rollout("canary", (2, 1, 0, 1)),
                    rollout("fleet", (2, 2, 0, 0), (6, 2, 0, 4)),
                    rollout("complete", (2, 2, 0, 0), (6, 6, 0, 0)),
                )
            ],
        }
    )
    result = run_cli(
        deploy_step,
        server.url,
        "deploy",
        "--firmware",
        str(image),
        "--canary",
        CANARY,
        "--canary-timeout",
        "600",
        "--success-threshold",
        "1",
        "--error-threshold",
        "0",
        "--soak",
        "30",
    )
    assert result.code == exit_codes.OK, result.log
    assert result.outputs["rollout-id"] == ROLLOUT and result.outputs["rollout-state"] == "complete"
    progress = [line for line in result.log.splitlines() if line.startswith(f"rollout {ROLLOUT}")]
    assert progress == [
        f"rollout {ROLLOUT}: canary, canary stage 0/2 succeeded, 0 failed, 2 pending",
        f"rollout {ROLLOUT}: canary, canary stage 1/2 succeeded, 0 failed, 1 pending",
        f"rollout {ROLLOUT}: fleet, fleet stage 2/6 succeeded, 0 failed, 4 pending",
        f"rollout {ROLLOUT}: complete, fleet stage 6/6 succeeded, 0 failed, 0 pending",
    ]
    post = server.requests[0][3]
    for field, value in (
        ("canary", CANARY),
        ("canary_timeout", "600"),
        ("success_threshold", "1.0"),
        ("error_threshold", "0"),
        ("soak", "30"),
        ("commit", COMMIT),
        ("version", "1.5.0"),
    ):
        assert f'name="{field}"\r\n\r\n{value}\r\n'.encode() in post
    assert f"### Rollout `{ROLLOUT}`: complete" in result.summary
    assert f"| fleet | {GROUP} | done | 6 | 6 | 0 | 0 | 0 | 0 |" in result.summary.splitlines()
    # The image went to the canary first, and the notice says so.
    assert (
        f"::notice title=Deployed to the canary::1.5.0 deployed to canary subgroup {CANARY} of group {GROUP} "
        f"(rollout {ROLLOUT}); the whole group gets it once the canary is healthy"
    ) in result.log.splitlines()


def test_a_halted_canary_fails_the_job_naming_the_devices(
    deploy_step: DeployStep, image: Path, scripted: Scripted
) -> None:
    devices = [
        {
            "id": "d1",
            "name": "lab-1",
            "group": CANARY,
            "stage": "canary",
            "outcome": "failed",
            "fw_version": "1.4.0",
            "code": 203,
        },
        {
            "id": "d2",
            "name": "lab-2",
            "group": CANARY,
            "stage": "canary",
            "outcome": "succeeded",
            "fw_version": "1.5.0",
            "code": 201,
        },
    ]
    server = scripted(
        {
            "POST": [created()],
            "GET": [
                (200, rollout("canary", (2, 0, 0, 2)), {}),
                (200, rollout("halted", (2, 1, 1, 0), devices=devices, reason="1 canary device failed"), {}),
            ],
        }
    )
    result = run_cli(deploy_step, server.url, "deploy", "--firmware", str(image), "--canary", CANARY)
    assert result.code == exit_codes.ROLLOUT_FAILED
    assert (
        f"::error title=Rollout halted::rollout {ROLLOUT} halted: 1 canary device failed. "
        "Failed devices: lab-1 (failed, running 1.4.0, code 203)"
    ) in result.log
    assert result.outputs["rollout-state"] == "halted"
    assert "## ❌ otaship: `1.5.0` failed" in result.summary
    assert "| lab-1 | canary | failed | 1.4.0 | 203 |" in result.summary


def test_a_rolled_back_rollout_fails_the_job_as_a_halt_and_the_summary_shows_the_rollback(
    deploy_step: DeployStep, image: Path, scripted: Scripted
) -> None:
    rolled_back = rollout(
        "rolled_back", (2, 1, 1, 0), reason="1 canary device(s) failed; error_threshold tolerates 0"
    )
    rolled_back["rollback"] = [
        {
            "wave": 1,
            "group": CANARY,
            "result": f"canary ({CANARY}) rolled back to 1.4.0",
            "version": "1.4.0",
            "targeted": 2,
            "went_back": 1,
            "did_not": 0,
            "unreachable": 0,
            "pending": 1,
            "retrying": 0,
        }
    ]
    server = scripted({"POST": [created()], "GET": [(200, rolled_back, {})]})
    result = run_cli(
        deploy_step, server.url, "deploy", "--firmware", str(image), "--canary", CANARY, "--rollback", "true"
    )
    assert result.code == exit_codes.ROLLOUT_FAILED == 3
    assert (
        f"::error title=Rollout rolled_back::rollout {ROLLOUT} rolled_back: "
        "1 canary device(s) failed; error_threshold tolerates 0"
    ) in result.log
    assert result.outputs["rollout-state"] == "rolled_back"
    assert b'name="rollback"\r\n\r\ntrue\r\n' in server.requests[0][3]
    assert "#### Rollback" in result.summary
    assert (
        f"| 1 | {CANARY} | canary ({CANARY}) rolled back to 1.4.0 | 2 | 1 | 0 | 0 | 1 | 0 |" in result.summary
    )


def test_an_aborted_rollout_fails_the_job(deploy_step: DeployStep, image: Path, scripted: Scripted) -> None:
    server = scripted(
        {
            "POST": [created()],
            "GET": [(200, rollout("aborted", (2, 0, 0, 2), reason="aborted by operator"), {})],
        }
    )
    result = run_cli(deploy_step, server.url, "deploy", "--firmware", str(image), "--canary", CANARY)
    assert result.code == exit_codes.ROLLOUT_FAILED and "aborted by operator" in result.log


def test_following_runs_out_of_time(deploy_step: DeployStep, image: Path, scripted: Scripted) -> None:
    server = scripted({"POST": [created()], "GET": [(200, rollout("canary", (3, 1, 0, 2)), {})]})
    result = run_cli(
        deploy_step, server.url, "deploy", "--firmware", str(image), "--canary", CANARY, "--timeout", "0.2"
    )
    assert result.code == exit_codes.FOLLOW_TIMEOUT
    assert result.outputs["rollout-state"] == "timeout" and result.outputs["rollout-id"] == ROLLOUT
    assert f"::error title=Rollout still running::rollout {ROLLOUT} was still canary after 0.2s" in result.log
    assert f"### Rollout `{ROLLOUT}`: timeout" in result.summary


def test_without_wait_the_state_at_upload_is_reported(
    deploy_step: DeployStep, image: Path, scripted: Scripted
) -> None:
    server = scripted({"POST": [created("canary")], "GET": [(500, {"message": "should not be called"}, {})]})
    result = run_cli(
        deploy_step, server.url, "deploy", "--firmware", str(image), "--canary", CANARY, "--wait", "false"
    )
    assert result.code == exit_codes.OK, result.log
    assert result.outputs["rollout-state"] == "canary" and result.outputs["rollout-id"] == ROLLOUT
    assert [method for method, *_ in server.requests] == ["POST"]


def test_a_held_canary_and_a_plain_deploy_say_where_the_image_went(
    deploy_step: DeployStep, image: Path, scripted: Scripted
) -> None:
    held = scripted({"POST": [created("canary")]})
    result = run_cli(
        deploy_step,
        held.url,
        "deploy",
        "--firmware",
        str(image),
        "--canary",
        CANARY,
        "--auto-promote",
        "false",
        "--wait",
        "false",
    )
    assert result.code == exit_codes.OK, result.log
    assert (
        f"::notice title=Deployed to the canary::1.5.0 deployed to canary subgroup {CANARY} of group {GROUP} "
        f"(rollout {ROLLOUT}); the whole group gets it when the rollout is promoted"
    ) in result.log.splitlines()

    plain = scripted({"POST": [(201, {"message": "Firmware successfully deployed", "deployed": True}, {})]})
    result = run_cli(deploy_step, plain.url, "deploy", "--firmware", str(image))
    assert result.code == exit_codes.OK, result.log
    assert f"::notice title=Deployed::1.5.0 deployed to group {GROUP}" in result.log.splitlines()


def test_a_rerun_follows_the_rollout_of_the_version_already_deployed(
    deploy_step: DeployStep, image: Path, scripted: Scripted
) -> None:
    conflict: Reply = (
        409,
        {
            "message": "Version 1.5.0 is already deployed to this group with different firmware. Please bump the version.",
            "version": "1.5.0",
            "sha256": "9" * 64,
            "commit": COMMIT,
        },
        {},
    )
    older = {**rollout("complete", (1, 1, 0, 0), (1, 1, 0, 0), version="1.4.0"), "id": "e" * 24}
    server = scripted(
        {
            "POST": [conflict],
            "GET": [
                (200, {"rollouts": [rollout("fleet", (2, 2, 0, 0), (6, 3, 0, 3)), older]}, {}),
                (200, rollout("fleet", (2, 2, 0, 0), (6, 3, 0, 3)), {}),
                (200, rollout("complete", (2, 2, 0, 0), (6, 6, 0, 0)), {}),
            ],
        }
    )
    result = run_cli(deploy_step, server.url, "deploy", "--firmware", str(image), "--canary", CANARY)
    assert result.code == exit_codes.OK, result.log
    assert "::warning title=Already deployed::" in result.log
    assert f"following the existing rollout {ROLLOUT} of 1.5.0" in result.log
    assert result.outputs["rollout-state"] == "complete"
    assert server.requests[1][1] == f"/v1/rollouts?group={GROUP}"


def test_the_follow_command_follows_any_rollout(deploy_step: DeployStep, scripted: Scripted) -> None:
    server = scripted(
        {
            "GET": [
                (200, rollout("fleet", (2, 2, 0, 0), (4, 2, 0, 2)), {}),
                (200, rollout("complete", (2, 2, 0, 0), (4, 4, 0, 0)), {}),
            ]
        }
    )
    result = run_cli(deploy_step, server.url, "follow", ROLLOUT)
    assert result.code == exit_codes.OK, result.log
    assert result.outputs == {"rollout-id": ROLLOUT, "rollout-state": "complete"}
    assert "## ✅ otaship: `1.5.0` rolled out" in result.summary

    missing = scripted({"GET": [(404, {"message": "No such rollout"}, {})]})
    result = run_cli(deploy_step, missing.url, "follow", "0" * 24)
    assert result.code == exit_codes.DEPLOY_FAILED
    # follow has no group input: the hint speaks of what it was given.
    assert (
        f"could not read rollout {'0' * 24}: the receiver answered 404: No such rollout "
        "(check the rollout id, and that the api-key belongs to the owner of the rollout's group)"
    ) in result.log
    assert "group input" not in result.log
