"""What a release delivery means for a binding (pure)."""

from __future__ import annotations

import pytest

from otaship.receiver.github.release import (
    Asset,
    NoImage,
    NotARelease,
    Release,
    ignored_because,
    image_asset,
    release_of,
    version_of_tag,
)
from tests.github_standin import release_payload


def release(*, prerelease: bool = False, draft: bool = False) -> Release:
    return Release(
        id=1,
        tag="v1.4.0",
        target_commitish="main",
        prerelease=prerelease,
        draft=draft,
        html_url="",
        assets=(),
    )


def test_a_documented_release_payload_is_read() -> None:
    payload = release_payload(assets=[(7, "firmware.bin", 1000), (8, "firmware.elf", 9000)], prerelease=True)
    read = release_of(payload)
    assert read == Release(
        id=1,
        tag="v1.4.0",
        target_commitish="main",
        prerelease=True,
        draft=False,
        html_url="https://github.com/octo-org/thermostat/releases/tag/v1.4.0",
        assets=(Asset(7, "firmware.bin", 1000), Asset(8, "firmware.elf", 9000)),
    )
    assert Release.from_json(read.to_json()) == read


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop("release"), "no release object"),
        (lambda p: p["release"].pop("tag_name"), "release.tag_name is missing or not a str"),
        (lambda p: p["release"].update(id="1"), "release.id is missing or not a int"),
        (lambda p: p["release"].update(id=True), "release.id is missing or not a int"),
        (lambda p: p["release"].update(prerelease="no"), "release.prerelease is missing or not a bool"),
        (lambda p: p["release"].update(assets={}), "release.assets is not a list"),
        (lambda p: p["release"]["assets"][0].pop("name"), "release.name is missing or not a str"),
    ],
)
def test_a_payload_without_what_a_release_has_is_refused(change: object, message: str) -> None:
    payload = release_payload(assets=[(7, "firmware.bin", 1000)])
    change(payload)  # type: ignore[operator]
    with pytest.raises(NotARelease, match=message):
        release_of(payload)


@pytest.mark.parametrize(
    ("action", "prerelease", "draft", "allow", "expected"),
    [
        ("published", False, False, False, None),
        ("published", True, False, True, None),
        (
            "published",
            True,
            False,
            False,
            "release v1.4.0 is a prerelease and the binding does not deploy prereleases (bind with --prereleases)",
        ),
        ("published", False, True, True, "release v1.4.0 is a draft"),
        (
            "prereleased",
            True,
            False,
            True,
            "release prereleased: the published delivery of the same release deploys it",
        ),
        (
            "prereleased",
            True,
            False,
            False,
            "release prereleased: the published delivery of the same release deploys it",
        ),
        ("created", False, False, True, "release created: only a published release deploys"),
        ("released", False, False, True, "release released: only a published release deploys"),
        ("edited", False, False, True, "release edited: only a published release deploys"),
        ("deleted", False, False, True, "release deleted: only a published release deploys"),
        (None, False, False, True, "release None: only a published release deploys"),
    ],
)
def test_only_a_published_release_deploys(
    action: str | None, prerelease: bool, draft: bool, allow: bool, expected: str | None
) -> None:
    assert (
        ignored_because(action, release(prerelease=prerelease, draft=draft), allow_prereleases=allow)
        == expected
    )


@pytest.mark.parametrize(
    ("tag", "version"),
    [
        ("v1.4.0", "1.4.0"),
        ("1.4.0", "1.4.0"),
        ("v2.0.0-rc.1+build.5", "2.0.0-rc.1+build.5"),
        (" v1.0.0 ", "1.0.0"),
    ],
)
def test_the_version_is_the_tag_as_the_action_reads_it(tag: str, version: str) -> None:
    assert version_of_tag(tag) == version


@pytest.mark.parametrize("tag", ["release-1", "v1.4", "vv1.4.0", "V1.4.0", "1.4.0.1", "", "v01.4.0"])
def test_a_tag_that_is_not_semver_is_refused(tag: str) -> None:
    with pytest.raises(ValueError, match="is not a semantic version"):
        version_of_tag(tag)


ASSETS = (Asset(1, "firmware-esp32.bin", 10), Asset(2, "firmware.elf", 10), Asset(3, "bootloader.bin", 10))


def test_exactly_one_matching_asset_is_the_image() -> None:
    assert image_asset(ASSETS, "firmware*.bin") == ASSETS[0]
    assert image_asset(ASSETS, "bootloader.bin") == ASSETS[2]


def test_no_matching_asset_names_those_found() -> None:
    with pytest.raises(NoImage) as caught:
        image_asset(ASSETS, "app*.bin")
    assert (
        str(caught.value)
        == "no asset matches 'app*.bin': found firmware-esp32.bin, firmware.elf, bootloader.bin"
    )
    with pytest.raises(NoImage) as caught:
        image_asset((), "*.bin")
    assert str(caught.value) == "no asset matches '*.bin': the release has no assets"
    # Case matters, as it does on GitHub.
    with pytest.raises(NoImage):
        image_asset(ASSETS, "FIRMWARE*.bin")


def test_two_matching_assets_are_named() -> None:
    with pytest.raises(NoImage) as caught:
        image_asset(ASSETS, "*.bin")
    assert str(caught.value) == (
        "2 assets match '*.bin' (firmware-esp32.bin, bootloader.bin): bind with a pattern that matches exactly one"
    )


def test_many_assets_are_named_up_to_ten() -> None:
    many = tuple(Asset(i, f"a{i}.zip", 1) for i in range(15))
    with pytest.raises(NoImage) as caught:
        image_asset(many, "*.bin")
    assert str(caught.value).endswith("a9.zip and 5 more")
