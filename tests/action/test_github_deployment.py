"""`github-deployment: true`: the deploy reported back to GitHub as a Deployment.

GitHub itself cannot run here: tests/github_standin.py stands in for its REST
API and records every request, so that the tests assert the Deployment and its
statuses exactly as GitHub would receive them. The receiver, its broker and the
simulated devices are real.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from otaship.action import exit_codes
from otaship.action.client import ReceiverClient
from otaship.action.deploy import group_name_of
from otaship.action.github_deployment import (
    GithubDeployment,
    GithubTarget,
    final_status,
    progress_status,
    stage_counts,
)
from otaship.action.summary import DeployReport
from otaship.action.workflow import Workflow
from otaship.github_deployments import KEY_FIELD
from tests.action.test_canary import fleet_with_canary, with_devices
from tests.action_fixtures import DeployStep, StepRun, Tenant, receiver_env
from tests.esp_image import write_image
from tests.github_standin import GithubStandIn, github_standin

COMMIT = "3333333333333333333333333333333333333333"
TOKEN = "ghs_" + "J0bT0kenJ0bT0kenJ0bT0kenJ0bT0kenJ0bT"
REPO = "octo-org/thermostat"


def stage(name: str, succeeded: int, targeted: int, started: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "succeeded": succeeded,
        "targeted": targeted,
        "started_at": "2026-12-02T10:00:00.000Z" if started else None,
    }


def rollout(state: str, *stages: dict[str, Any]) -> dict[str, Any]:
    return {"id": "r" * 24, "state": state, "stages": list(stages)}


def test_the_descriptions_count_each_stage_that_started() -> None:
    assert stage_counts(None) == ""
    assert stage_counts(rollout("canary", stage("canary", 3, 10), stage("fleet", 0, 0, started=False))) == (
        "canary 3/10"
    )
    running = rollout("fleet", stage("canary", 10, 10), stage("fleet", 412, 1000))
    assert stage_counts(running) == "canary 10/10, fleet 412/1000"
    assert progress_status("1.4.0", None) == ("in_progress", "1.4.0 uploaded")
    assert progress_status("1.4.0", {"id": "r", "state": "canary"}) == ("in_progress", "1.4.0: canary")
    assert progress_status("1.4.0", running) == ("in_progress", "1.4.0: fleet, canary 10/10, fleet 412/1000")
    waves = {**rollout("canary", stage("canary", 2, 2), stage("wave", 1, 2)), "wave": 2}
    assert progress_status("1.4.0", waves) == ("in_progress", "1.4.0: wave 2, canary 2/2, wave 1/2")
    assert progress_status("1.4.0", {**waves, "wave": 1}) == (
        "in_progress",
        "1.4.0: canary, canary 2/2, wave 1/2",
    )


@pytest.mark.parametrize(
    ("rolled", "failure", "timed_out", "expected"),
    [
        (None, None, False, ("success", "1.4.0 deployed")),
        (
            rollout("complete", stage("canary", 10, 10), stage("fleet", 1000, 1000)),
            None,
            False,
            ("success", "1.4.0: complete, canary 10/10, fleet 1000/1000"),
        ),
        (
            rollout("halted", stage("canary", 2, 10)),
            "rollout halted",
            False,
            ("failure", "1.4.0: halted, canary 2/10"),
        ),
        (rollout("aborted"), "rollout aborted", False, ("failure", "1.4.0: aborted, rollout aborted")),
        (
            None,
            "the receiver answered 500",
            False,
            ("failure", "1.4.0: deploy failed, the receiver answered 500"),
        ),
        (
            rollout("fleet", stage("canary", 10, 10), stage("fleet", 3, 1000)),
            "still running",
            True,
            ("in_progress", "1.4.0: still fleet when the job stopped following, canary 10/10, fleet 3/1000"),
        ),
    ],
)
def test_the_last_status_says_how_the_run_ended(
    rolled: dict[str, Any] | None, failure: str | None, timed_out: bool, expected: tuple[str, str]
) -> None:
    assert final_status("1.4.0", rolled, failure=failure, timed_out=timed_out) == expected


def test_a_description_fits_githubs_140_characters() -> None:
    many = rollout("fleet", *(stage(f"wave-number-{i}", 1000, 1000) for i in range(10)))
    assert len(progress_status("1.4.0", many)[1]) == 140


@pytest.fixture
def standin() -> Iterator[GithubStandIn]:
    with github_standin() as running:
        yield running


def job_env(t: Tenant, standin: GithubStandIn, group: dict[str, Any]) -> dict[str, str]:
    """A tag's job with github-deployment on, deploying to `group`."""
    return {
        "GITHUB_SHA": COMMIT,
        "GITHUB_REF_TYPE": "tag",
        "GITHUB_REF_NAME": "v1.1.0",
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_API_URL": standin.api_url,
        **receiver_env(t.receiver.url, t.api_key, group["id"], group["token"]),
        "OTASHIP_GITHUB_DEPLOYMENT": "true",
        "OTASHIP_GITHUB_TOKEN": TOKEN,
    }


