"""One run of the action: version, build, image check, upload, follow, report.

Each step that can fail raises `Failure` with the exit code that names it; the
report is written in a `finally`, so the outputs and the job summary exist on
failure too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from otaship.action.follow import (
    FAILED_STATES,
    TERMINAL_STATES,
    FollowResult,
    failure_message,
    follow_rollout,
)
from otaship.action.github_deployment import (
    GithubDeployment,
    GithubTarget,
    final_status,
    progress_status,
)
from otaship.action.summary import DeployReport, build_outputs, deploy_outputs, render_summary
from otaship.action.version import VersionError, app_version_mismatch, git_ref_from_environ, resolve_version
from otaship.action.workflow import Workflow
from otaship.github_deployments import environment_for

if TYPE_CHECKING:
    from otaship.firmware.image import FirmwareImage

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
    # PEM private keys to sign the image with (a second one during a rotation).
    signing_keys: tuple[bytes, ...] = ()
    # PEM public keys the image must carry a valid signature block by.
    verify_keys: tuple[bytes, ...] = ()


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
    # `github-deployment: true`: where to report the deploy as a GitHub Deployment.
    github: GithubTarget | None = None


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


def sign_firmware(image: Path, keys: tuple[bytes, ...], workflow: Workflow) -> Path:
    """The image signed by `keys`, written beside it as <name>-signed.bin."""
    from otaship.firmware.signing import SigningFailed, sign_image

    signed = image.with_name(f"{image.stem}-signed{image.suffix}")
    try:
        sign_image(image, keys, signed)
    except SigningFailed as exc:
        raise Failure(exit_codes.BAD_INPUT, str(exc), title="Signing failed") from None
    workflow.info(f"signed {image.name} with {len(keys)} key(s) into {signed}")
    return signed


def public_keys(inputs: BuildInputs) -> list[bytes]:
    """What the image must verify against: the signing keys' public halves, and the verify key."""
    from otaship.firmware.signing import SigningFailed, public_key_of

    try:
        return [public_key_of(key) for key in inputs.signing_keys] + list(inputs.verify_keys)
    except SigningFailed as exc:
        raise Failure(exit_codes.BAD_INPUT, str(exc), title="Signing key") from None


def check_signature(image: Path, firmware: FirmwareImage, keys: list[bytes], report: DeployReport) -> None:
    """Read which keys signed the image; with `keys`, fail unless each verifies."""
    from otaship.firmware.image import SECTOR_SIZE
    from otaship.firmware.signatures import Refusal, SignatureRefused, read_sector, verify_signature
    from otaship.firmware.signing_keys import InvalidKey, load_public_key

    if firmware.signature_sector is not None:
        with image.open("rb") as file:
            file.seek(firmware.signature_sector)
            sector = read_sector(file.read(SECTOR_SIZE))
        report.signed_by = [block.key_digest for block in sector.blocks]
    for pem in keys:
        try:
            key = load_public_key(pem)
        except InvalidKey as exc:
            raise Failure(
                exit_codes.BAD_INPUT, f"the verify key cannot be used: {exc}", title="Signature"
            ) from None
        try:
            verify_signature(image, firmware, [key])
        except SignatureRefused as exc:
            # The receiver's wording speaks of a group's keys; here there is one key, ours.
            if exc.reason is Refusal.UNKNOWN_KEY and key.digest in report.signed_by:
                detail = (
                    f"{firmware.chip} reads only the first signature block, which is by key "
                    f"{report.signed_by[0]}: it cannot take a second key for a rotation"
                )
            elif exc.reason is Refusal.UNKNOWN_KEY:
                detail = f"no signature block is by it; the image's blocks are by key {', '.join(report.signed_by)}"
            elif exc.reason is Refusal.UNSIGNED:
                detail = "the image carries no Secure Boot V2 signature block"
            else:
                detail = str(exc)
            raise Failure(
                exit_codes.BAD_INPUT,
                f"{image.name} does not pass the signature check with key {key.digest}: {detail}",
                title="Signature",
            ) from None


def check_firmware(
    image: Path, report: DeployReport, workflow: Workflow, verify_keys: list[bytes] | None = None
) -> None:
    """Validate the image the way the receiver will, before spending an upload on it."""
    from otaship.firmware.image import InvalidFirmware, inspect_firmware

    try:
        firmware = inspect_firmware(image)
    except InvalidFirmware as exc:
        raise Failure(
            exit_codes.BAD_INPUT, f"{image} is not a valid ESP32 app image: {exc}", title="Invalid image"
        ) from None
    check_signature(image, firmware, verify_keys or [], report)
    report.firmware_path = str(image)
    report.size = firmware.size
    report.sha256 = firmware.sha256
    report.chip = firmware.chip
    mismatch = app_version_mismatch(report.version, firmware.app.version if firmware.app else None)
    if mismatch:
        workflow.warning(mismatch, title="Version mismatch")
        report.notes.append(mismatch)
    workflow.info(f"image {image}: {firmware.chip}, {firmware.size} bytes, sha256 {firmware.sha256}")
    if report.signed_by:
        workflow.info(f"signature blocks by key digest {', '.join(report.signed_by)}")


