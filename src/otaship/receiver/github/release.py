"""What a `release` delivery means for a binding: whether it deploys, its
version, and its one image asset. Pure: the webhook and the job decide with it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from typing import Any

import semver

# Assets kept from a delivery: a release has at most 1000; a firmware release a few.
MAX_ASSETS = 100
# Names quoted in a refusal, so that it stays one readable line.
NAMED_ASSETS = 10
EXPECTED = "MAJOR.MINOR.PATCH with optional -prerelease and +build, such as v1.4.0 or v2.0.0-rc.1"


class NotARelease(ValueError):
    """The payload lacks what a release event has; the message names the field."""


class NoImage(ValueError):
    """No asset, or more than one, matches the binding's pattern; the message names those found."""


@dataclass(frozen=True)
class Asset:
    id: int
    name: str
    size: int


@dataclass(frozen=True)
class Release:
    id: int
    tag: str
    target_commitish: str
    prerelease: bool
    draft: bool
    html_url: str
    assets: tuple[Asset, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Release:
        data = json.loads(text)
        return cls(**{**data, "assets": tuple(Asset(**a) for a in data["assets"])})


def _field(data: Any, name: str, kind: type) -> Any:
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise NotARelease(f"release.{name} is missing or not a {kind.__name__}")
    return value


def release_of(payload: Any) -> Release:
    """The release in a `release` event's payload (GitHub's documented shape)."""
    release = payload.get("release") if isinstance(payload, dict) else None
    if not isinstance(release, dict):
        raise NotARelease("the payload has no release object")
    raw_assets = release.get("assets", [])
    if not isinstance(raw_assets, list):
        raise NotARelease("release.assets is not a list")
    assets = tuple(
        Asset(id=_field(a, "id", int), name=_field(a, "name", str), size=_field(a, "size", int))
        for a in raw_assets[:MAX_ASSETS]
    )
    return Release(
        id=_field(release, "id", int),
        tag=_field(release, "tag_name", str),
        target_commitish=_field(release, "target_commitish", str),
        prerelease=_field(release, "prerelease", bool),
        draft=_field(release, "draft", bool),
        html_url=str(release.get("html_url") or ""),
        assets=assets,
    )


def ignored_because(action: str | None, release: Release, *, allow_prereleases: bool) -> str | None:
    """None when the delivery deploys; else why it is ignored.

    GitHub sends `published` for every release that is published, prereleases
    included, and `prereleased` besides for a prerelease: acting on `published`
    alone deploys each release once.
    """
    if action == "prereleased":
        return "release prereleased: the published delivery of the same release deploys it"
    if action != "published":
        return f"release {action}: only a published release deploys"
    if release.draft:
        return f"release {release.tag} is a draft"
    if release.prerelease and not allow_prereleases:
        return (
            f"release {release.tag} is a prerelease and the binding does not deploy prereleases "
            "(bind with --prereleases)"
        )
    return None


def version_of_tag(tag: str) -> str:
    """The action's rule: a leading `v` stripped, and the rest semver, kept as written."""
    candidate = tag.strip()
    candidate = candidate[1:] if candidate.startswith("v") else candidate
    if not semver.Version.is_valid(candidate):
        raise ValueError(f"tag {tag!r} is not a semantic version: expected {EXPECTED}")
    return candidate


def _names(assets: list[Asset]) -> str:
    shown = ", ".join(a.name for a in assets[:NAMED_ASSETS])
    more = f" and {len(assets) - NAMED_ASSETS} more" if len(assets) > NAMED_ASSETS else ""
    return shown + more


def image_asset(assets: tuple[Asset, ...], pattern: str) -> Asset:
    """The one asset whose name matches `pattern` (shell-style, case-sensitive)."""
    matching = [a for a in assets if fnmatchcase(a.name, pattern)]
    if len(matching) == 1:
        return matching[0]
    if not matching:
        found = f"found {_names(list(assets))}" if assets else "the release has no assets"
        raise NoImage(f"no asset matches {pattern!r}: {found}")
    raise NoImage(
        f"{len(matching)} assets match {pattern!r} ({_names(matching)}): "
        "bind with a pattern that matches exactly one"
    )
