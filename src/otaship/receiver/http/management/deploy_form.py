"""The text fields of POST /v1/ota/group, checked before anything is stored.

Two steps, at the places the spec orders them: the mandatory fields and the
group id first (before the plan and the group lookup), then the token's
neighbours, the version and the optional fields (before the image). All of
them run before the image is stored or a row is written, so a bad field
leaves nothing behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import semver

from otaship.receiver.fields import TRIMMED, BadField, fraction, quoted, text, whole_number
from otaship.receiver.fields import flag as parse_flag
from otaship.receiver.ids import is_id
from otaship.receiver.rollouts.policy import WAVE_FIELDS, Policy, validate_policy

MANDATORY_FIELDS = ("group", "token", "version")
ROLLOUT_FIELDS = (
    "canary_timeout",
    "success_threshold",
    "error_threshold",
    "soak",
    "auto_promote",
    "max_failure_rate",
    "min_devices",
    "rollback",
)
# A wave's own policy: `wave2.soak=600` (waves count from 1, the canary).
WAVE_OVERRIDE = re.compile(r"wave([0-9]{1,3})\.([a-z_]+)")
# More waves than any fleet needs; each is a subgroup checked in the database.
MAX_WAVES = 20
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
    # The first wave (the canary); None for a plain deploy.
    canary_id: str | None
    policy: Policy | None
    # The waves after the canary, each with its policy.
    waves: list[tuple[str, Policy]] = field(default_factory=list)
    # On a halt, give each wave that got the version back what it ran before.
    # Opt-in: it sends devices a second image over the air, and an older image
    # may be exactly what the new one was meant to fix.
    rollback: bool = False


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
    """`commit`, `canary` or `waves`, and the rollout fields, which only mean
    something with one of those. `waves` is one field of comma-separated
    subgroup ids, in order; `canary=X` is `waves=X`."""
    commit = text(fields.get("commit"), name="commit", max_length=MAX_COMMIT_LENGTH) or None
    raw_canary = _value(fields, "canary")
    raw_waves = _value(fields, "waves")
    overrides = sorted(name for name in fields if WAVE_OVERRIDE.fullmatch(name) and _value(fields, name))
    if not raw_canary and not raw_waves:
        stray = [name for name in ROLLOUT_FIELDS if _value(fields, name)] + overrides
        if stray:
            raise BadField(f"{stray[0]} only applies to a rollout: add a canary subgroup")
        return DeployOptions(commit=commit, canary_id=None, policy=None)
    if raw_canary and raw_waves:
        raise BadField("give canary or waves, not both: canary=X is waves=X")
    if raw_canary:
        if not is_id(raw_canary):
            raise BadField("Canary ID is not valid")
        wave_ids = [raw_canary]
    else:
        wave_ids = parse_waves(raw_waves)
    policy = parse_policy(fields)
    policies = [policy for _ in wave_ids]
    for name in overrides:
        match = WAVE_OVERRIDE.fullmatch(name)
        assert match is not None
        number, setting = int(match.group(1)), match.group(2)
        if not 1 <= number <= len(wave_ids):
            raise BadField(f"{name}: there is no wave {number}; the rollout has {len(wave_ids)}")
        if setting not in WAVE_FIELDS:
            raise BadField(f"{name}: a wave may set only {', '.join(WAVE_FIELDS)}")
        try:
            value = getattr(parse_policy({setting: fields[name]}), setting)
        except BadField as exc:
            raise BadField(f"{name}: {exc}") from exc
        policies[number - 1] = replace(policies[number - 1], **{setting: value})
    return DeployOptions(
        commit=commit,
        canary_id=wave_ids[0],
        policy=policies[0],
        waves=list(zip(wave_ids[1:], policies[1:], strict=True)),
        rollback=parse_flag(fields.get("rollback"), name="rollback", default=False),
    )


def parse_waves(raw: str) -> list[str]:
    """Subgroup ids, comma-separated, in order; each once."""
    wave_ids = [part.strip(TRIMMED) for part in raw.split(",")]
    if len(wave_ids) > MAX_WAVES:
        raise BadField(f"waves: at most {MAX_WAVES} waves")
    for position, wave_id in enumerate(wave_ids, start=1):
        if not is_id(wave_id):
            raise BadField(f"waves: wave {position} is not a valid group id: {quoted(wave_id)}")
        if wave_ids.index(wave_id) != position - 1:
            raise BadField(f"waves: wave {position} ({wave_id}) is listed twice")
    return wave_ids


def parse_policy(fields: dict[str, str]) -> Policy:
    """The rollout fields of a POST, each within its bounds."""
    max_failure_rate = fields.get("max_failure_rate")
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
            max_failure_rate=(
                fraction(max_failure_rate, name="max_failure_rate", default=1.0)
                if max_failure_rate is not None and max_failure_rate.strip(TRIMMED)
                else None
            ),
            min_devices=whole_number(
                fields.get("min_devices"),
                name="min_devices",
                default=1,
                minimum=1,
                maximum=MAX_TOLERATED_FAILURES,
            ),
        )
    )
