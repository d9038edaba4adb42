"""How a git ref (or an explicit input) becomes the firmware version.

Devices compare version strings and update when they differ, so the version must
be exactly what the tag says, minus the conventional leading `v`. Prerelease and
build metadata are kept: `v2.0.0-rc.1+build.5` ships as `2.0.0-rc.1+build.5`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import semver

EXPECTED = "MAJOR.MINOR.PATCH with optional -prerelease and +build, such as v1.4.0 or v2.0.0-rc.1"


class VersionError(ValueError):
    """No usable version; the message says what was expected."""


@dataclass(frozen=True)
class GitRef:
    kind: str  # "tag", "branch", or "" when the CI does not say
    name: str


def git_ref_from_environ(environ: Mapping[str, str]) -> GitRef | None:
    """The ref this CI run is for: GitHub's variables first, then GitLab's."""
    ref_type = environ.get("GITHUB_REF_TYPE", "")
    ref_name = environ.get("GITHUB_REF_NAME", "")
    if ref_type and ref_name:
        return GitRef(ref_type, ref_name)
    ref = environ.get("GITHUB_REF", "")
    for prefix, kind in (("refs/tags/", "tag"), ("refs/heads/", "branch")):
        if ref.startswith(prefix):
            return GitRef(kind, ref[len(prefix) :])
    if environ.get("CI_COMMIT_TAG"):
        return GitRef("tag", environ["CI_COMMIT_TAG"])
    if environ.get("CI_COMMIT_BRANCH"):
        return GitRef("branch", environ["CI_COMMIT_BRANCH"])
    return None


def normalize_version(text: str) -> str:
    """`v1.2.3` → `1.2.3`; raises ValueError unless the rest is semver."""
    candidate = text.strip()
    if candidate.startswith("v"):
        candidate = candidate[1:]
    # str(Version) would re-render the string; keep the user's exact text, which
    # parse() has just proven to be canonical semver.
    semver.Version.parse(candidate)
    return candidate


def resolve_version(explicit: str | None, ref: GitRef | None) -> str:
    """The version to deploy: the explicit one if given, else the tag's."""
    if explicit and explicit.strip():
        try:
            return normalize_version(explicit)
        except ValueError:
            raise VersionError(
                f"version {explicit.strip()!r} is not a semantic version: expected {EXPECTED}"
            ) from None
    if ref is None:
        raise VersionError(
            "no version given and this run is not for a tag: push a tag such as v1.4.0, "
            "or set the version input (--version, OTASHIP_VERSION)"
        )
    if ref.kind != "tag":
        what = f"{ref.kind} {ref.name!r}" if ref.kind else repr(ref.name)
        raise VersionError(
            f"this run is for {what}, not a tag: push a tag such as v1.4.0 to deploy, "
            "or set the version input (--version, OTASHIP_VERSION)"
        )
    try:
        return normalize_version(ref.name)
    except ValueError:
        raise VersionError(f"tag {ref.name!r} is not a semantic version: expected {EXPECTED}") from None


def app_version_mismatch(version: str, app_version: str | None) -> str | None:
    """A warning when the image says it is another version than the one deployed.

    Not an error: IoTaaP OS devices report the version string they were deployed
    with, not the one compiled into the app descriptor.
    """
    if app_version is None:
        return None
    embedded = app_version.strip()
    if embedded.removeprefix("v") == version:
        return None
    return (
        f"the image's app descriptor says version {embedded!r} but it is deployed as {version!r}; "
        "devices will report the deployed version"
    )
