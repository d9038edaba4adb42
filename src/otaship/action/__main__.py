"""`otaship-deploy` / `python -m otaship.action`: build, deploy and follow from any CI.

Every option falls back to an OTASHIP_* environment variable, which is how
action.yml passes its inputs (never by pasting them into a shell line). Empty
values count as unset, since an unset action input arrives as "".
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar
from urllib.parse import urlsplit

import click

if TYPE_CHECKING:
    from otaship.action.github_deployment import GithubTarget

from otaship.action import exit_codes
from otaship.action.github_deployment import GithubTarget
from otaship.action.workflow import Workflow
from otaship.closed_pipe import quiet_on_closed_pipe

PROG = "otaship-deploy"
# "\b" keeps click from rewrapping the table.
EXIT_CODES_HELP = """\b
exit codes:
  0  deployed (and, when following, the rollout completed)
  1  the build, the upload or the receiver failed
  2  bad input or configuration (version, project, image, credentials, group)
  3  the rollout halted (rolled back or not) or was aborted
  4  the rollout was still running when --timeout ran out
"""
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "show_default": True}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Job:
    """What a run reads besides its options: the job's environment, and where it reports."""

    environ: Mapping[str, str]
    workflow: Workflow

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], stdout: TextIO | None = None) -> Job:
        return cls(environ, Workflow.from_environ(environ, stdout))


# -- values ------------------------------------------------------------------------
# Checks beyond a type's own are option callbacks: each gets the converted value
# (None when the option is unset) and raises click.BadParameter naming it.

TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")
SWITCH_WORDS = click.Choice([*TRUE_WORDS, *FALSE_WORDS], case_sensitive=False)


def switch(ctx: click.Context, param: click.Parameter, value: str | None) -> bool | None:
    """true/yes/1/on or false/no/0/off, in any case: what a workflow input holds."""
    if value is None:
        return None
    return str(SWITCH_WORDS.convert(value.strip(), param, ctx)).lower() in TRUE_WORDS


def receiver_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise click.BadParameter(
            f"{value!r} is not an http(s) URL such as https://ota.example.com", ctx, param
        )
    return value.strip()