def prepare(
    inputs: BuildInputs, report: DeployReport, workflow: Workflow, environ: Mapping[str, str]
) -> Path:
    # The version comes first so that a bad tag fails before minutes of building.
    report.version = resolve_run_version(inputs, environ)
    workflow.info(f"version {report.version}")
    image = locate_firmware(inputs, report, workflow, environ)
    # The keys are read before signing: a bad one fails before espsecure sees it.
    keys = public_keys(inputs)
    if inputs.signing_keys:
        image = sign_firmware(image, inputs.signing_keys, workflow)
    check_firmware(image, report, workflow, keys)
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
    github: GithubDeployment | None = None
    try:
        image = prepare(inputs.build, report, workflow, environ)
        with client or make_client(inputs.receiver, workflow) as receiver:
            deploy(inputs, image, receiver, report, workflow)
            github = start_github_deployment(inputs, report, workflow, receiver)
            code = follow_if_asked(inputs, receiver, report, workflow, github)
    except Failure as failure:
        report_failure(failure, report, workflow)
        code = failure.code
    except Exception as exc:
        # A bug, not a verdict: annotate and summarise it, then let the traceback show.
        report.failure = f"unexpected error: {type(exc).__name__}: {exc}"
        workflow.error(report.failure, title="otaship-deploy crashed")
        raise
    finally:
        if github is not None:
            finish_github_deployment(github, report, timed_out=code == exit_codes.FOLLOW_TIMEOUT)
        workflow.set_outputs(deploy_outputs(report))
        workflow.append_summary(render_summary(report))
    return code


def start_github_deployment(
    inputs: DeployInputs, report: DeployReport, workflow: Workflow, receiver: ReceiverClient
) -> GithubDeployment | None:
    """The GitHub Deployment of this upload, with its first `in_progress` status."""
    if inputs.github is None:
        return None
    group_name = group_name_of(inputs.group, report, receiver, workflow)
    github = GithubDeployment(inputs.github, warn=lambda m: workflow.warning(m, title="GitHub deployment"))
    if report.rollout_id:
        github.log_url = f"{inputs.receiver.url.rstrip('/')}/v1/rollouts/{report.rollout_id}"
    github.create(
        ref=inputs.commit or report.version,
        group_name=group_name,
        version=report.version,
        rollout_id=report.rollout_id or None,
    )
    github.status(*progress_status(report.version, report.rollout))
    return github


def group_name_of(group: str, report: DeployReport, receiver: ReceiverClient, workflow: Workflow) -> str:
    """The name of the deploy's group, which names its GitHub environment.

    The deploy's answer says it (its rollout's group, or the group's own OTA
    record); a 409 or an older receiver does not, and then `GET /v1/ota/group`
    is asked. When neither says, the group's id stands in, and a warning says so:
    the environment would otherwise change name without a word."""
    for said in (report.rollout, report.ota):
        if said and said.get("group") == group:
            name = said.get("group_name")
            if isinstance(name, str) and name:
                return name
    try:
        listed = receiver.group_name(group)
        why = "GET /v1/ota/group has no record of it yet"
    except ReceiverError as exc:
        listed, why = None, f"GET /v1/ota/group: {exc.message}"
    if listed:
        return listed
    workflow.warning(
        f"the name of group {group} could not be read ({why}): the GitHub environment is "
        f"{environment_for(group)} instead of firmware/<group name>",
        title="GitHub deployment",
    )
    return group


def finish_github_deployment(github: GithubDeployment, report: DeployReport, *, timed_out: bool) -> None:
    github.status(
        *final_status(report.version, report.rollout, failure=report.failure or None, timed_out=timed_out)
    )
    github.close()
    # Said in the summary: the deploy went on whatever GitHub answered.
    report.notes.extend(f"GitHub deployment not fully reported: {failure}" for failure in github.failures)


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
        + (f" in waves {inputs.rollout.waves}" if inputs.rollout.waves else "")
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
            f"{report.version} deployed to canary subgroup {first_wave(inputs.rollout)} of group {inputs.group} "
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


def first_wave(rollout: RolloutRequest) -> str:
    """The canary: `canary`, or the first of `waves`."""
    return rollout.canary or (rollout.waves or "").split(",")[0].strip()


def follow_if_asked(
    inputs: DeployInputs,
    receiver: ReceiverClient,
    report: DeployReport,
    workflow: Workflow,
    github: GithubDeployment | None = None,
) -> int:
    try:
        if report.rollout is None and report.deployed is False and inputs.wait and inputs.rollout.staged:
            # Nothing was redeployed; the job's verdict is that of the version's own rollout.
            found = find_version_rollout(receiver, inputs.group, report.version)
            if found is not None:
                workflow.info(f"following the existing rollout {found.get('id')} of {report.version}")
                report.rollout = found
                report.rollout_state = str(found.get("state", ""))
        if report.rollout is None or not inputs.wait:
            return exit_codes.OK
        return follow(
            str(report.rollout["id"]),
            inputs.timeout,
            inputs.poll_interval,
            receiver,
            report,
            workflow,
            on_stage=(lambda rollout: github.status(*progress_status(report.version, rollout)))
            if github
            else None,
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
    on_stage: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    def fetch() -> dict[str, Any]:
        rollout = receiver.rollout(rollout_id)
        changed = str(rollout.get("state", "")) != report.rollout_state
        report.rollout = rollout
        report.rollout_state = str(rollout.get("state", ""))
        if changed and on_stage is not None and report.rollout_state not in TERMINAL_STATES:
            on_stage(rollout)
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
