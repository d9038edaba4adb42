from __future__ import annotations

import pytest

from otaship.action.version import (
    GitRef,
    VersionError,
    app_version_mismatch,
    git_ref_from_environ,
    resolve_version,
)


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("v1.2.3", "1.2.3"),
        ("1.2.3", "1.2.3"),
        ("v0.0.1", "0.0.1"),
        ("v2.0.0-rc.1+build.5", "2.0.0-rc.1+build.5"),
        ("v1.0.0-alpha", "1.0.0-alpha"),
        ("v1.0.0+20240101", "1.0.0+20240101"),
        ("v10.20.30-beta.2", "10.20.30-beta.2"),
    ],
)
def test_a_semver_tag_becomes_the_version(tag: str, expected: str) -> None:
    assert resolve_version(None, GitRef("tag", tag)) == expected


@pytest.mark.parametrize(
    "tag", ["release-5", "v1.2", "vv1.2.3", "v1.2.3.4", "V1.2.3", "v01.2.3", "latest", "v1.2.3-"]
)
def test_a_tag_that_is_not_semver_says_what_was_expected(tag: str) -> None:
    with pytest.raises(VersionError) as caught:
        resolve_version(None, GitRef("tag", tag))
    message = str(caught.value)
    assert repr(tag) in message
    assert "MAJOR.MINOR.PATCH" in message and "v1.4.0" in message


def test_a_branch_push_without_version_fails_naming_the_branch() -> None:
    with pytest.raises(
        VersionError, match=r"branch 'main', not a tag.*push a tag such as v1.4.0.*version input"
    ):
        resolve_version(None, GitRef("branch", "main"))


def test_no_ref_and_no_version_fails() -> None:
    with pytest.raises(VersionError, match="not for a tag"):
        resolve_version(None, None)
    with pytest.raises(VersionError, match="not for a tag"):
        resolve_version("  ", None)


def test_an_explicit_version_wins_over_the_tag_and_loses_its_v() -> None:
    assert resolve_version("v3.1.4", GitRef("tag", "v1.0.0")) == "3.1.4"
    assert resolve_version(" 3.1.4-rc.2 ", GitRef("branch", "main")) == "3.1.4-rc.2"


def test_an_explicit_version_that_is_not_semver_is_rejected() -> None:
    with pytest.raises(VersionError, match=r"version '1.4' is not a semantic version: expected MAJOR"):
        resolve_version("1.4", GitRef("tag", "v1.4.0"))


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"GITHUB_REF_TYPE": "tag", "GITHUB_REF_NAME": "v1.0.0"}, GitRef("tag", "v1.0.0")),
        ({"GITHUB_REF_TYPE": "branch", "GITHUB_REF_NAME": "main"}, GitRef("branch", "main")),
        ({"GITHUB_REF": "refs/tags/v1.0.0"}, GitRef("tag", "v1.0.0")),
        ({"GITHUB_REF": "refs/heads/feature/x"}, GitRef("branch", "feature/x")),
        ({"CI_COMMIT_TAG": "v4.0.0", "CI_COMMIT_BRANCH": ""}, GitRef("tag", "v4.0.0")),
        ({"CI_COMMIT_BRANCH": "main"}, GitRef("branch", "main")),
        ({"GITHUB_REF": "refs/pull/3/merge"}, None),
        ({}, None),
    ],
)
def test_the_ref_comes_from_github_then_gitlab_variables(
    environ: dict[str, str], expected: GitRef | None
) -> None:
    assert git_ref_from_environ(environ) == expected


@pytest.mark.parametrize(
    ("deployed", "embedded", "warns"),
    [
        ("1.4.0", "1.4.0", False),
        ("1.4.0", "v1.4.0", False),
        ("1.4.0", None, False),
        ("1.4.0", "1.3.9", True),
        ("1.4.0", "", True),
    ],
)
def test_an_app_descriptor_version_that_differs_is_a_warning(
    deployed: str, embedded: str | None, warns: bool
) -> None:
    message = app_version_mismatch(deployed, embedded)
    assert (message is not None) == warns
    if message:
        assert repr(deployed) in message and repr(embedded) in message
