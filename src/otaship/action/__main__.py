"""`otaship-deploy` / `python -m otaship.action`: build, deploy and follow from any CI.

Every option falls back to an OTASHIP_* environment variable, which is how
action.yml passes its inputs (never by pasting them into a shell line). Empty
values count as unset, since an unset action input arrives as "".
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

from otaship.action import exit_codes
from otaship.action.workflow import Workflow

PROG = "otaship-deploy"
EXIT_CODES_HELP = """exit codes:
  0  deployed (and, when following, the rollout completed)
  1  the build, the upload or the receiver failed
  2  bad input or configuration (version, project, image, credentials, group)
  3  the rollout halted or was aborted
  4  the rollout was still running when --timeout ran out
"""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as an annotation, with exit code 2."""

    workflow: Workflow | None = None

    def error(self, message: str) -> NoReturn:
        if self.workflow is not None and self.workflow.annotations:
            self.workflow.error(message, title=f"{PROG} usage")
        self.print_usage(sys.stderr)
        self.exit(exit_codes.BAD_INPUT, f"{self.prog}: error: {message}\n")


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def positive_seconds(text: str) -> int:
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be more than 0 and at most 1 (a fraction of the canary)"
        )
    return value


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of devices") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"true", "yes", "1", "on"}:
        return True
    if lowered in {"false", "no", "0", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def receiver_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL such as https://ota.example.com")
    return text.strip()


def build_parser(environ: Mapping[str, str], workflow: Workflow | None = None) -> Parser:
    def env(name: str, *fallbacks: str) -> str | None:
        for key in (name, *fallbacks):
            value = environ.get(key, "").strip()
            if value:
                return value
        return None

    def option(
        group: argparse._ActionsContainer,
        flag: str,
        var: str,
        help_text: str,
        *,
        type: Callable[[str], Any] = str,
        default: str | None = None,
        fallbacks: Sequence[str] = (),
    ) -> None:
        # A string default goes through `type` too, so a bad variable fails like a bad flag.
        value = env(var, *fallbacks) or default
        group.add_argument(
            flag,
            default=value,
            type=type,
            metavar=var.removeprefix("OTASHIP_"),
            help=f"{help_text} (env {var})",
        )

    parser = Parser(
        prog=PROG,
        description="Build a PlatformIO project, deploy its image to an otaship receiver, follow the rollout.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.workflow = workflow
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def add_command(name: str, help_text: str) -> Parser:
        command: Parser = commands.add_parser(
            name, help=help_text, epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        command.workflow = workflow
        return command

    def add_build_options(command: argparse.ArgumentParser) -> None:
        group = command.add_argument_group("build")
        option(
            group,
            "--version",
            "OTASHIP_VERSION",
            "version to deploy; default: the tag (GITHUB_REF_NAME or CI_COMMIT_TAG), leading v stripped",
        )
        option(group, "--project-dir", "OTASHIP_PROJECT_DIR", "PlatformIO project folder", default=".")
        option(
            group,
            "--environment",
            "OTASHIP_ENVIRONMENT",
            "PlatformIO env; default: the single default_envs or the only env",
        )
        option(group, "--firmware", "OTASHIP_FIRMWARE", "a prebuilt image to deploy instead of building")

    def add_receiver_options(command: argparse.ArgumentParser) -> None:
        group = command.add_argument_group("receiver")
        option(group, "--receiver-url", "OTASHIP_RECEIVER_URL", "receiver base URL", type=receiver_url)
        option(
            group,
            "--api-key",
            "OTASHIP_API_KEY",
            "API key of the group's owner; prefer the variable to the flag",
        )

    def add_follow_options(command: argparse.ArgumentParser) -> None:
        group = command.add_argument_group("following the rollout")
        option(
            group,
            "--timeout",
            "OTASHIP_TIMEOUT",
            "seconds to follow the rollout",
            type=positive_number,
            default="3600",
        )
        option(
            group,
            "--poll-interval",
            "OTASHIP_POLL_INTERVAL",
            "seconds between rollout polls",
            type=positive_number,
            default="5",
        )

    version = add_command("version", "print the version this run would deploy")
    option(version, "--version", "OTASHIP_VERSION", "explicit version; default: the tag")

    build = add_command(
        "build", "build the project and check the image (writes version, firmware-path, sha256, size)"
    )
    add_build_options(build)

    deploy = add_command("deploy", "build (unless --firmware), check, upload and follow the rollout")
    add_build_options(deploy)
    add_receiver_options(deploy)
    target = deploy.add_argument_group("target and rollout")
    option(target, "--group", "OTASHIP_GROUP", "group id (24 hex)")
    option(target, "--group-token", "OTASHIP_GROUP_TOKEN", "group token; prefer the variable to the flag")
    option(
        target,
        "--commit",
        "OTASHIP_COMMIT",
        "source revision stored with the OTA; default GITHUB_SHA or CI_COMMIT_SHA",
        fallbacks=("GITHUB_SHA", "CI_COMMIT_SHA"),
    )
    option(
        target, "--canary", "OTASHIP_CANARY", "canary subgroup id: deploy there first, then the whole group"
    )
    option(
        target,
        "--canary-timeout",
        "OTASHIP_CANARY_TIMEOUT",
        "seconds the canary (and the fleet) stage may take",
        type=positive_seconds,
    )
    option(
        target,
        "--success-threshold",
        "OTASHIP_SUCCESS_THRESHOLD",
        "fraction (0-1] of canary devices that must succeed",
        type=fraction,
    )
    option(
        target,
        "--error-threshold",
        "OTASHIP_ERROR_THRESHOLD",
        "number of failed canary devices tolerated",
        type=count,
    )
    option(
        target,
        "--soak",
        "OTASHIP_SOAK",
        "seconds the canary must stay healthy before promotion",
        type=seconds,
    )
    option(
        target,
        "--auto-promote",
        "OTASHIP_AUTO_PROMOTE",
        "promote to the fleet automatically (true/false)",
        type=boolean,
    )
    option(
        target,
        "--wait",
        "OTASHIP_WAIT",
        "follow the rollout to its end (true/false)",
        type=boolean,
        default="true",
    )
    add_follow_options(deploy)

    follow = add_command("follow", "follow an existing rollout to its end")
    follow.add_argument("rollout_id", metavar="ROLLOUT_ID")
    add_receiver_options(follow)
    add_follow_options(follow)
    return parser


def require(
    parser: argparse.ArgumentParser, args: argparse.Namespace, names: Sequence[tuple[str, str, str]]
) -> None:
    missing = [
        f"{label} (input {name}, --{name}, {var})"
        for label, name, var in names
        if not getattr(args, name.replace("-", "_"))
    ]
    if missing:
        parser.error("missing " + "; ".join(missing))


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, stdout: TextIO | None = None
) -> int:
    environ = os.environ if environ is None else environ
    workflow = Workflow.from_environ(environ, stdout)
    parser = build_parser(environ, workflow)
    args = parser.parse_args(argv)

    # Imported here so that `--help` does not load httpx, semver or esptool.
    from otaship.action import deploy
    from otaship.action.client import RolloutRequest

    def build_inputs() -> deploy.BuildInputs:
        return deploy.BuildInputs(
            project_dir=Path(args.project_dir),
            environment=args.environment,
            firmware=Path(args.firmware) if args.firmware else None,
            version=args.version,
        )

    if args.command == "version":
        from otaship.action.version import VersionError, git_ref_from_environ, resolve_version

        try:
            print(resolve_version(args.version, git_ref_from_environ(environ)), file=workflow.stdout)
        except VersionError as exc:
            workflow.error(str(exc), title="No valid version")
            return exit_codes.BAD_INPUT
        return exit_codes.OK
    if args.command == "build":
        return deploy.run_build_command(build_inputs(), workflow, environ)
    if args.command == "follow":
        require(
            parser,
            args,
            [
                ("receiver URL", "receiver-url", "OTASHIP_RECEIVER_URL"),
                ("API key", "api-key", "OTASHIP_API_KEY"),
            ],
        )
        receiver = deploy.ReceiverInputs(args.receiver_url, args.api_key)
        return deploy.run_follow_command(
            args.rollout_id, receiver, args.timeout, args.poll_interval, workflow
        )
    # Masked before a usage error could echo them.
    workflow.mask(args.api_key)
    workflow.mask(args.group_token)
    require(
        parser,
        args,
        [
            ("receiver URL", "receiver-url", "OTASHIP_RECEIVER_URL"),
            ("API key", "api-key", "OTASHIP_API_KEY"),
            ("group id", "group", "OTASHIP_GROUP"),
            ("group token", "group-token", "OTASHIP_GROUP_TOKEN"),
        ],
    )
    inputs = deploy.DeployInputs(
        build=build_inputs(),
        receiver=deploy.ReceiverInputs(args.receiver_url, args.api_key),
        group=args.group,
        token=args.group_token,
        commit=args.commit,
        rollout=RolloutRequest(
            canary=args.canary,
            canary_timeout=args.canary_timeout,
            success_threshold=args.success_threshold,
            error_threshold=args.error_threshold,
            soak=args.soak,
            auto_promote=args.auto_promote,
        ),
        wait=args.wait,
        timeout=args.timeout,
        poll_interval=args.poll_interval,
    )
    return deploy.run_deploy_command(inputs, workflow, environ)


if __name__ == "__main__":
    sys.exit(main())