def not_nan(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # NaN compares false with both bounds, so a range alone lets it through.
    if value is not None and math.isnan(value):
        raise click.BadParameter("nan is not a number", ctx, param)
    return value


SECONDS = click.FloatRange(min=0, min_open=True)
FRACTION = click.FloatRange(min=0, max=1, min_open=True)


# -- options -------------------------------------------------------------------------


class EnvOption(click.Option):
    """An option that falls back to the job's environment variables, the first set one.

    The environment is the one `main` was given, not always os.environ, and a
    value of blanks counts as unset. `section` heads the option in the help.
    """

    def __init__(self, *args: Any, section: str = "Options", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        job = ctx.find_object(Job)
        environ = job.environ if job is not None else os.environ
        names = [self.envvar] if isinstance(self.envvar, str) else list(self.envvar or ())
        for name in names:
            value = environ.get(name, "").strip()
            if value:
                return value
        return None


def env_option(
    flag: str,
    var: str,
    help_text: str,
    *,
    section: str,
    type: click.ParamType[Any] | None = None,
    callback: Callable[[click.Context, click.Parameter, Any], Any] | None = None,
    default: str | None = None,
    fallbacks: Sequence[str] = (),
) -> Callable[[F], F]:
    return click.option(
        flag,
        cls=EnvOption,
        section=section,
        envvar=[var, *fallbacks],
        show_envvar=True,
        metavar=var.removeprefix("OTASHIP_"),
        type=type,
        callback=callback,
        default=default,
        help=help_text,
    )


class SectionedCommand(click.Command):
    """Its help lists the options under their sections (build, receiver...)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "section", "Options"), []).append(record)
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows)


def stacked(*options: Callable[[F], F]) -> Callable[[F], F]:
    """The options as one decorator, listed in this order in the help."""

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


build_options = stacked(
    env_option(
        "--version",
        "OTASHIP_VERSION",
        "version to deploy; default: the tag (GITHUB_REF_NAME or CI_COMMIT_TAG), leading v stripped",
        section="Build",
    ),
    env_option(
        "--project-dir", "OTASHIP_PROJECT_DIR", "PlatformIO project folder", section="Build", default="."
    ),
    env_option(
        "--environment",
        "OTASHIP_ENVIRONMENT",
        "PlatformIO env; default: the single default_envs or the only env",
        section="Build",
    ),
    env_option(
        "--firmware", "OTASHIP_FIRMWARE", "a prebuilt image to deploy instead of building", section="Build"
    ),
    env_option(
        "--signing-key",
        "OTASHIP_SIGNING_KEY",
        "PEM private key (or a file holding one) to sign the image with (Secure Boot V2); prefer the variable",
        section="Signing",
    ),
    env_option(
        "--signing-key-2",
        "OTASHIP_SIGNING_KEY_2",
        "a second signing key, during a key rotation: the image gets a block by each",
        section="Signing",
    ),
    env_option(
        "--verify-key",
        "OTASHIP_VERIFY_KEY",
        "PEM public key (or a file holding one): fail unless the image carries a valid block by it",
        section="Signing",
    ),
)

receiver_options = stacked(
    env_option(
        "--receiver-url",
        "OTASHIP_RECEIVER_URL",
        "receiver base URL",
        section="Receiver",
        callback=receiver_url,
    ),
    env_option(
        "--api-key",
        "OTASHIP_API_KEY",
        "API key of the group's owner; prefer the variable to the flag",
        section="Receiver",
    ),
)

follow_options = stacked(
    env_option(
        "--timeout",
        "OTASHIP_TIMEOUT",
        "seconds to follow the rollout",
        section="Following the rollout",
        type=SECONDS,
        default="3600",
    ),
    env_option(
        "--poll-interval",
        "OTASHIP_POLL_INTERVAL",
        "seconds between rollout polls",
        section="Following the rollout",
        type=SECONDS,
        default="5",
    ),
)

TARGET = "Target and rollout"
target_options = stacked(
    env_option("--group", "OTASHIP_GROUP", "group id (24 hex)", section=TARGET),
    env_option(
        "--group-token", "OTASHIP_GROUP_TOKEN", "group token; prefer the variable to the flag", section=TARGET
    ),
    env_option(
        "--commit",
        "OTASHIP_COMMIT",
        "source revision stored with the OTA; default GITHUB_SHA or CI_COMMIT_SHA",
        section=TARGET,
        fallbacks=("GITHUB_SHA", "CI_COMMIT_SHA"),
    ),
    env_option(
        "--canary",
        "OTASHIP_CANARY",
        "canary subgroup id: deploy there first, then the whole group",
        section=TARGET,
    ),
    env_option(
        "--waves",
        "OTASHIP_WAVES",
        "subgroup ids, comma-separated, in order: each wave gets the version after the one before "
        "passed, then the whole group (the first is the canary; use this or --canary)",
        section=TARGET,
    ),
    env_option(
        "--max-failure-rate",
        "OTASHIP_MAX_FAILURE_RATE",
        "halt a wave once --min-devices finished and more than this share (0-1) failed",
        section=TARGET,
        type=FRACTION,
        callback=not_nan,
    ),
    env_option(
        "--min-devices",
        "OTASHIP_MIN_DEVICES",
        "finished devices a wave needs before --max-failure-rate applies",
        section=TARGET,
        type=click.IntRange(min=1),
    ),
    env_option(
        "--canary-timeout",
        "OTASHIP_CANARY_TIMEOUT",
        "seconds the canary (and the fleet) stage may take",
        section=TARGET,
        type=click.IntRange(min=1),
    ),
    env_option(
        "--success-threshold",
        "OTASHIP_SUCCESS_THRESHOLD",
        "fraction (0-1] of canary devices that must succeed",
        section=TARGET,
        type=FRACTION,
        callback=not_nan,
    ),
    env_option(
        "--error-threshold",
        "OTASHIP_ERROR_THRESHOLD",
        "number of failed canary devices tolerated",
        section=TARGET,
        type=click.IntRange(min=0),
    ),
    env_option(
        "--soak",
        "OTASHIP_SOAK",
        "seconds the canary must stay healthy before promotion",
        section=TARGET,
        type=click.IntRange(min=0),
    ),
    env_option(
        "--auto-promote",
        "OTASHIP_AUTO_PROMOTE",
        "promote to the fleet automatically (true/false)",
        section=TARGET,
        callback=switch,
    ),
    env_option(
        "--rollback",
        "OTASHIP_ROLLBACK",
        "on a halt, give each wave that got the version back what it ran before (true/false; default false)",
        section=TARGET,
        callback=switch,
    ),
    env_option(
        "--wait",
        "OTASHIP_WAIT",
        "follow the rollout to its end (true/false)",
        section=TARGET,
        callback=switch,
        default="true",
    ),
)


GITHUB = "Reporting to GitHub"
github_options = stacked(
    env_option(
        "--github-deployment",
        "OTASHIP_GITHUB_DEPLOYMENT",
        "report the deploy as a GitHub Deployment of the commit (true/false); needs deployments: write",
        section=GITHUB,
        callback=switch,
        default="false",
    ),
    env_option(
        "--github-token",
        "OTASHIP_GITHUB_TOKEN",
        "token that may write deployments; prefer the variable to the flag",
        section=GITHUB,
        fallbacks=("GITHUB_TOKEN",),
    ),
)


def github_target(ctx: click.Context, environ: Mapping[str, str], token: str | None) -> GithubTarget:
    """Where to report, from the job's own GitHub variables."""
    from otaship.action.github_deployment import GithubTarget

    repository = environ.get("GITHUB_REPOSITORY", "")
    if not token or not repository:
        raise click.UsageError(
            "--github-deployment needs a token (input github-token, --github-token, OTASHIP_GITHUB_TOKEN) "
            "and GITHUB_REPOSITORY, as a GitHub workflow has",
            ctx,
        )
    server, run_id = environ.get("GITHUB_SERVER_URL", ""), environ.get("GITHUB_RUN_ID", "")
    return GithubTarget(
        api_url=environ.get("GITHUB_API_URL", "") or "https://api.github.com",
        token=token,
        repository=repository,
        run_url=f"{server}/{repository}/actions/runs/{run_id}" if server and run_id else None,
    )


def require(ctx: click.Context, needed: Sequence[tuple[str, str, str]]) -> None:
    missing = [
        f"{label} (input {name}, --{name}, {var})"
        for label, name, var in needed
        if not ctx.params.get(name.replace("-", "_"))
    ]
    if missing:
        raise click.UsageError("missing " + "; ".join(missing), ctx)


RECEIVER_NEEDED = [
    ("receiver URL", "receiver-url", "OTASHIP_RECEIVER_URL"),
    ("API key", "api-key", "OTASHIP_API_KEY"),
]


# -- commands ------------------------------------------------------------------------


@click.group(
    name=PROG,
    context_settings=CONTEXT_SETTINGS,
    no_args_is_help=False,
    help="Build a PlatformIO project, deploy its image to an otaship receiver, follow the rollout.",
    epilog=EXIT_CODES_HELP,
)
# Not --version: on build, deploy and version that is the firmware's version.
@click.version_option(
    None,
    "-V",
    "--package-version",
    package_name="otaship",
    prog_name=PROG,
    help="Show otaship's version and exit.",
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    if ctx.obj is None:  # invoked as a click command rather than through main()
        ctx.obj = Job.from_environ(os.environ)


@cli.command(
    "version", cls=SectionedCommand, epilog=EXIT_CODES_HELP, help="print the version this run would deploy"
)
@env_option("--version", "OTASHIP_VERSION", "explicit version; default: the tag", section="Options")
@click.pass_obj
def version_command(job: Job, version: str | None) -> int:
    from otaship.action.version import VersionError, git_ref_from_environ, resolve_version

    try:
        print(resolve_version(version, git_ref_from_environ(job.environ)), file=job.workflow.stdout)
    except VersionError as exc:
        job.workflow.error(str(exc), title="No valid version")
        return exit_codes.BAD_INPUT
    return exit_codes.OK


@cli.command(
    "build",
    cls=SectionedCommand,
    epilog=EXIT_CODES_HELP,
    help="build the project and check the image (writes version, firmware-path, sha256, size)",
)
@build_options
@click.pass_obj
def build_command(
    job: Job,
    version: str | None,
    project_dir: str,
    environment: str | None,
    firmware: str | None,
    signing_key: str | None,
    signing_key_2: str | None,
    verify_key: str | None,
) -> int:
    # Imported here so that `--help` does not load httpx, semver or esptool.
    from otaship.action import deploy

    signing = signing_inputs(job, signing_key, signing_key_2, verify_key)
    if isinstance(signing, int):
        return signing
    inputs = deploy.BuildInputs(
        Path(project_dir), environment, Path(firmware) if firmware else None, version, *signing
    )
    return deploy.run_build_command(inputs, job.workflow, job.environ)


def signing_inputs(
    job: Job, signing_key: str | None, signing_key_2: str | None, verify_key: str | None
) -> tuple[tuple[bytes, ...], tuple[bytes, ...]] | int:
    """The signing and verifying keys' PEM (each option a PEM or a file of one),
    the private ones masked before anything else is printed; an exit code when one cannot be read."""
    keys: list[bytes] = []
    for value in (signing_key, signing_key_2, verify_key):
        job.workflow.mask(value)
        if not value:
            keys.append(b"")
            continue
        if "-----BEGIN" in value:
            keys.append(value.encode())
            continue
        try:
            pem = Path(value).read_bytes()
        except OSError as exc:
            job.workflow.error(
                f"a signing or verify key is neither a PEM nor a readable file: {exc.strerror}",
                title="Signing key",
            )
            return exit_codes.BAD_INPUT
        job.workflow.mask(pem.decode("utf-8", "replace"))
        keys.append(pem)
    private = tuple(key for key in keys[:2] if key)
    public = (keys[2],) if keys[2] else ()
    return private, public


@cli.command(
    "deploy",
    cls=SectionedCommand,
    epilog=EXIT_CODES_HELP,
    help="build (unless --firmware), check, upload and follow the rollout",
)
@build_options
@receiver_options
@target_options
@follow_options
@github_options
@click.pass_context
def deploy_command(
    ctx: click.Context,
    version: str | None,
    project_dir: str,
    environment: str | None,
    firmware: str | None,
    signing_key: str | None,
    signing_key_2: str | None,
    verify_key: str | None,
    receiver_url: str | None,
    api_key: str | None,
    group: str | None,
    group_token: str | None,
    commit: str | None,
    canary: str | None,
    waves: str | None,
    max_failure_rate: float | None,
    min_devices: int | None,
    canary_timeout: int | None,
    success_threshold: float | None,
    error_threshold: int | None,
    soak: int | None,
    auto_promote: bool | None,
    rollback: bool | None,
    wait: bool,
    timeout: float,
    poll_interval: float,
    github_deployment: bool,
    github_token: str | None,
) -> int:
    from otaship.action import deploy
    from otaship.action.client import RolloutRequest

    job = ctx.find_object(Job)
    assert job is not None
    # Masked before a usage error could echo them.
    job.workflow.mask(api_key)
    job.workflow.mask(group_token)
    job.workflow.mask(github_token)
    signing = signing_inputs(job, signing_key, signing_key_2, verify_key)
    if isinstance(signing, int):
        return signing
    require(
        ctx,
        [
            *RECEIVER_NEEDED,
            ("group id", "group", "OTASHIP_GROUP"),
            ("group token", "group-token", "OTASHIP_GROUP_TOKEN"),
        ],
    )
    assert receiver_url and api_key and group and group_token
    inputs = deploy.DeployInputs(
        build=deploy.BuildInputs(
            Path(project_dir), environment, Path(firmware) if firmware else None, version, *signing
        ),
        receiver=deploy.ReceiverInputs(receiver_url, api_key),
        group=group,
        token=group_token,
        commit=commit,
        rollout=RolloutRequest(
            canary=canary,
            waves=waves,
            max_failure_rate=max_failure_rate,
            min_devices=min_devices,
            canary_timeout=canary_timeout,
            success_threshold=success_threshold,
            error_threshold=error_threshold,
            soak=soak,
            auto_promote=auto_promote,
            rollback=rollback,
        ),
        wait=wait,
        timeout=timeout,
        poll_interval=poll_interval,
        github=github_target(ctx, job.environ, github_token) if github_deployment else None,
    )
    return deploy.run_deploy_command(inputs, job.workflow, job.environ)


@cli.command(
    "follow", cls=SectionedCommand, epilog=EXIT_CODES_HELP, help="follow an existing rollout to its end"
)
@click.argument("rollout_id", metavar="ROLLOUT_ID")
@receiver_options
@follow_options
@click.pass_context
def follow_command(
    ctx: click.Context,
    rollout_id: str,
    receiver_url: str | None,
    api_key: str | None,
    timeout: float,
    poll_interval: float,
) -> int:
    from otaship.action import deploy

    job = ctx.find_object(Job)
    assert job is not None
    require(ctx, RECEIVER_NEEDED)
    assert receiver_url and api_key
    receiver = deploy.ReceiverInputs(receiver_url, api_key)
    return deploy.run_follow_command(rollout_id, receiver, timeout, poll_interval, job.workflow)


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, stdout: TextIO | None = None
) -> int:
    """Run one command; its exit code. A usage error raises SystemExit(2), as argparse's did."""
    return quiet_on_closed_pipe(lambda: _run(argv, environ, stdout))


def _run(argv: Sequence[str] | None, environ: Mapping[str, str] | None, stdout: TextIO | None) -> int:
    job = Job.from_environ(os.environ if environ is None else environ, stdout)
    try:
        code = cli.main(
            args=None if argv is None else list(argv), prog_name=PROG, standalone_mode=False, obj=job
        )
    except click.UsageError as exc:
        if job.workflow.annotations:
            job.workflow.error(exc.format_message(), title=f"{PROG} usage")
        exc.show()
        raise SystemExit(exit_codes.BAD_INPUT) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.Abort as exc:
        # Outside standalone mode click turns Ctrl-C into Abort: end as Python does.
        if isinstance(exc.__cause__, KeyboardInterrupt | EOFError):
            raise exc.__cause__ from None
        raise
    # --help and --package-version return no code of their own.
    return code if isinstance(code, int) else exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
