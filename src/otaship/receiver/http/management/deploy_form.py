"""The text fields of POST /v1/ota/group, checked before anything is stored.

Two steps, at the places the spec orders them: the mandatory fields and the
group id first (before the plan and the group lookup), then the token's
neighbours, the version and the optional fields (before the image). All of
them run before the image is stored or a row is written, so a bad field
leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass

import semver

from otaship.receiver.fields import TRIMMED, BadField, fraction, text, whole_number
from otaship.receiver.fields import flag as parse_flag
from otaship.receiver.ids import is_id
from otaship.receiver.rollouts.policy import Policy, validate_policy

MANDATORY_FIELDS = ("group", "token", "version")
ROLLOUT_FIELDS = ("canary_timeout", "success_threshold", "error_threshold", "soak", "auto_promote")
MAX_VERSION_LENGTH = 64
# A git commit id is 40 hex characters (64 with SHA-256); the column holds 64.
MAX_COMMIT_LENGTH = 64
# Bounds no real rollout reaches, and that fit a 32-bit integer column.
WEEK = 7 * 24 * 3600
MAX_STAGE_SECONDS = WEEK
MAX_TOLERATED_FAILURES = 1_000_000
DEFAULT_CANARY_TIMEOUT = 1800


class NoFile(BadField):
    """The spec's "No file uploaded", with a hint at the field it did not find."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("No file uploaded")
        usage = "send the image as a file in the form field firmware (curl -F firmware=@firmware.bin)"
        # curl -F firmware=firmware.bin, without the @: the path came as text.
        self.hint = f"firmware came as text, not a file: {usage}" if "firmware" in fields else usage


@dataclass(frozen=True)
class DeployTarget:
    group_id: str
    token: str
    version: str


@dataclass(frozen=True)
class DeployOptions:
    commit: str | None
    canary_id: str | None
    policy: Policy | None


def _value(fields: dict[str, str], name: str) -> str:
    return fields.get(name, "").strip(TRIMMED)


def parse_target(fields: dict[str, str], *, has_file: bool) -> DeployTarget:
    """The spec's second step: mandatory fields, the group id, the file (its 400 messages)."""
    for name in MANDATORY_FIELDS:
        if not _value(fields, name):
            raise BadField(f"{name} is a mandatory field")
    group_id = _value(fields, "group")
    if not is_id(group_id):
        raise BadField("Group ID is not valid")
    if not has_file:
        raise NoFile(fields)
    return DeployTarget(group_id=group_id, token=_value(fields, "token"), version=_value(fields, "version"))


def valid_version(version: str) -> bool:
    return len(version) <= MAX_VERSION_LENGTH and semver.Version.is_valid(version)


def check_version(version: str) -> None:
    if not valid_version(version):
        raise BadField(
            f"Version {version[:MAX_VERSION_LENGTH]!r} is not valid: use semantic versioning, e.g. 1.5.7"
        )


def parse_options(fields: dict[str, str]) -> DeployOptions:
    """`commit`, `canary` and the rollout fields, which only mean something with `canary`."""
    commit = text(fields.get("commit"), name="commit", max_length=MAX_COMMIT_LENGTH) or None
    raw_canary = _value(fields, "canary")
    if not raw_canary:
        stray = [name for name in ROLLOUT_FIELDS if _value(fields, name)]
        if stray:
            raise BadField(f"{stray[0]} only applies to a rollout: add a canary subgroup")
        return DeployOptions(commit=commit, canary_id=None, policy=None)
    if not is_id(raw_canary):
        raise BadField("Canary ID is not valid")
    return DeployOptions(commit=commit, canary_id=raw_canary, policy=parse_policy(fields))


def parse_policy(fields: dict[str, str]) -> Policy:
    """The rollout fields of a POST, each within its bounds."""
    return validate_policy(
        Policy(
            success_threshold=fraction(
                fields.get("success_threshold"), name="success_threshold", default=1.0
            ),
            error_threshold=whole_number(
                fields.get("error_threshold"),
                name="error_threshold",
                default=0,
                minimum=0,
                maximum=MAX_TOLERATED_FAILURES,
            ),
            canary_timeout=whole_number(
                fields.get("canary_timeout"),
                name="canary_timeout",
                default=DEFAULT_CANARY_TIMEOUT,
                minimum=1,
                maximum=MAX_STAGE_SECONDS,
            ),
            soak=whole_number(
                fields.get("soak"), name="soak", default=0, minimum=0, maximum=MAX_STAGE_SECONDS
            ),
            auto_promote=parse_flag(fields.get("auto_promote"), name="auto_promote", default=True),
        )
    )