def canary_job(
    t: Tenant,
    deploy_step: DeployStep,
    tmp_path: Path,
    standin: GithubStandIn,
    *,
    fleet_devices: int,
    canary_fail_rate: float = 0.0,
    **args: str,
) -> StepRun:
    """The job deploying 1.1.0 through a canary of 2 devices, with `fleet_devices`
    more in the group, all simulated from 1.0.0 while the job follows the rollout."""
    f = fleet_with_canary(t, canary_devices=2, fleet_devices=fleet_devices)
    configs = [
        t.sim(f.canary, f.canary_ids, "1.0.0", fail_rate=canary_fail_rate),
        t.sim(f.group, f.fleet_ids, "1.0.0"),
    ]
    env = {
        **job_env(t, standin, f.group),
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_RUN_ID": "42",
        "OTASHIP_POLL_INTERVAL": "0.5",
    }

    def job() -> StepRun:
        image = write_image(tmp_path / "firmware.bin", "1.1.0")
        argv = ["deploy", "--firmware", str(image), "--canary", f.canary["id"], "--timeout", "90"]
        for name, value in args.items():
            argv += [f"--{name.replace('_', '-')}", value]
        return deploy_step(*argv, env=env)

    run: StepRun
    run, _ = asyncio.run(with_devices(t, configs, job))
    return run


def statuses(standin: GithubStandIn) -> list[tuple[str, str]]:
    return [(body["state"], body["description"]) for _, body in standin.statuses]


def test_a_healthy_canary_is_reported_in_order(
    embedded: Tenant, deploy_step: DeployStep, tmp_path: Path, standin: GithubStandIn
) -> None:
    t = embedded
    run = canary_job(t, deploy_step, tmp_path, standin, fleet_devices=3)
    assert run.code == exit_codes.OK, run.log
    rollout_id = run.outputs["rollout-id"]

    create = standin.api_seen[0]
    assert (create.method, create.path) == ("POST", f"/repos/{REPO}/deployments")
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert create.headers["accept"] == "application/vnd.github+json"
    assert create.headers["x-github-api-version"] == "2022-11-28"
    key = create.json()["payload"][KEY_FIELD]
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert create.json() == {
        "ref": COMMIT,
        # The group's name, as the deploy's answer gave it (its rollout's group).
        "environment": "firmware/fleet",
        "description": "otaship 1.1.0",
        "payload": {"version": "1.1.0", "rollout_id": rollout_id, KEY_FIELD: key},
        "auto_merge": False,
        "required_contexts": [],
        "production_environment": True,
    }
    assert [seen.path for seen in standin.api_seen[1:]] == [f"/repos/{REPO}/deployments/1000/statuses"] * 3
    posted = statuses(standin)
    assert [state for state, _ in posted] == ["in_progress", "in_progress", "success"]
    assert posted[0] == ("in_progress", "1.1.0: canary")
    assert posted[1][1].startswith("1.1.0: fleet, canary 2/2, fleet ")
    # The fleet stage targets the whole group, the canary's devices included.
    assert posted[2] == ("success", "1.1.0: complete, canary 2/2, fleet 5/5")
    assert {body["log_url"] for _, body in standin.statuses} == {f"{t.receiver.url}/v1/rollouts/{rollout_id}"}
    # Masked first; then never printed.
    assert f"::add-mask::{TOKEN}" in run.log.splitlines()
    assert [line for line in run.log.splitlines() if TOKEN in line] == [f"::add-mask::{TOKEN}"]
    assert TOKEN not in run.summary


