"""GitHub webhooks end to end: bindings, signed deliveries, and the job that
downloads a release asset and deploys it, against the real app and database.

GitHub itself cannot run here: tests/github_standin.py stands in for its REST
API (and for the second host its asset downloads redirect to), records every
request, and sends payloads shaped like GitHub's documented examples.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from starlette.testclient import TestClient

from otaship.github_deployments import KEY_FIELD
from otaship.receiver.app import create_app
from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.models import GithubBinding, GithubDelivery, Group, GroupOta, Rollout
from otaship.receiver.github.sealed import seal
from otaship.receiver.github.signature import signature_of
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image
from tests.github_standin import GithubStandIn, github_standin, ping_payload, release_payload
from tests.waiting import eventually

KEY = "test-secret-key-" + "k" * 32
TOKEN = "ghp_" + "T0kenT0kenT0kenT0kenT0kenT0kenT0ken1"
COMMIT = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
REPO = "octo-org/thermostat"


@pytest.fixture
def standin() -> Iterator[GithubStandIn]:
    with github_standin() as running:
        running.commits["v1.4.0"] = COMMIT
        yield running


@pytest.fixture
def github_timeout() -> float:
    """Seconds the receiver waits on GitHub: ample, so that a loaded machine never
    times out a call the test counts; tests of timeouts set 1."""
    return 10


@pytest.fixture
def settings(tmp_path: Path, database_url: str, standin: GithubStandIn, github_timeout: float) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        mqtt_url="none",
        max_firmware_bytes=2 * 1024 * 1024,
        secret_key=KEY,
        github_api_url=standin.api_url,
        github_timeout=github_timeout,
    )


@pytest.fixture
def client(settings: Settings, services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(settings, services=services)) as test_client:
        # Retries a few milliseconds apart, not seconds.
        test_client.app.state.background.github_jobs.backoff = 0.01  # type: ignore[attr-defined]
        yield test_client


def bind(client: TestClient, owner: Owner, group: Group, **fields: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/github/bindings",
        headers=owner.headers,
        json={"repo": REPO, "group": group.id, "token": TOKEN, **fields},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def deliver(
    client: TestClient,
    bound: dict[str, Any],
    event: str,
    payload: dict[str, Any] | bytes,
    *,
    delivery: str | None = None,
    secret: str | None = None,
    signature: str | None = "sign",
) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "User-Agent": "GitHub-Hookshot/044aadd",
    }
    if signature == "sign":
        headers["X-Hub-Signature-256"] = signature_of(secret or bound["secret"], body)
    elif signature is not None:
        headers["X-Hub-Signature-256"] = signature
    url = bound["binding"]["webhook_url"].removeprefix("http://127.0.0.1:8080")
    response: httpx.Response = client.post(url, content=body, headers=headers)
    return response


def deliveries(client: TestClient, owner: Owner, **query: str) -> list[dict[str, Any]]:
    response = client.get("/v1/webhooks/github/deliveries", headers=owner.headers, params=query)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


def finished(client: TestClient, owner: Owner, delivery: str) -> dict[str, Any]:
    """The delivery once its job has run."""
    result: dict[str, Any] = {}

    def done() -> bool:
        for row in deliveries(client, owner):
            if row["id"] == delivery and row["outcome"] != "queued":
                result.update(row)
                return True
        return False

    eventually(done, f"delivery {delivery} to finish", timeout=30)
    return result


def release(client: TestClient, bound: dict[str, Any], **payload: Any) -> str:
    delivery = str(uuid.uuid4())
    response = deliver(client, bound, "release", release_payload(**payload), delivery=delivery)
    assert response.status_code == 202, response.text
    return delivery


def ota_of(services: Services, group: Group) -> GroupOta | None:
    with read_session(services.engine) as session:
        return session.exec(select(GroupOta).where(GroupOta.group_id == group.id)).first()


# --- bindings -----------------------------------------------------------------------


def test_a_binding_shows_its_url_and_secret_once(
    client: TestClient, fleet: Fleet, services: Services
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    bound = bind(client, owner, group, asset="firmware*.bin", prereleases=True)
    binding = bound["binding"]
    assert bound["secret"].startswith("oshk_")
    assert binding == {
        "id": binding["id"],
        "repo": REPO,
        "group": group.id,
        "canary": None,
        "waves": None,
        "asset": "firmware*.bin",
        "prereleases": True,
        "report_deployments": False,
        "token": True,
        "webhook_url": f"http://127.0.0.1:8080/v1/webhooks/github?binding={binding['id']}",
        "created_at": binding["created_at"],
    }
    listed = client.get("/v1/github/bindings", headers=owner.headers).json()
    assert listed == {"bindings": [binding]}
    # Stored encrypted: neither the secret nor the token is in the row in clear.
    with read_session(services.engine) as session:
        row = session.get(GithubBinding, binding["id"])
        assert row is not None
        assert bound["secret"] not in row.secret_sealed
        assert row.token_sealed is not None and TOKEN not in row.token_sealed


def test_another_owners_bindings_are_not_found(client: TestClient, fleet: Fleet) -> None:
    owner, other = fleet.owner(), fleet.owner()
    bound = bind(client, owner, fleet.group(owner))
    binding_id = bound["binding"]["id"]
    assert client.get("/v1/github/bindings", headers=other.headers).json() == {"bindings": []}
    gone = client.delete(f"/v1/github/bindings/{binding_id}", headers=other.headers)
    assert (gone.status_code, gone.json()) == (404, {"message": "No such GitHub binding"})
    # Another owner's group cannot be bound either.
    refused = client.post(
        "/v1/github/bindings", headers=other.headers, json={"repo": REPO, "group": bound["binding"]["group"]}
    )
    assert (refused.status_code, refused.json()) == (404, {"message": "No such group"})
    removed = client.delete(f"/v1/github/bindings/{binding_id}", headers=owner.headers)
    assert removed.status_code == 200
    assert removed.json() == {"message": f"binding {binding_id} removed: its deliveries are kept"}
    late = deliver(client, bound, "ping", ping_payload())
    assert (late.status_code, late.json()) == (404, {"message": "No such GitHub binding"})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"repo": "not a repo"}, "repo must be OWNER/NAME as on GitHub, not 'not a repo'"),
        (
            {"repo": "octo-org/thermostat/x"},
            "repo must be OWNER/NAME as on GitHub, not 'octo-org/thermostat/x'",
        ),
        (
            {"asset": "dir/firmware.bin"},
            "asset must be a file name pattern such as 'firmware*.bin' (at most 200 characters)",
        ),
        ({"asset": ""}, "asset must be a file name pattern such as 'firmware*.bin' (at most 200 characters)"),
        ({"waves": "10,100", "canary": "a" * 24}, "give canary or waves, not both"),
        ({"canary": "a" * 24}, "canary must be a subgroup of the group"),
        ({"group": "nope"}, "group: String should match pattern '^[0-9a-f]{24}$'"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        (
            {"report_deployments": True},
            "report_deployments needs a token that may write the repository's deployments",
        ),
    ],
)
def test_a_bad_binding_is_refused_and_stores_nothing(
    client: TestClient, fleet: Fleet, fields: dict[str, Any], message: str
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    response = client.post(
        "/v1/github/bindings", headers=owner.headers, json={"repo": REPO, "group": group.id, **fields}
    )
    assert (response.status_code, response.json()) == (400, {"message": message})
    assert client.get("/v1/github/bindings", headers=owner.headers).json() == {"bindings": []}


def test_without_a_secret_key_binding_is_refused(
    settings: Settings, services: Services, fleet: Fleet
) -> None:
    unkeyed = settings.with_overrides(secret_key=None)
    app = create_app(unkeyed, services=dataclasses.replace(services, settings=unkeyed))
    owner = fleet.owner()
    with TestClient(app) as client:
        response = client.post(
            "/v1/github/bindings", headers=owner.headers, json={"repo": REPO, "group": fleet.group(owner).id}
        )
    assert (response.status_code, response.json()) == (
        503,
        {"message": "set OTASHIP_SECRET_KEY (at least 32 characters) to use GitHub bindings"},
    )


# --- signatures ---------------------------------------------------------------------


def test_signatures_are_checked_before_the_body_is_read(
    client: TestClient, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    owner = fleet.owner()
    bound = bind(client, owner, fleet.group(owner))
    body = json.dumps(ping_payload()).encode()
    good = signature_of(bound["secret"], body)
    caplog.set_level(logging.INFO)

    ok = deliver(client, bound, "ping", body, delivery="d-ping")
    assert (ok.status_code, ok.json()) == (
        200,
        {"message": "pong: the webhook reaches otaship", "delivery": "d-ping", "outcome": "ignored"},
    )
    missing = deliver(client, bound, "ping", body, signature=None)
    assert (missing.status_code, missing.json()) == (
        401,
        {
            "message": "X-Hub-Signature-256 is missing: set the webhook's secret to the one `github bind` printed"
        },
    )
    bad = "X-Hub-Signature-256 does not match the body: check the webhook's secret"
    for signature, sent in [
        ("sha256=" + "0" * 64, body),
        (signature_of("another secret", body), body),
        # Signed, then changed on the way: the same signature over a modified body.
        (good, body.replace(b"Design for failure.", b"Design for success.")),
        (good.removeprefix("sha256="), body),
    ]:
        refused = deliver(client, bound, "ping", sent, signature=signature)
        assert (refused.status_code, refused.json()) == (401, {"message": bad})
    # Nor is a refused body parsed: not JSON at all, still a 401.
    assert deliver(client, bound, "ping", b"\x00not json", signature="sha256=" + "1" * 64).status_code == 401
    # Only the signed ping was recorded.
    assert [d["id"] for d in deliveries(client, owner)] == ["d-ping"]
    log = caplog.text
    assert (
        "refused a webhook delivery for binding" in log and "bad signature" in log and "no signature" in log
    )
    assert "Design for" not in log and bound["secret"] not in log


def test_githubs_documented_test_vector_passes_the_route(
    client: TestClient, fleet: Fleet, services: Services
) -> None:
    # docs.github.com, "Validating webhook deliveries": this secret and payload give this signature.
    owner = fleet.owner()
    bound = bind(client, owner, fleet.group(owner))
    with write_session(services.engine) as session:
        row = session.get(GithubBinding, bound["binding"]["id"])
        assert row is not None
        row.secret_sealed = seal(KEY, "It's a Secret to Everybody")
        session.add(row)
    vector = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    # Verified, then read: "Hello, World!" is no JSON payload.
    passed = deliver(client, bound, "ping", b"Hello, World!", signature=vector)
    assert (passed.status_code, passed.json()) == (400, {"message": "The body is not JSON"})
    changed = deliver(client, bound, "ping", b"Hello, World?", signature=vector)
    assert changed.status_code == 401


def test_a_body_over_githubs_limit_is_refused(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    bound = bind(client, owner, fleet.group(owner))
    too_big = b"{" + b" " * (25 * 1024 * 1024) + b"}"
    response = deliver(client, bound, "ping", too_big)
    assert (response.status_code, response.json()) == (
        413,
        {"message": "The delivery is over 26214400 bytes, GitHub's limit"},
    )
    assert deliveries(client, owner) == []


def test_a_delivery_without_githubs_headers_is_refused(client: TestClient, fleet: Fleet) -> None:
    owner = fleet.owner()
    bound = bind(client, owner, fleet.group(owner))
    body = json.dumps(ping_payload()).encode()
    url = bound["binding"]["webhook_url"].removeprefix("http://127.0.0.1:8080")
    response = client.post(
        url, content=body, headers={"X-Hub-Signature-256": signature_of(bound["secret"], body)}
    )
    assert (response.status_code, response.json()) == (
        400,
        {"message": "X-GitHub-Delivery is missing: is this a GitHub webhook delivery?"},
    )
    no_binding = client.post("/v1/webhooks/github", content=body)
    assert (no_binding.status_code, no_binding.json()) == (
        400,
        {"message": "binding is a mandatory parameter: use the webhook URL `github bind` printed"},
    )


# --- releases -----------------------------------------------------------------------


def test_a_published_release_with_one_matching_asset_deploys(
    client: TestClient, fleet: Fleet, services: Services, standin: GithubStandIn
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("1.4.0")
    standin.host.assets[71] = image
    bound = bind(client, owner, group, asset="firmware*.bin")
    delivery = release(
        client, bound, assets=[(71, "firmware-esp32.bin", len(image)), (72, "firmware.elf", 10)]
    )

    row = finished(client, owner, delivery)
    assert row == {
        "id": delivery,
        "binding": bound["binding"]["id"],
        "event": "release",
        "action": "published",
        "tag": "v1.4.0",
        "outcome": "deployed",
        "reason": "Firmware successfully deployed",
        "version": "1.4.0",
        "commit": COMMIT,
        "rollout": None,
        "attempts": 1,
        "received_at": row["received_at"],
        "finished_at": row["finished_at"],
    }
    ota = ota_of(services, group)
    assert ota is not None
    assert (ota.version, ota.commit, ota.sha256) == ("1.4.0", COMMIT, ota.image.sha256)
    assert ota.image.size == len(image)

    # Exactly what GitHub was sent: the tag's commit, then the asset with the token
    # and Accept: application/octet-stream; the redirect's host got no token.
    commit, asset = standin.api_seen
    assert (commit.method, commit.path) == ("GET", f"/repos/{REPO}/commits/v1.4.0")
    assert commit.headers["accept"] == "application/vnd.github.sha"
    assert (asset.method, asset.path) == ("GET", f"/repos/{REPO}/releases/assets/71")
    for seen in (commit, asset):
        assert seen.headers["authorization"] == f"Bearer {TOKEN}"
        assert seen.headers["x-github-api-version"] == "2022-11-28"
        assert seen.headers["user-agent"].startswith("otaship/")
    assert asset.headers["accept"] == "application/octet-stream"
    (download,) = standin.host.seen
    assert (download.path, download.query) == ("/assets/71", "X-Amz-Signature=abc")
    assert "authorization" not in download.headers


def test_a_target_that_is_a_commit_is_used_as_is(
    client: TestClient, fleet: Fleet, services: Services, standin: GithubStandIn
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    standin.host.assets[5] = build_image("1.5.0")
    bound = bind(client, owner, group)
    sha = "a" * 40
    delivery = release(client, bound, tag="v1.5.0", target_commitish=sha, assets=[(5, "app.bin", 1)])
    assert finished(client, owner, delivery)["commit"] == sha
    assert [s.path for s in standin.api_seen] == [f"/repos/{REPO}/releases/assets/5"]


@pytest.mark.parametrize(
    ("assets", "reason"),
    [
        ([], "no asset matches 'firmware*.bin': the release has no assets"),
        (
            [(1, "app.zip", 10), (2, "notes.txt", 10)],
            "no asset matches 'firmware*.bin': found app.zip, notes.txt",
        ),
        (
            [(1, "firmware-a.bin", 10), (2, "firmware-b.bin", 10)],
            "2 assets match 'firmware*.bin' (firmware-a.bin, firmware-b.bin): bind with a pattern that matches exactly one",
        ),
    ],
)
def test_no_or_two_matching_assets_are_refused_and_say_what_was_found(
    client: TestClient,
    fleet: Fleet,
    services: Services,
    standin: GithubStandIn,
    assets: list[Any],
    reason: str,
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    bound = bind(client, owner, group, asset="firmware*.bin")
    row = finished(client, owner, release(client, bound, assets=assets))
    assert (row["outcome"], row["reason"], row["version"]) == ("refused", reason, None)
    assert standin.api_seen == [] and standin.host.seen == []
    assert ota_of(services, group) is None


@pytest.mark.parametrize("allowed", [False, True])
def test_a_prerelease_deploys_only_when_the_binding_allows_it(
    client: TestClient, fleet: Fleet, services: Services, standin: GithubStandIn, allowed: bool
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    standin.host.assets[9] = build_image("2.0.0-rc.1")
    standin.commits["v2.0.0-rc.1"] = COMMIT
    bound = bind(client, owner, group, prereleases=allowed)
    payload = release_payload(tag="v2.0.0-rc.1", prerelease=True, assets=[(9, "firmware.bin", 1)])
    # GitHub sends prereleased and published for a prerelease: only published acts.
    also = deliver(client, bound, "release", {**payload, "action": "prereleased"})
    assert also.json()["outcome"] == "ignored"
    response = deliver(client, bound, "release", payload, delivery="d-pre")
    assert response.status_code == 202
    if not allowed:
        assert response.json() == {
            "message": "release v2.0.0-rc.1 is a prerelease and the binding does not deploy prereleases "
            "(bind with --prereleases)",
            "delivery": "d-pre",
            "outcome": "ignored",
        }
        assert ota_of(services, group) is None
        assert standin.host.seen == []
        return
    assert response.json()["outcome"] == "queued"
    assert finished(client, owner, "d-pre")["outcome"] == "deployed"
    ota = ota_of(services, group)
    assert ota is not None and ota.version == "2.0.0-rc.1"


def test_a_redelivery_changes_nothing(
    client: TestClient, fleet: Fleet, services: Services, standin: GithubStandIn
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    standin.host.assets[3] = build_image("1.4.0")
    bound = bind(client, owner, group)
    payload = release_payload(assets=[(3, "firmware.bin", 1)])
    assert deliver(client, bound, "release", payload, delivery="d-1").status_code == 202
    assert finished(client, owner, "d-1")["outcome"] == "deployed"
    again = deliver(client, bound, "release", payload, delivery="d-1")
    assert (again.status_code, again.json()) == (
        200,
        {
            "message": "delivery d-1 was already received: nothing changed",
            "delivery": "d-1",
            "outcome": "deployed",
        },
    )
    assert len(deliveries(client, owner)) == 1
    assert len(standin.host.seen) == 1
    # A second delivery of the same release (a re-publish) follows the POST's rules:
    # the same version with the same bytes changes nothing.
    assert deliver(client, bound, "release", payload, delivery="d-2").status_code == 202
    row = finished(client, owner, "d-2")
    assert (row["outcome"], row["reason"]) == ("deployed", "nothing changed: 1.4.0 already runs this image")
    ota = ota_of(services, group)
    assert ota is not None and ota.revision == 0


def test_a_refused_deploy_says_why(client: TestClient, fleet: Fleet, standin: GithubStandIn) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    bound = bind(client, owner, group)
    standin.host.assets[1] = b"this is not an ESP32 image"
    row = finished(client, owner, release(client, bound, assets=[(1, "firmware.bin", 26)]))
    assert row["outcome"] == "refused"
    assert row["reason"].startswith("the deploy answered 400: ")
    # The same version with other bytes: the POST's 409.
    response = client.post(
        "/v1/ota/group",
        headers=owner.headers,
        data={"group": group.id, "token": group.token, "version": "1.4.0"},
        files={"firmware": ("firmware.bin", build_image("1.4.0", seed=1))},
    )
    assert response.status_code == 201
    standin.host.assets[1] = build_image("1.4.0")
    row = finished(client, owner, release(client, bound, assets=[(1, "firmware.bin", 26)]))
    assert (row["outcome"], row["reason"]) == (
        "refused",
        "the deploy answered 409: Version 1.4.0 is already deployed to this group with different firmware. "
        "Devices compare version strings and would never fetch it: bump the version.",
    )


def test_an_asset_over_the_size_limit_is_refused(
    client: TestClient, fleet: Fleet, settings: Settings, standin: GithubStandIn
) -> None:
    owner = fleet.owner()
    bound = bind(client, owner, fleet.group(owner))
    standin.host.assets[1] = b"\xe9" * (settings.max_firmware_bytes + 1)
    row = finished(client, owner, release(client, bound, assets=[(1, "firmware.bin", 1)]))
    assert (row["outcome"], row["reason"]) == (
        "refused",
        f"firmware.bin: the asset is {settings.max_firmware_bytes + 1} bytes, over the limit of "
        f"{settings.max_firmware_bytes}",
    )


def test_a_failing_asset_host_is_retried(
    client: TestClient, fleet: Fleet, services: Services, standin: GithubStandIn
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    bound = bind(client, owner, group)
    standin.host.assets[1] = build_image("1.4.0")
    standin.host.failures = 2
    assert (
        finished(client, owner, release(client, bound, assets=[(1, "firmware.bin", 1)]))["outcome"]
        == "deployed"
    )
    assert len(standin.host.seen) == 3
    standin.host.failures = 3
    row = finished(client, owner, release(client, bound, tag="v1.4.0", assets=[(1, "firmware.bin", 1)]))
    assert (row["outcome"], row["reason"]) == (
        "failed",
        f"downloading asset 1 of {REPO}: HTTP 503 from 127.0.0.1 (attempt 3 of 3)",
    )


@pytest.mark.parametrize("github_timeout", [1])
def test_a_slow_asset_host_times_out(client: TestClient, fleet: Fleet, standin: GithubStandIn) -> None:
    owner = fleet.owner()
    bound = bind(client, owner, fleet.group(owner))
    standin.host.assets[1] = build_image("1.4.0")
    standin.host.delay = 2.5  # the receiver waits 1 s
    row = finished(client, owner, release(client, bound, assets=[(1, "firmware.bin", 1)]))
    assert (row["outcome"], row["reason"]) == (
        "failed",
        f"downloading asset 1 of {REPO}: timed out (ReadTimeout) (attempt 3 of 3)",
    )
    assert len(standin.host.seen) == 3


def test_a_canary_binding_starts_a_rollout(
    client: TestClient, fleet: Fleet, services: Services, standin: GithubStandIn
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    canary = fleet.group(owner, name="canary", parent=group)
    fleet.device(canary, name="c1", firmware_version="1.0.0")
    standin.host.assets[1] = build_image("1.4.0")
    bound = bind(client, owner, group, canary=canary.id)
    row = finished(client, owner, release(client, bound, assets=[(1, "firmware.bin", 1)]))
    assert row["outcome"] == "deployed"
    assert row["reason"].startswith(
        f"Firmware successfully deployed to canary subgroup {canary.id} of group {group.id}"
    )
    with read_session(services.engine) as session:
        rollout = session.get(Rollout, row["rollout"])
        assert rollout is not None
        assert (rollout.group_id, rollout.canary_group_id, rollout.version, rollout.commit) == (
            group.id,
            canary.id,
            "1.4.0",
            COMMIT,
        )


def test_other_events_are_recorded_and_ignored(
    client: TestClient, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    owner = fleet.owner()
    bound = bind(client, owner, fleet.group(owner))
    caplog.set_level(logging.INFO)
    response = deliver(client, bound, "push", {"ref": "refs/heads/main"}, delivery="d-push")
    assert (response.status_code, response.json()) == (
        202,
        {"message": "push events are not acted on: only release", "delivery": "d-push", "outcome": "ignored"},
    )
    edited = deliver(client, bound, "release", release_payload(action="edited"), delivery="d-edit")
    assert edited.json()["message"] == "release edited: only a published release deploys"
    assert [(d["id"], d["outcome"]) for d in deliveries(client, owner)] == [
        ("d-edit", "ignored"),
        ("d-push", "ignored"),
    ]
    assert (
        "github delivery d-push (push None of octo-org/thermostat): push events are not acted on"
        in caplog.text
    )


def test_deliveries_are_the_owners_own(client: TestClient, fleet: Fleet) -> None:
    owner, other = fleet.owner(), fleet.owner()
    bound = bind(client, owner, fleet.group(owner))
    theirs = bind(client, other, fleet.group(other))
    deliver(client, bound, "ping", ping_payload(), delivery="mine")
    deliver(client, theirs, "ping", ping_payload(), delivery="theirs")
    assert [d["id"] for d in deliveries(client, owner)] == ["mine"]
    assert [d["id"] for d in deliveries(client, other)] == ["theirs"]
    assert [d["id"] for d in deliveries(client, owner, binding=bound["binding"]["id"])] == ["mine"]
    response = client.get(
        "/v1/webhooks/github/deliveries", headers=owner.headers, params={"binding": theirs["binding"]["id"]}
    )
    assert (response.status_code, response.json()) == (404, {"message": "No such GitHub binding"})
    # The same delivery id under two bindings is two deliveries.
    assert deliver(client, bound, "ping", ping_payload(), delivery="theirs").status_code == 200
    assert sorted(d["id"] for d in deliveries(client, owner)) == ["mine", "theirs"]


def test_the_binding_rollout_is_sent_as_the_posts_fields() -> None:
    from otaship.receiver.github.jobs import _form_fields

    group = Group(id="g" * 24, owner_id="o" * 24, name="fleet", token="t" * 16)

    def binding(*, waves: str | None = None, canary: str | None = None) -> GithubBinding:
        return GithubBinding(
            repo=REPO,
            group_id=group.id,
            asset_pattern="*.bin",
            owner_id=group.owner_id,
            secret_sealed="x",
            waves=waves,
            canary_group_id=canary,
        )

    # `waves` (issue #14) goes as the POST's own field, so that it works once the POST takes it.
    assert _form_fields(binding(waves="10,50,100"), group, version="1.0.0", commit="c") == {
        "group": group.id,
        "token": group.token,
        "version": "1.0.0",
        "commit": "c",
        "waves": "10,50,100",
    }
    assert _form_fields(binding(canary="c" * 24), group, version="1.0.0", commit="c")["canary"] == "c" * 24


def test_a_delivery_row_is_a_job_claimed_once(services: Services, fleet: Fleet) -> None:
    from datetime import timedelta

    from otaship.receiver.github.deliveries import claim_job
    from otaship.receiver.ids import utcnow

    owner = fleet.owner()
    with write_session(services.engine) as session:
        session.add(
            GithubDelivery(
                binding_id="b" * 24,
                owner_id=owner.user.id,
                delivery_id="d",
                event="release",
                outcome="queued",
            )
        )
    now = utcnow()
    with write_session(services.engine) as session:
        job = claim_job(session=session, now=now, lease=timedelta(seconds=60))
        assert job is not None and job.attempts == 1
    with write_session(services.engine) as session:
        assert claim_job(session=session, now=now, lease=timedelta(seconds=60)) is None
    # Its lease lapsed (its replica died): claimed again.
    with write_session(services.engine) as session:
        job = claim_job(session=session, now=now + timedelta(seconds=61), lease=timedelta(seconds=60))
        assert job is not None and job.attempts == 2


# --- reported back to GitHub ----------------------------------------------------------


def test_a_webhook_started_rollout_is_reported_as_a_deployment(
    client: TestClient, fleet: Fleet, standin: GithubStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner, name="thermostats")
    canary = fleet.group(owner, name="canary", parent=group)
    fleet.device(canary, name="c1", firmware_version="1.0.0")
    standin.host.assets[1] = build_image("1.4.0")
    bound = bind(client, owner, group, canary=canary.id, report_deployments=True)
    row = finished(client, owner, release(client, bound, assets=[(1, "firmware.bin", 1)]))
    assert row["outcome"] == "deployed"
    rollout_id = row["rollout"]
    eventually(lambda: len(standin.statuses) == 1, "the first deployment status")
    create = next(seen for seen in standin.api_seen if seen.path.endswith("/deployments"))
    assert create.method == "POST"
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert create.json() == {
        "ref": COMMIT,
        "environment": "firmware/thermostats",
        # The delivery keys its deployment, so that a retry finds it.
        "payload": {"version": "1.4.0", "rollout_id": rollout_id, KEY_FIELD: row["id"]},
        "description": "otaship 1.4.0",
        "auto_merge": False,
        "required_contexts": [],
        "production_environment": True,
    }
    log_url = f"http://127.0.0.1:8080/v1/rollouts/{rollout_id}"
    assert standin.statuses == [
        (1000, {"state": "in_progress", "description": "1.4.0: canary, canary 0/1", "log_url": log_url})
    ]
    assert client.post(f"/v1/rollouts/{rollout_id}/abort", headers=owner.headers).status_code == 200
    eventually(lambda: len(standin.statuses) == 2, "the failure status")
    assert standin.statuses[1] == (
        1000,
        {"state": "failure", "description": "1.4.0: aborted, canary 0/1", "log_url": log_url},
    )
    assert TOKEN not in caplog.text


def test_a_plain_deploy_is_reported_a_success_and_a_failing_github_changes_nothing(
    client: TestClient, fleet: Fleet, services: Services, standin: GithubStandIn
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner, name="lamps")
    standin.host.assets[1] = build_image("1.4.0")
    bound = bind(client, owner, group, report_deployments=True)
    assert (
        finished(client, owner, release(client, bound, assets=[(1, "firmware.bin", 1)]))["outcome"]
        == "deployed"
    )
    eventually(lambda: len(standin.statuses) == 1, "the success status")
    assert standin.statuses[0][1] == {"state": "success", "description": "1.4.0 deployed"}

    # GitHub down for every attempt: the release still deploys.
    standin.host.assets[2] = build_image("1.5.0")
    standin.commits["v1.5.0"] = COMMIT
    standin.api_failures = 3
    row = finished(client, owner, release(client, bound, tag="v1.5.0", assets=[(2, "firmware.bin", 1)]))
    assert (row["outcome"], row["version"]) == ("deployed", "1.5.0")
    ota = ota_of(services, group)
    assert ota is not None and ota.version == "1.5.0"
    with read_session(services.engine) as session:
        stored = session.exec(select(GithubDelivery).where(GithubDelivery.tag == "v1.5.0")).one()
        assert stored.github_deployment_id is None
    assert len(standin.deployments) == 1
    # Each retry looked for a deployment the failed try might have created.
    assert [(seen.method, seen.path) for seen in standin.api_seen[-3:]] == [
        ("POST", f"/repos/{REPO}/deployments"),
        ("GET", f"/repos/{REPO}/deployments"),
        ("GET", f"/repos/{REPO}/deployments"),
    ]


@pytest.mark.parametrize("github_timeout", [1])
@pytest.mark.parametrize("answer", ["timed out", "502 after creating"])
def test_a_deployment_github_created_without_answering_is_not_created_again(
    client: TestClient, fleet: Fleet, services: Services, standin: GithubStandIn, answer: str
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner, name="lamps")
    standin.host.assets[1] = build_image("1.4.0")
    if answer == "timed out":
        standin.creation_delay = 2.5  # the receiver waits 1 s
    else:
        standin.created_then_failed = 1
    bound = bind(client, owner, group, report_deployments=True)
    delivery = release(client, bound, assets=[(1, "firmware.bin", 1)])
    row = finished(client, owner, delivery)
    assert row["outcome"] == "deployed"
    eventually(lambda: len(standin.statuses) == 1, "the success status")
    assert standin.statuses == [(1000, {"state": "success", "description": "1.4.0 deployed"})]
    assert [body["payload"] for body in standin.deployments] == [
        {"version": "1.4.0", "rollout_id": None, KEY_FIELD: delivery}
    ]
    deployment_calls = [seen for seen in standin.api_seen if seen.path == f"/repos/{REPO}/deployments"]
    assert [seen.method for seen in deployment_calls] == ["POST", "GET"]
    assert dict(httpx.QueryParams(deployment_calls[1].query)) == {
        "ref": COMMIT,
        "environment": "firmware/lamps",
        "per_page": "100",
    }
    with read_session(services.engine) as session:
        stored = session.exec(select(GithubDelivery).where(GithubDelivery.delivery_id == delivery)).one()
        assert stored.github_deployment_id == 1000


def test_the_time_from_a_delivery_to_its_deploy(
    client: TestClient, fleet: Fleet, services: Services, standin: GithubStandIn, pytestconfig: pytest.Config
) -> None:
    """A 1.5 MiB asset from the stand-in: the 202, then the deploy recorded; the times go to the summary."""
    import time

    from tests.conftest import SUMMARY

    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("1.4.0", code_size=1536 * 1024 - 340)
    standin.host.assets[1] = image
    bound = bind(client, owner, group)
    started = time.monotonic()
    delivery = release(client, bound, assets=[(1, "firmware.bin", len(image))])
    answered = time.monotonic() - started
    eventually(lambda: ota_of(services, group) is not None, "the deploy to be recorded", interval=0.005)
    recorded = time.monotonic() - started
    assert finished(client, owner, delivery)["outcome"] == "deployed"
    # GitHub waits 10 s for an answer.
    assert answered < 10
    pytestconfig.stash.setdefault(SUMMARY, []).append(
        f"github webhook, {len(image)} byte asset ({services.settings.resolved_database_url.split(':')[0]}): "
        f"202 after {answered * 1000:.0f} ms, deploy recorded after {recorded * 1000:.0f} ms"
    )
