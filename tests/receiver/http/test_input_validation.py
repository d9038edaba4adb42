"""Hostile values in every query parameter and form field: a 400 that names the
field, on both databases, and nothing stored when a POST is refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import select
from starlette.testclient import TestClient

from otaship.receiver.db.engine import read_session
from otaship.receiver.db.models import Deployment, Group, GroupOta, Rollout, TriggerMessage
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image

OFFSET_RANGE = "offset must be a whole number from 0 to 1000000000"
CANARY_TIMEOUT_RANGE = "canary_timeout must be a whole number from 1 to 604800"
SOAK_RANGE = "soak must be a whole number from 0 to 604800"
ERROR_THRESHOLD_RANGE = "error_threshold must be a whole number from 0 to 1000000"
LIMIT_RANGE = "limit must be a whole number of 0 or more"


@dataclass
class Setup:
    owner: Owner
    group: Group
    canary: Group


@pytest.fixture
def setup(fleet: Fleet) -> Setup:
    owner = fleet.owner()
    group = fleet.group(owner, name="fleet")
    canary = fleet.group(owner, name="canary", parent=group)
    fleet.device(canary, name="bench", firmware_version="1.0.0")
    return Setup(owner, group, canary)


def stored(services: Services, settings: Settings) -> tuple[int, int, int, int, int]:
    """Objects in storage, then OTA, deployment, rollout and trigger rows."""
    objects = settings.data_dir / "objects"
    files = sum(1 for path in objects.rglob("*") if path.is_file()) if objects.exists() else 0
    with read_session(services.engine) as session:
        rows = tuple(
            session.exec(select(func.count()).select_from(table)).one()
            for table in (GroupOta, Deployment, Rollout, TriggerMessage)
        )
    return (files, *rows)  # type: ignore[return-value]


# --- GET /v1/ota/group -------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # Unicode digits pass str.isdigit(), and int() refuses them.
        ("offset=%C2%B2", f"{OFFSET_RANGE}, not '²'"),
        ("limit=%C2%B2", f"{LIMIT_RANGE}, not '²'"),
        ("offset=%D9%A3", f"{OFFSET_RANGE}, not '٣'"),
        # Past SQLite's 64-bit integers (OverflowError), and past the bound.
        ("offset=9223372036854775808", f"{OFFSET_RANGE}, not '9223372036854775808'"),
        ("offset=1000000001", f"{OFFSET_RANGE}, not '1000000001'"),
        ("offset=" + "9" * 5000, f"{OFFSET_RANGE}, not '{'9' * 32}'"),
        ("offset=1e3", f"{OFFSET_RANGE}, not '1e3'"),
        ("offset=%00", f"{OFFSET_RANGE}, not '\\x00'"),
        # The FTS5 index (SQLite) and PostgreSQL's text both refuse NUL.
        ("search_value=%00%00%00", "search_value must not contain control characters"),
        ("search_value=%00", "search_value must not contain control characters"),
        ("search_value=abc%1Fdef", "search_value must not contain control characters"),
        ("search_value=abc%09def", "search_value must not contain control characters"),
        ("search_value=abc%7F", "search_value must not contain control characters"),
        ("search_value=abc%C2%85", "search_value must not contain control characters"),
        ("search_value=" + "a" * 257, "search_value is too long: at most 256 characters"),
        ("draw=%00", "draw must not contain control characters"),
        ("draw=" + "1" * 65, "draw is too long: at most 64 characters"),
        ("order_dir=%00", "order_dir must be asc or desc, not '\\x00'"),
    ],
)
def test_bad_listing_values_are_400_naming_the_field(
    client: TestClient, setup: Setup, query: str, expected: str
) -> None:
    response = client.get(f"/v1/ota/group?{query}", headers=setup.owner.headers)
    assert response.status_code == 400
    assert response.json() == {"message": expected}


def test_listing_values_at_their_bounds_are_served(client: TestClient, setup: Setup) -> None:
    for query in (
        "offset=1000000000",
        "limit=" + "9" * 5000,
        "offset=0000000000000000000000000001",
        "search_value=" + "a" * 256,
        "draw=" + "1" * 64,
        "search_value=%20firmware.bin%09",
        "search_value=%C3%A9t%C3%A9",
    ):
        response = client.get(f"/v1/ota/group?{query}", headers=setup.owner.headers)
        assert response.status_code == 200, (query, response.text)
        assert response.json()["otas"] == []


# --- POST /v1/ota/group ------------------------------------------------------------


def post(
    client: TestClient,
    s: Setup,
    fields: dict[str, str] | None = None,
    *,
    version: str = "1.1.0",
    rollout: bool = True,
) -> httpx.Response:
    data = {"group": s.group.id, "token": s.group.token, "version": version, **(fields or {})}
    if rollout:
        data.setdefault("canary", s.canary.id)
    response: httpx.Response = client.post(
        "/v1/ota/group",
        headers=s.owner.headers,
        data=data,
        files={"firmware": ("firmware.bin", build_image(version))},
    )
    return response


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"canary_timeout": "²"}, f"{CANARY_TIMEOUT_RANGE}, not '²'"),
        ({"soak": "³"}, f"{SOAK_RANGE}, not '³'"),
        ({"error_threshold": "١"}, f"{ERROR_THRESHOLD_RANGE}, not '١'"),
        # Accepted before: the rollout clock then failed on every tick.
        ({"canary_timeout": "9223372036854775807"}, f"{CANARY_TIMEOUT_RANGE}, not '9223372036854775807'"),
        # Stored the image, then failed: 500.
        ({"canary_timeout": "100000000000000000000"}, f"{CANARY_TIMEOUT_RANGE}, not '100000000000000000000'"),
        ({"canary_timeout": "1e20"}, f"{CANARY_TIMEOUT_RANGE}, not '1e20'"),
        ({"canary_timeout": "604801"}, f"{CANARY_TIMEOUT_RANGE}, not '604801'"),
        ({"soak": "604801"}, f"{SOAK_RANGE}, not '604801'"),
        # Past PostgreSQL's 32-bit integer column.
        ({"error_threshold": "99999999999"}, f"{ERROR_THRESHOLD_RANGE}, not '99999999999'"),
        ({"success_threshold": "nan"}, "success_threshold must be a number in (0, 1], not 'nan'"),
        ({"success_threshold": "inf"}, "success_threshold must be a number in (0, 1], not 'inf'"),
        ({"success_threshold": "1e999"}, "success_threshold must be a number in (0, 1], not '1e999'"),
        ({"success_threshold": "1e-999"}, "success_threshold must be a number in (0, 1], not '1e-999'"),
        ({"success_threshold": "٠.٥"}, "success_threshold must be a number in (0, 1], not '٠.٥'"),
        ({"success_threshold": "0_5"}, "success_threshold must be a number in (0, 1], not '0_5'"),
        ({"auto_promote": "yes\x00"}, "auto_promote must be true or false, not 'yes\\x00'"),
        ({"commit": "ab\x00cd"}, "commit must not contain control characters"),
        ({"commit": "a" * 65}, "commit is too long: at most 64 characters"),
        ({"canary": "\x00" * 24}, "Canary ID is not valid"),
        ({"version": "1.0.0\x00"}, "Version '1.0.0\\x00' is not valid: use semantic versioning, e.g. 1.5.7"),
        ({"version": "١.٢.٣"}, "Version '١.٢.٣' is not valid: use semantic versioning, e.g. 1.5.7"),
    ],
)
def test_bad_fields_are_400_and_store_nothing(
    client: TestClient,
    services: Services,
    settings: Settings,
    setup: Setup,
    fields: dict[str, str],
    expected: str,
) -> None:
    response = post(client, setup, fields)
    assert response.status_code == 400
    assert response.json() == {"message": expected}
    assert stored(services, settings) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("canary", "expected"),
    [
        ("unrelated", "canary must be a subgroup of the group"),
        ("empty", "the canary subgroup has no registered devices"),
    ],
)
def test_a_bad_canary_is_400_before_the_image_is_stored(
    client: TestClient,
    services: Services,
    settings: Settings,
    fleet: Fleet,
    setup: Setup,
    canary: str,
    expected: str,
) -> None:
    other = fleet.group(setup.owner, name=canary, parent=setup.group if canary == "empty" else None)
    response = post(client, setup, {"canary": other.id})
    assert response.status_code == 400
    assert response.json() == {"message": expected}
    assert stored(services, settings) == (0, 0, 0, 0, 0)


def test_a_commit_with_nul_is_refused_on_a_plain_deploy(
    client: TestClient, services: Services, settings: Settings, setup: Setup
) -> None:
    response = post(client, setup, {"commit": "4f2a9c1\x00"}, rollout=False)
    assert response.status_code == 400
    assert response.json() == {"message": "commit must not contain control characters"}
    assert stored(services, settings) == (0, 0, 0, 0, 0)


def test_fields_at_their_bounds_start_a_rollout(
    client: TestClient, services: Services, settings: Settings, setup: Setup
) -> None:
    response = post(
        client,
        setup,
        {
            "canary_timeout": "604800",
            "soak": "604800",
            "error_threshold": "1000000",
            "success_threshold": "1e-05",
            "auto_promote": " FALSE\n",
            "commit": "a" * 64,
        },
    )
    assert response.status_code == 201, response.text
    rollout_id = response.json()["rollout"]["id"]
    with read_session(services.engine) as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        assert (
            rollout.canary_timeout,
            rollout.soak,
            rollout.error_threshold,
            rollout.success_threshold,
            rollout.auto_promote,
            rollout.commit,
        ) == (604800, 604800, 1000000, 1e-05, False, "a" * 64)


def test_the_spec_order_holds_for_hostile_values(client: TestClient, fleet: Fleet, setup: Setup) -> None:
    s = setup
    free = fleet.owner(plan="free")
    # A bad option of a free owner: the plan's 403 comes first, as for any field after the group id.
    response = client.post(
        "/v1/ota/group",
        headers=free.headers,
        data={"group": s.group.id, "token": "x", "version": "1.0.0", "canary_timeout": "²"},
        files={"firmware": ("firmware.bin", build_image("1.0.0"))},
    )
    assert response.status_code == 403
    # A NUL in the group id is a bad group id (before the plan), in the token a wrong token.
    response = client.post(
        "/v1/ota/group",
        headers=free.headers,
        data={"group": s.group.id[:-1] + "\x00", "token": "x", "version": "1.0.0"},
        files={"firmware": ("firmware.bin", build_image("1.0.0"))},
    )
    assert (response.status_code, response.json()) == (400, {"message": "Group ID is not valid"})
    response = post(client, s, {"token": s.group.token + "\x00", "canary_timeout": "²"})
    assert (response.status_code, response.json()) == (400, {"message": "Group token is not valid"})


# --- the rollouts API --------------------------------------------------------------


def test_rollout_queries_and_paths_refuse_control_characters(client: TestClient, setup: Setup) -> None:
    headers = setup.owner.headers
    for method, url, expected in (
        ("GET", "/v1/rollouts?group=%00", "group must not contain control characters"),
        ("GET", f"/v1/rollouts?group={setup.group.id}%00", "group must not contain control characters"),
        ("GET", "/v1/rollouts/%00", "rollout_id must not contain control characters"),
        ("GET", "/v1/rollouts/" + "a" * 65, "rollout_id is too long: at most 64 characters"),
        ("GET", f"/v1/rollouts/{'0' * 24}?devices=maybe", "devices must be true or false, not 'maybe'"),
        ("GET", f"/v1/rollouts/{'0' * 24}?devices=%00", "devices must be true or false, not '\\x00'"),
        ("POST", "/v1/rollouts/%00/promote", "rollout_id must not contain control characters"),
        ("POST", "/v1/rollouts/%1B/abort", "rollout_id must not contain control characters"),
    ):
        response = client.request(method, url, headers=headers)
        assert response.status_code == 400, url
        assert response.json() == {"message": expected}, url


def test_devices_takes_the_usual_words(client: TestClient, setup: Setup) -> None:
    rollout_id = post(client, setup).json()["rollout"]["id"]
    for value, with_devices in (
        ("false", False),
        ("0", False),
        ("No", False),
        ("off", False),
        ("true", True),
        ("1", True),
        ("", True),
    ):
        body = client.get(f"/v1/rollouts/{rollout_id}?devices={value}", headers=setup.owner.headers).json()
        assert ("devices" in body) is with_devices, value


def test_a_spool_file_never_outlives_a_refused_post(
    settings: Settings, client: TestClient, setup: Setup
) -> None:
    post(client, setup, {"canary_timeout": "²"})
    post(client, setup, {"commit": "\x00"})
    tmp_dir: Path = settings.tmp_dir
    assert list(tmp_dir.iterdir()) == []
