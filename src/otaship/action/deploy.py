"""One run of the action: version, build, image check, upload, follow, report.

Each step that can fail raises `Failure` with the exit code that names it; the
report is written in a `finally`, so the outputs and the job summary exist on
failure too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import semver

from otaship.action import exit_codes
from otaship.action.build import (
    BuildConfigError,
    BuildFailed,
    build_dir,
    find_firmware,
    read_project_config,
    run_build,
    select_env,
)
from otaship.action.client import (
    Deployment,
    ReceiverClient,
    ReceiverError,
    ReceiverRejected,
    ReceiverUnavailable,
    RolloutRequest,
)
from otaship.action.follow import FAILED_STATES, FollowResult, failure_message, follow_rollout
from otaship.action.summary import DeployReport, build_outputs, deploy_outputs, render_summary
from otaship.action.version import VersionError, app_version_mismatch, git_ref_from_environ, resolve_version
from otaship.action.workflow import Workflow

# What to do about a 4xx, beyond the receiver's own message.
REJECTION_HINTS = {
    401: "check the api-key input: it must be a key of the group's owner",
    403: "the key's owner cannot run group OTA; upgrade the plan",
    404: "check the group input, and that the api-key belongs to the group's owner",
    413: "the image is larger than the receiver accepts (OTASHIP_MAX_FIRMWARE_BYTES on the receiver)",
}
# `follow` takes a rollout id and a key, no group: its hints speak of those.
FOLLOW_HINTS = {
    401: "check the api-key input: it must be a key of the rollout's owner",
    404: "check the rollout id, and that the api-key belongs to the owner of the rollout's group",
}


class Failure(Exception):
    """The run cannot go on; `code` is the process exit code."""

    def __init__(self, code: int, message: str, *, title: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.title = title


@dataclass(frozen=True)
class BuildInputs:
    project_dir: Path
    environment: str | None = None
    firmware: Path | None = None
    version: str | None = None


@dataclass(frozen=True)
class ReceiverInputs:
    url: str
    api_key: str


@dataclass(frozen=True)
class DeployInputs:
    build: BuildInputs
    receiver: ReceiverInputs
    group: str
    token: str
    commit: str | None = None
    rollout: RolloutRequest = field(default_factory=RolloutRequest)
    wait: bool = True
    timeout: float = 3600.0
    poll_interval: float = 5.0


def bump_hint(version: str) -> str:
    """The next version to suggest after a 409: the next prerelease, or the next patch."""
    try:
        parsed = semver.Version.parse(version)
    except ValueError:
        return "a higher version"
    bumped = parsed.bump_prerelease() if parsed.prerelease else parsed.bump_patch()
    return f"v{bumped}"


def resolve_run_version(inputs: BuildInputs, environ: Mapping[str, str]) -> str:
    try:
        return resolve_version(inputs.version, git_ref_from_environ(environ))
    except VersionError as exc:
        raise Failure(exit_codes.BAD_INPUT, str(exc), title="No valid version") from None


def locate_firmware(
    inputs: BuildInputs, report: DeployReport, workflow: Workflow, environ: Mapping[str, str]
) -> Path:
    """The image to deploy: the given one, or the one PlatformIO builds now."""
    if inputs.firmware is not None:
        if not inputs.firmware.is_file():
            raise Failure(
                exit_codes.BAD_INPUT, f"the firmware input {inputs.firmware} is not a file", title="No image"
            )
        return inputs.firmware.resolve()
    try:
        config = read_project_config(inputs.project_dir, environ)
        env = select_env(config, inputs.environment)
        report.environment = env.name
        run_build(inputs.project_dir, env.name, workflow, environ)
        image = find_firmware(build_dir(inputs.project_dir, config, environ) / env.name, env.options)
    except BuildConfigError as exc:
        raise Failure(exit_codes.BAD_INPUT, str(exc), title="PlatformIO project") from None
    except BuildFailed as exc:
        raise Failure(exit_codes.DEPLOY_FAILED, str(exc), title="Build failed") from None
    return image.resolve()


def check_firmware(image: Path, report: DeployReport, workflow: Workflow) -> None:
    """Validate the image the way the receiver will, before spending an upload on it."""
    from otaship.firmware.image import InvalidFirmware, inspect_firmware

    try:
        firmware = inspect_firmware(image)
    except InvalidFirmware as exc:
        raise Failure(
            exit_codes.BAD_INPUT, f"{image} is not a valid ESP32 app image: {exc}", title="Invalid image"
        ) from None
    report.firmware_path = str(image)
    report.size = firmware.size
    report.sha256 = firmware.sha256
    report.chip = firmware.chip
    mismatch = app_version_mismatch(report.version, firmware.app.version if firmware.app else None)
    if mismatch:
        workflow.warning(mismatch, title="Version mismatch")
        report.notes.append(mismatch)
    workflow.info(f"image {image}: {firmware.chip}, {firmware.size} bytes, sha256 {firmware.sha256}")


def prepare(
    inputs: BuildInputs, report: DeployReport, workflow: Workflow, environ: Mapping[str, str]
) -> Path:
    # The version comes first so that a bad tag fails before minutes of building.
    report.version = resolve_run_version(inputs, environ)
    workflow.info(f"version {report.version}")
    image = locate_firmware(inputs, report, workflow, environ)
    check_firmware(image, report, workflow)
    return image


def run_build_command(inputs: BuildInputs, workflow: Workflow, environ: Mapping[str, str]) -> int:
    """Build and check the image, and say where it is; the summary only on failure."""
    report = DeployReport()
    try:
        prepare(inputs, report, workflow, environ)
    except Failure as failure:
        report_failure(failure, report, workflow)
        workflow.append_summary(render_summary(report))
        return failure.code
    finally:
        workflow.set_outputs(build_outputs(report))
    return exit_codes.OK


def report_failure(failure: Failure, report: DeployReport, workflow: Workflow) -> None:
    report.failure = failure.message
    workflow.error(failure.message, title=failure.title)


def run_deploy_command(
    inputs: DeployInputs,
    workflow: Workflow,
    environ: Mapping[str, str],
    *,
    client: ReceiverClient | None = None,
) -> int:
    # Masks first: nothing printed before them can leak the secrets.
    workflow.mask(inputs.receiver.api_key)
    workflow.mask(inputs.token)
    report = DeployReport(group=inputs.group, commit=inputs.commit or "")
    code = exit_codes.OK
    try:
        image = prepare(inputs.build, report, workflow, environ)
        with client or make_client(inputs.receiver, workflow) as receiver:
            deploy(inputs, image, receiver, report, workflow)
            code = follow_if_asked(inputs, receiver, report, workflow)
    except Failure as failure:
        report_failure(failure, report, workflow)
        code = failure.code
    except Exception as exc:
        # A bug, not a verdict: annotate and summarise it, then let the traceback show.
        report.failure = f"unexpected error: {type(exc).__name__}: {exc}"
        workflow.error(report.failure, title="otaship-deploy crashed")
        raise
    finally:
        workflow.set_outputs(deploy_outputs(report))
        workflow.append_summary(render_summary(report))
    return code


def make_client(receiver: ReceiverInputs, workflow: Workflow) -> ReceiverClient:
    return ReceiverClient(
        receiver.url, receiver.api_key, on_retry=lambda message: workflow.warning(message, title="Retrying")
    )


def deploy(
    inputs: DeployInputs, image: Path, receiver: ReceiverClient, report: DeployReport, workflow: Workflow
) -> None:
    deployment = Deployment(
        group=inputs.group,
        token=inputs.token,
        version=report.version,
        commit=inputs.commit,
        rollout=inputs.rollout,
    )
    workflow.info(
        f"deploying {report.version} to group {inputs.group}"
        + (f" with canary {inputs.rollout.canary}" if inputs.rollout.canary else "")
    )
    try:
        body = receiver.deploy(deployment, image)
    except ReceiverRejected as exc:
        if exc.status == 409:
            handle_conflict(exc, inputs, report, workflow)
            return
        raise Failure(
            exit_codes.BAD_INPUT, rejection_message(exc), title="Receiver rejected the deploy"
        ) from None
    except ReceiverUnavailable as exc:
        raise Failure(exit_codes.DEPLOY_FAILED, exc.message, title="Receiver unavailable") from None
    except ReceiverError as exc:
        raise Failure(exit_codes.DEPLOY_FAILED, exc.message, title="Deploy failed") from None
    report.ota = body.get("ota") if isinstance(body.get("ota"), dict) else None
    report.deployed = bool(body.get("deployed", True))
    rollout = body.get("rollout")
    if isinstance(rollout, dict) and rollout.get("id"):
        report.rollout = rollout
        report.rollout_state = str(rollout.get("state", ""))
    if report.deployed and report.rollout is not None and report.rollout_state == "canary":
        # The image is on the canary subgroup only; the group follows when it is healthy.
        then = (
            "when the rollout is promoted"
            if inputs.rollout.auto_promote is False
            else "once the canary is healthy"
        )
        workflow.notice(
            f"{report.version} deployed to canary subgroup {inputs.rollout.canary} of group {inputs.group} "
            f"(rollout {report.rollout_id}); the whole group gets it {then}",
            title="Deployed to the canary",
        )
    elif report.deployed:
        workflow.notice(f"{report.version} deployed to group {inputs.group}", title="Deployed")
    else:
        note = f"{report.version} was already deployed to group {inputs.group} with these bytes; nothing was redeployed"
        workflow.info(note)
        report.notes.append(note)


def rejection_message(exc: ReceiverRejected, hints: Mapping[int, str] = REJECTION_HINTS) -> str:
    if exc.status is None:
        return exc.message
    message = f"the receiver answered {exc.status}: {exc.message}"
    hint = hints.get(exc.status or 0)
    return f"{message} ({hint})" if hint else message


def handle_conflict(
    exc: ReceiverRejected, inputs: DeployInputs, report: DeployReport, workflow: Workflow
) -> None:
    """A 409: this version is deployed with other bytes. A re-run, or a moved tag?

    Real builds embed the date, so a re-run of the same commit makes other bytes
    too; only the commit tells the two apart.
    """
    deployed_commit = str(exc.body.get("commit") or "")
    deployed_sha = str(exc.body.get("sha256") or "")
    report.deployed = False
    if inputs.commit and deployed_commit == inputs.commit:
        note = (
            f"version {report.version} is already deployed from this commit ({inputs.commit[:12]}) and was not "
            "redeployed: a rebuild makes other bytes, but devices would see the same version"
        )
        workflow.warning(note, title="Already deployed")
        report.notes.append(note)
        return
    origin = f"commit {deployed_commit[:12]}" if deployed_commit else "an unknown commit"
    raise Failure(
        exit_codes.DEPLOY_FAILED,
        f"version {report.version} is already deployed to this group from {origin} with other bytes "
        f"(sha256 {deployed_sha[:16] or '?'}…; this image {report.sha256[:16]}…): the tag moved. Devices compare "
        f"version strings and would never fetch this image, so bump the version (for example to {bump_hint(report.version)}) "
        f"and push that tag. Receiver: {exc.message}",
        title="Version already deployed",
    )


def find_version_rollout(receiver: ReceiverClient, group: str, version: str) -> dict[str, Any] | None:
    try:
        rollouts = receiver.rollouts(group)
    except ReceiverRejected as exc:
        # A receiver without staged rollouts (the plain IoTaaP API) has no such route.
        if exc.status == 404:
            return None
        raise
    for rollout in rollouts:
        if rollout.get("version") == version:
            return rollout
    return None


def follow_if_asked(
    inputs: DeployInputs, receiver: ReceiverClient, report: DeployReport, workflow: Workflow
) -> int:
    try:
        if report.rollout is None and report.deployed is False and inputs.wait and inputs.rollout.canary:
            # Nothing was redeployed; the job's verdict is that of the version's own rollout.
            found = find_version_rollout(receiver, inputs.group, report.version)
            if found is not None:
                workflow.info(f"following the existing rollout {found.get('id')} of {report.version}")
                report.rollout = found
                report.rollout_state = str(found.get("state", ""))
        if report.rollout is None or not inputs.wait:
            return exit_codes.OK
        return follow(
            str(report.rollout["id"]), inputs.timeout, inputs.poll_interval, receiver, report, workflow
        )
    except ReceiverRejected as exc:
        raise Failure(
            exit_codes.DEPLOY_FAILED,
            f"could not read the rollout: {rejection_message(exc)}",
            title="Follow failed",
        ) from None
    except ReceiverError as exc:
        raise Failure(
            exit_codes.DEPLOY_FAILED, f"could not read the rollout: {exc.message}", title="Follow failed"
        ) from None


def follow(
    rollout_id: str,
    timeout: float,
    interval: float,
    receiver: ReceiverClient,
    report: DeployReport,
    workflow: Workflow,
) -> int:
    def fetch() -> dict[str, Any]:
        rollout = receiver.rollout(rollout_id)
        report.rollout = rollout
        report.rollout_state = str(rollout.get("state", ""))
        return rollout

    with workflow.group(f"Following rollout {rollout_id}"):
        result = follow_rollout(fetch, timeout=timeout, interval=interval, report=workflow.info)
    return judge(result, timeout, report)


def judge(result: FollowResult, timeout: float, report: DeployReport) -> int:
    report.rollout = result.rollout
    report.rollout_state = result.state
    message = failure_message(result, timeout)
    if message is None:
        return exit_codes.OK
    if result.timed_out:
        raise Failure(exit_codes.FOLLOW_TIMEOUT, message, title="Rollout still running")
    assert result.rollout.get("state") in FAILED_STATES
    raise Failure(exit_codes.ROLLOUT_FAILED, message, title=f"Rollout {result.rollout.get('state')}")


def run_follow_command(
    rollout_id: str,
    receiver: ReceiverInputs,
    timeout: float,
    interval: float,
    workflow: Workflow,
    *,
    client: ReceiverClient | None = None,
) -> int:
    workflow.mask(receiver.api_key)
    report = DeployReport()
    code = exit_codes.OK
    try:
        with client or make_client(receiver, workflow) as http:
            try:
                code = follow(rollout_id, timeout, interval, http, report, workflow)
            except ReceiverError as exc:
                hint = (
                    rejection_message(exc, FOLLOW_HINTS) if isinstance(exc, ReceiverRejected) else exc.message
                )
                raise Failure(
                    exit_codes.DEPLOY_FAILED,
                    f"could not read rollout {rollout_id}: {hint}",
                    title="Follow failed",
                ) from None
    except Failure as failure:
        report_failure(failure, report, workflow)
        code = failure.code
    finally:
        report.version = str(report.rollout.get("version", "")) if report.rollout else ""
        report.group = str(report.rollout.get("group", "")) if report.rollout else ""
        workflow.set_outputs(
            {"rollout-id": report.rollout_id or rollout_id, "rollout-state": report.rollout_state}
        )
        workflow.append_summary(render_summary(report))
    return code