def test_a_halted_canary_is_reported_as_a_failure(
    embedded: Tenant, deploy_step: DeployStep, tmp_path: Path, standin: GithubStandIn
) -> None:
    run = canary_job(
        embedded, deploy_step, tmp_path, standin, fleet_devices=2, canary_fail_rate=1.0, canary_timeout="60"
    )
    assert run.code == exit_codes.ROLLOUT_FAILED, run.log
    assert statuses(standin) == [("in_progress", "1.1.0: canary"), ("failure", "1.1.0: halted, canary 0/2")]


def test_a_github_that_fails_never_fails_the_deploy(
    embedded: Tenant, deploy_step: DeployStep, tmp_path: Path, standin: GithubStandIn
) -> None:
    t = embedded
    group = t.group("plain")
    standin.api_failures = 3  # every attempt to create the deployment
    image = write_image(tmp_path / "firmware.bin", "1.1.0")
    run = deploy_step("deploy", "--firmware", str(image), env=job_env(t, standin, group))
    assert run.code == exit_codes.OK, run.log
    # The first try, then a retry that looks for what it might have created, twice.
    assert [seen.method for seen in standin.api_seen] == ["POST", "GET", "GET"]
    assert standin.deployments == [] and standin.statuses == []
    message = (
        "creating the GitHub deployment: GitHub answered 502 (attempt 3 of 3); the deploy is not affected"
    )
    assert f"::warning title=GitHub deployment::{message}" in run.log
    assert f"GitHub deployment not fully reported: {message}" in run.summary


def test_a_deployment_github_created_but_answered_502_is_not_created_again(
    embedded: Tenant, deploy_step: DeployStep, tmp_path: Path, standin: GithubStandIn
) -> None:
    t = embedded
    group = t.group("plain")
    standin.created_then_failed = 1
    image = write_image(tmp_path / "firmware.bin", "1.1.0")
    run = deploy_step("deploy", "--firmware", str(image), env=job_env(t, standin, group))
    assert run.code == exit_codes.OK, run.log
    assert len(standin.deployments) == 1
    assert [(seen.method, seen.path) for seen in standin.api_seen] == [
        ("POST", f"/repos/{REPO}/deployments"),
        ("GET", f"/repos/{REPO}/deployments"),
        ("POST", f"/repos/{REPO}/deployments/1000/statuses"),
        ("POST", f"/repos/{REPO}/deployments/1000/statuses"),
    ]
    assert statuses(standin) == [("in_progress", "1.1.0 uploaded"), ("success", "1.1.0 deployed")]
    assert "::warning" not in run.log


def test_a_deployment_github_created_but_did_not_answer_in_time_is_not_created_again(
    standin: GithubStandIn,
) -> None:
    standin.creation_delay = 2.5
    warnings: list[str] = []
    github = GithubDeployment(
        GithubTarget(api_url=standin.api_url, token=TOKEN, repository=REPO),
        warn=warnings.append,
        backoff=0.01,
        timeout=1,
    )
    try:
        github.create(ref=COMMIT, group_name="lamps", version="1.1.0", rollout_id=None)
        github.status("success", "1.1.0 deployed")
    finally:
        github.close()
    assert (github.deployment_id, warnings, github.failures) == (1000, [], [])
    assert [seen.method for seen in standin.api_seen] == ["POST", "GET", "POST"]
    assert dict(httpx.QueryParams(standin.api_seen[1].query)) == {
        "ref": COMMIT,
        "environment": "firmware/lamps",
        "per_page": "100",
    }
    assert statuses(standin) == [("success", "1.1.0 deployed")]


