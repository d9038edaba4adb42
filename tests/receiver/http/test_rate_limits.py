"""Rate limits on the management API: per API key, reads and writes apart, and
per client address for missing or bad keys. Device routes are never limited."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from otaship.action import exit_codes
from otaship.action.__main__ import main as otaship_deploy
from otaship.receiver.app import create_app
from otaship.receiver.http.rate_limits import describe, retry_after
from otaship.receiver.services import Services
from otaship.receiver.settings import (
    DEFAULT_RATE_LIMIT_BAD_KEYS,
    DEFAULT_RATE_LIMIT_READS,
    DEFAULT_RATE_LIMIT_WRITES,
    Settings,
    SettingsError,
)
from tests.conftest import Fleet
from tests.esp_image import write_image
from tests.receiver.http.management.test_ota import deploy
from tests.receiver_process import ReceiverProcess, migrated_env, otaship_json
from tests.waiting import eventually

NO_ROLLOUT = "/v1/rollouts/" + "a" * 24
# Limits whose counts are asserted exactly are per day: the counting buckets are
# wall-clock aligned and weighted across an edge, and a test that straddled a
# minute's edge would see one request too many let through.
DAY = 86400


def read_limited(count: int) -> str:
    return f"Rate limit exceeded: at most {count} reads per day per API key. Retry after"


def assert_limited(response: httpx.Response, message: str, most_seconds: int) -> None:
    assert response.status_code == 429
    assert response.json()["message"].startswith(message), response.json()
    assert response.json() == {"message": f"{message} {response.headers['retry-after']} s."}
    assert 1 <= int(response.headers["retry-after"]) <= most_seconds


def limited_app(settings: Settings, services: Services, **limits: str | None) -> TestClient:
    return TestClient(create_app(settings.with_overrides(**limits), services=services))


def test_reads_and_writes_of_a_key_are_limited_apart(
    settings: Settings, services: Services, fleet: Fleet
) -> None:
    owner = fleet.owner()
    with limited_app(settings, services, rate_limit_reads="3/day", rate_limit_writes="2/day") as client:
        for _ in range(3):
            assert client.get("/v1/ota/group", headers=owner.headers).status_code == 200
        # Every read route shares the key's read budget.
        over = client.get(f"/v1/rollouts?group={'a' * 24}", headers=owner.headers)
        assert_limited(over, read_limited(3), DAY)
        head = client.head("/v1/ota/group", headers=owner.headers)
        assert (head.status_code, head.content, int(head.headers["retry-after"]) >= 1) == (429, b"", True)
        # Writes have their own.
        for _ in range(2):
            assert client.post(f"{NO_ROLLOUT}/abort", headers=owner.headers).status_code == 404
        over = client.post("/v1/ota/group", headers=owner.headers, data={"group": "x"})
        assert_limited(over, "Rate limit exceeded: at most 2 writes per day per API key. Retry after", DAY)
        assert over.headers["x-content-type-options"] == "nosniff"
        # The refusals are counted and logged under their route, like any answer.
        metrics = client.get("/metrics").text
        assert 'otaship_http_requests_total{method="GET",route="/v1/rollouts",status="429"} 1.0' in metrics
        assert 'otaship_http_requests_total{method="POST",route="/v1/ota/group",status="429"} 1.0' in metrics


def test_a_key_recovers_after_the_window(settings: Settings, services: Services, fleet: Fleet) -> None:
    owner = fleet.owner()
    with limited_app(settings, services, rate_limit_reads="2 per 2 seconds") as client:
        # The windows are counted in buckets of wall-clock time, weighted across
        # a bucket's edge: three requests that straddle one are not all counted.
        # So they start as a bucket starts, and have most of it. A loaded machine
        # can pass over one start while this process waits for a core.
        eventually(lambda: time.time() % 2 < 0.5, "the start of a window", timeout=10, interval=0.01)
        for _ in range(2):
            assert client.get("/v1/ota/group", headers=owner.headers).status_code == 200
        refused = client.get("/v1/ota/group", headers=owner.headers)
        assert_limited(
            refused, "Rate limit exceeded: at most 2 reads per 2 seconds per API key. Retry after", 2
        )
        refused_at = time.monotonic()
        # As a client that honours Retry-After would: ask again until let through.
        deadline = refused_at + 5
        while (response := client.get("/v1/ota/group", headers=owner.headers)).status_code == 429:
            assert time.monotonic() < deadline, "still limited 5 s after the refusal"
            time.sleep(0.05)
        assert response.status_code == 200
        assert time.monotonic() - refused_at <= 2.5


def test_one_key_flooding_does_not_limit_another_key_or_tenant(
    settings: Settings, services: Services, fleet: Fleet
) -> None:
    from otaship.receiver.db.engine import write_session
    from otaship.receiver.db.models import User
    from otaship.receiver.db.users import issue_api_key

    flooder, neighbour = fleet.owner(), fleet.owner()
    with write_session(services.engine) as session:
        user = session.get(User, flooder.user.id)
        assert user is not None
        second_key = issue_api_key(session=session, user=user, revoke_existing=False)
    with limited_app(settings, services, rate_limit_reads="5/day", rate_limit_writes="5/day") as client:
        statuses = [client.get("/v1/ota/group", headers=flooder.headers).status_code for _ in range(50)]
        assert statuses == [200] * 5 + [429] * 45
        assert client.get("/v1/ota/group", headers=neighbour.headers).status_code == 200
        assert (
            client.get("/v1/ota/group", headers={"Authorization": f"Bearer {second_key}"}).status_code == 200
        )
        assert client.post(f"{NO_ROLLOUT}/abort", headers=flooder.headers).status_code == 404


def test_device_routes_and_operations_are_never_limited(
    settings: Settings, services: Services, fleet: Fleet
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    with TestClient(create_app(settings, services=services)) as setup:
        deploy(setup, owner, group, "1.0.0")
    tight = {
        "rate_limit_reads": "1/day",
        "rate_limit_writes": "1/day",
        "rate_limit_bad_keys": "1/day",
    }
    with limited_app(settings, services, **tight) as client:
        # The limit is live: the management API refuses the second read.
        assert client.get("/v1/ota/group", headers=owner.headers).status_code == 200
        assert client.get("/v1/ota/group", headers=owner.headers).status_code == 429
        for _ in range(30):
            # A device's requests carry no key; one that sends a stray header is not limited either.
            for headers in ({}, owner.headers, {"Authorization": "Bearer osk_bad"}):
                assert client.get(f"/v1/ota/group/latest/{group.id}", headers=headers).status_code == 200
                assert (
                    client.get(f"/v1/ota/group/download/{group.id}{group.token}", headers=headers).status_code
                    == 200
                )
                assert (
                    client.head(
                        f"/v1/ota/group/download/{group.id}{group.token}", headers=headers
                    ).status_code
                    == 200
                )
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
                assert client.get(path).status_code == 200


def test_missing_and_bad_keys_are_limited_per_client_address(
    settings: Settings, services: Services, fleet: Fleet
) -> None:
    owner = fleet.owner()
    app = create_app(settings.with_overrides(rate_limit_bad_keys="3/day"), services=services)
    message = (
        "Rate limit exceeded: at most 3 requests with a missing or bad API key per day from one "
        "address. Retry after"
    )
    with (
        TestClient(app, client=("203.0.113.7", 40000)) as attacker,
        TestClient(app, client=("203.0.113.7", 40001)) as honest_neighbour,
        TestClient(app, client=("198.51.100.2", 40000)) as elsewhere,
    ):
        # An honest client whose key worked before the flood began.
        assert honest_neighbour.get("/v1/ota/group", headers=owner.headers).status_code == 200
        bad = [f"osk_guess{n:040d}" for n in range(6)]
        assert attacker.get("/v1/ota/group").status_code == 401
        for key in bad[:2]:
            assert (
                attacker.get("/v1/ota/group", headers={"Authorization": f"Bearer {key}"}).status_code == 401
            )
        for key in bad[2:]:
            response = attacker.get("/v1/ota/group", headers={"Authorization": f"Bearer {key}"})
            assert_limited(response, message, DAY)
        assert_limited(attacker.post("/v1/ota/group"), message, DAY)
        # Same address: a key known to be good is still served; another address is untouched.
        assert honest_neighbour.get("/v1/ota/group", headers=owner.headers).status_code == 200
        assert elsewhere.get("/v1/ota/group").status_code == 401
        assert elsewhere.get("/v1/ota/group", headers=owner.headers).status_code == 200


def test_all_limits_off_leaves_the_routes_unwrapped(settings: Settings, services: Services) -> None:
    off = settings.with_overrides(rate_limit_reads=None, rate_limit_writes=None, rate_limit_bad_keys=None)
    app = create_app(off, services=services)
    # The same Route objects as the modules define: no per-request cost at all.
    from otaship.receiver.http.management import ota, rollouts

    assert all(any(route is r for r in app.routes) for route in [*ota.routes, *rollouts.routes])
    with TestClient(app) as client:
        assert [client.get("/v1/ota/group").status_code for _ in range(40)] == [401] * 40


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, (DEFAULT_RATE_LIMIT_READS, DEFAULT_RATE_LIMIT_WRITES, DEFAULT_RATE_LIMIT_BAD_KEYS)),
        ("off", (None, None, None)),
        ("0", (None, None, None)),
        ("OFF", (None, None, None)),
        ("0/second", (None, None, None)),
        ("500", ("500/second",) * 3),
        ("1000 per 2 minutes", ("1000 per 2 minutes",) * 3),
        ("30/Minute", ("30/minute",) * 3),
    ],
)
def test_rate_limit_settings(raw: str | None, expected: tuple[str | None, ...]) -> None:
    names = ("OTASHIP_RATE_LIMIT_READS", "OTASHIP_RATE_LIMIT_WRITES", "OTASHIP_RATE_LIMIT_BAD_KEYS")
    settings = Settings.from_env({} if raw is None else dict.fromkeys(names, raw))
    assert (settings.rate_limit_reads, settings.rate_limit_writes, settings.rate_limit_bad_keys) == expected


@pytest.mark.parametrize("raw", ["fast", "200/sec", "-5", "²", "10/second;100/minute", "1.5/second"])
def test_a_bad_rate_limit_setting_names_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"OTASHIP_RATE_LIMIT_WRITES": raw})
    assert str(error.value).startswith(
        "OTASHIP_RATE_LIMIT_WRITES must be requests per second (200), a rate such as 200/second or "
        "1000/minute, or off, not "
    )


def test_limit_descriptions_and_retry_after() -> None:
    from limits import parse

    assert describe(parse("200/second"), "reads") == "200 reads per second"
    assert describe(parse("1000 per 2 minutes"), "writes") == "1000 writes per 2 minutes"
    assert retry_after(100.0, 100.0) == 1  # never 0: a client told 0 comes straight back
    assert retry_after(100.2, 100.0) == 1
    assert retry_after(103.01, 100.0) == 4


def test_otaship_deploy_waits_out_a_rate_limit_and_succeeds(tmp_path: Path) -> None:
    """The action honours Retry-After: against a real receiver that refuses its
    first POST (the key's write budget is spent), it retries and deploys."""
    env = migrated_env(tmp_path / "data", OTASHIP_RATE_LIMIT_WRITES="1 per 10 seconds")
    firmware = write_image(tmp_path / "fw.bin", "2.0.0")
    user = otaship_json(env, "user", "create", "ci@example.com", "--plan", "pro")
    group = otaship_json(env, "group", "create", "fleet", "--owner", "ci@example.com")
    receiver = ReceiverProcess(env).start()
    try:
        headers = {"Authorization": f"Bearer {user['api_key']}"}
        # Spend the write budget (another job of the same CI, say) as a window
        # starts, so that the action's POST falls in the same one.
        eventually(lambda: time.time() % 10 < 1, "the start of a window", timeout=11, interval=0.01)
        assert httpx.post(f"{receiver.url}{NO_ROLLOUT}/abort", headers=headers).status_code == 404
        out = io.StringIO()
        started = time.monotonic()
        code = otaship_deploy(
            ["deploy", "--firmware", str(firmware), "--version", "2.0.0"],
            {
                "OTASHIP_RECEIVER_URL": receiver.url,
                "OTASHIP_API_KEY": user["api_key"],
                "OTASHIP_GROUP": group["id"],
                "OTASHIP_GROUP_TOKEN": group["token"],
            },
            out,
        )
        took = time.monotonic() - started
        listing = httpx.get(f"{receiver.url}/v1/ota/group", headers=headers).json()
    finally:
        log = receiver.stop()
    assert code == exit_codes.OK, out.getvalue()
    assert (
        "the receiver answered 429 (Rate limit exceeded: at most 1 writes per 10 seconds per API key."
        in out.getvalue()
    )
    assert [ota["version"] for ota in listing["otas"]] == ["2.0.0"]
    assert "POST /v1/ota/group 429" in log and "POST /v1/ota/group 201" in log
    assert took >= 1
