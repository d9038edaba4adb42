"""The GitHub Deployment both the action and the receiver create (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from otaship.github_deployments import (
    KEY_FIELD,
    created_with,
    deployment_request,
    environment_for,
    lookup_query,
)

COMMIT = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


@pytest.mark.parametrize("name", ["thermostats", "hallway lamps", "fleet"])
def test_one_environment_per_group(name: str) -> None:
    assert environment_for(name) == f"firmware/{name}"


def test_the_request_carries_its_key_and_asks_for_no_checks_or_merge() -> None:
    request = deployment_request(
        ref=COMMIT, environment="firmware/lamps", version="1.4.0", rollout_id="r1", key="k1"
    )
    assert request == {
        "ref": COMMIT,
        "environment": "firmware/lamps",
        "description": "otaship 1.4.0",
        "payload": {"version": "1.4.0", "rollout_id": "r1", "otaship_key": "k1"},
        "auto_merge": False,
        "required_contexts": [],
        "production_environment": True,
    }
    assert lookup_query(request) == {"ref": COMMIT, "environment": "firmware/lamps", "per_page": "100"}


def deployment(id_: Any, payload: Any) -> dict[str, Any]:
    return {"id": id_, "ref": COMMIT, "environment": "firmware/lamps", "payload": payload}


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ([], None),
        ([deployment(7, {KEY_FIELD: "k1"})], 7),
        # Newest first: another deploy of the same commit is passed over.
        ([deployment(9, {KEY_FIELD: "k2"}), deployment(7, {KEY_FIELD: "k1"})], 7),
        ([deployment(9, {KEY_FIELD: "k2"})], None),
        # Deployments otaship did not create, or created before keys.
        ([deployment(5, {}), deployment(6, "k1"), deployment(8, {"version": "1.4.0"})], None),
        ([deployment("7", {KEY_FIELD: "k1"}), deployment(None, {KEY_FIELD: "k1"})], None),
        ([deployment(True, {KEY_FIELD: "k1"})], None),
        (["k1", 7, None], None),
        ({"message": "Not Found"}, None),
        (None, None),
    ],
)
def test_a_retry_finds_only_the_deployment_with_its_key(listed: object, expected: int | None) -> None:
    assert created_with(listed, "k1") == expected