def plain_job(
    t: Tenant,
    deploy_step: DeployStep,
    tmp_path: Path,
    standin: GithubStandIn,
    group: dict[str, Any],
    seed: int,
) -> StepRun:
    image = write_image(tmp_path / f"firmware-{seed}.bin", "1.1.0", seed=seed)
    return deploy_step("deploy", "--firmware", str(image), env=job_env(t, standin, group))


def test_the_environment_is_named_after_the_group_even_when_the_deploy_answer_does_not_say(
    embedded: Tenant, deploy_step: DeployStep, tmp_path: Path, standin: GithubStandIn
) -> None:
    t = embedded
    group = t.group("hallway lamps")
    first = plain_job(t, deploy_step, tmp_path, standin, group, seed=0)
    assert first.code == exit_codes.OK, first.log
    # A re-run of the same commit rebuilt other bytes: the receiver's 409 carries no
    # record, so the name is read from GET /v1/ota/group.
    again = plain_job(t, deploy_step, tmp_path, standin, group, seed=1)
    assert again.code == exit_codes.OK, again.log
    created = [seen.json() for seen in standin.api_seen if seen.path == f"/repos/{REPO}/deployments"]
    assert [body["environment"] for body in created] == ["firmware/hallway lamps"] * 2
    assert "could not be read" not in first.log + again.log


def answering(*otas: dict[str, Any], status: int = 200) -> ReceiverClient:
    """A receiver whose GET /v1/ota/group answers `otas` (or `status`): the cases a
    current receiver never gives, as an older one or one in trouble would."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("GET", "/v1/ota/group")
        assert request.url.params["search_value"] == "a" * 24
        if status != 200:
            return httpx.Response(status, json={"message": "Internal server error"})
        return httpx.Response(200, content=json.dumps({"otas": list(otas)}))

    return ReceiverClient(
        "http://receiver.test", "key", transport=httpx.MockTransport(handle), sleep=lambda _: None
    )


@pytest.mark.parametrize(
    ("client", "name", "why"),
    [
        (answering({"group": "a" * 24, "group_name": "thermostats"}), "thermostats", None),
        (
            answering({"group": "b" * 24, "group_name": "other"}),
            "a" * 24,
            "GET /v1/ota/group has no record of it yet",
        ),
        # An older receiver: its records have no names.
        (answering({"group": "a" * 24}), "a" * 24, "GET /v1/ota/group has no record of it yet"),
        (
            answering(status=500),
            "a" * 24,
            "GET /v1/ota/group: list OTA records: the receiver answered 500 (Internal server error) 5 times",
        ),
    ],
)
def test_without_the_groups_name_its_id_names_the_environment_and_a_warning_says_so(
    client: ReceiverClient, name: str, why: str | None
) -> None:
    out = io.StringIO()
    with client:
        assert group_name_of("a" * 24, DeployReport(group="a" * 24), client, Workflow(stdout=out)) == name
    if why is None:
        assert out.getvalue() == ""
    else:
        assert out.getvalue().splitlines()[-1] == (
            f"warning: GitHub deployment: the name of group {'a' * 24} could not be read ({why}): the GitHub environment is "
            f"firmware/{'a' * 24} instead of firmware/<group name>"
        )


def test_the_deploy_answer_names_the_group_without_another_request() -> None:
    out = io.StringIO()
    report = DeployReport(group="a" * 24, ota={"group": "a" * 24, "group_name": "lamps"})
    with answering(status=500) as client:
        assert group_name_of("a" * 24, report, client, Workflow(stdout=out)) == "lamps"
        # The canary's own record names the canary subgroup, not the group: the rollout says the group's.
        canary = DeployReport(
            group="a" * 24,
            ota={"group": "c" * 24, "group_name": "canary"},
            rollout={"id": "r" * 24, "group": "a" * 24, "group_name": "lamps"},
        )
        assert group_name_of("a" * 24, canary, client, Workflow(stdout=out)) == "lamps"
    assert out.getvalue() == ""
