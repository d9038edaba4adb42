"""A deploy that changes what a running rollout's groups run ends that rollout,
and a promotion never deploys over firmware newer than its rollout.

The tree used throughout:

    top ─┬─ fleet ─┬─ canary ── bench
         │         └─ rest
         └─ sibling
    other

A rollout of `fleet` with canary `canary` covers fleet, canary, bench and rest.
A deploy to top reaches all of them; sibling and other are outside it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import pytest
from sqlmodel import col, select
from starlette.testclient import TestClient

from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.images import record_image
from otaship.receiver.db.models import Deployment, Device, Group, GroupOta, Rollout
from otaship.receiver.ids import utcnow
from otaship.receiver.mqtt.reports import ReportIngester
from otaship.receiver.services import Services
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image
from tests.receiver.rollouts.test_rollouts import tick


@dataclass
class Tree:
    owner: Owner
    groups: dict[str, Group]
    devices: dict[str, list[Device]]


@pytest.fixture
def services(services: Services) -> Services:
    """Deploys write triggers, as with a broker configured."""
    return dataclasses.replace(services, notify=True)


@pytest.fixture
def tree(fleet: Fleet, services: Services) -> Tree:
    owner = fleet.owner()
    top = fleet.group(owner, name="top")
    group = fleet.group(owner, name="fleet", parent=top)
    canary = fleet.group(owner, name="canary", parent=group)
    groups = {
        "top": top,
        "fleet": group,
        "canary": canary,
        "bench": fleet.group(owner, name="bench", parent=canary),
        "rest": fleet.group(owner, name="rest", parent=group),
        "sibling": fleet.group(owner, name="sibling", parent=top),
        "other": fleet.group(owner, name="other"),
    }
    devices = {
        name: [fleet.device(g, name=f"{name}-{i}", firmware_version="1.0.0") for i in range(2)]
        for name, g in groups.items()
    }
    return Tree(owner, groups, devices)


def deploy(
    client: TestClient, t: Tree, group: str, version: str, *, canary: str | None = None, **fields: str
) -> Any:
    target = t.groups[group]
    data = {"group": target.id, "token": target.token, "version": version, **fields}
    if canary is not None:
        data["canary"] = t.groups[canary].id
    response = client.post(
        "/v1/ota/group",
        headers=t.owner.headers,
        data=data,
        files={"firmware": ("firmware.bin", build_image(version))},
    )
    assert response.status_code == 201, response.text
    return response.json()


def start(client: TestClient, t: Tree, version: str = "1.8.0", **fields: str) -> str:
    body = deploy(client, t, "fleet", version, canary="canary", **{"auto_promote": "false", **fields})
    assert body["rollout"]["state"] == "canary"
    return str(body["rollout"]["id"])


def get_rollout(client: TestClient, t: Tree, rollout_id: str) -> Any:
    response = client.get(f"/v1/rollouts/{rollout_id}", headers=t.owner.headers)
    assert response.status_code == 200, response.text
    return response.json()


def latest(client: TestClient, group: Group) -> str | None:
    ver: str | None = client.get(f"/v1/ota/group/latest/{group.id}").json().get("ver")
    return ver


def last_deployment(services: Services, group: Group) -> Deployment:
    with read_session(services.engine) as session:
        found = session.exec(
            select(Deployment)
            .where(col(Deployment.group_id) == group.id)
            .order_by(col(Deployment.deployed_at).desc(), col(Deployment.revision).desc())
        ).first()
    assert found is not None
    return found


def status(services: Services, t: Tree, devices: list[Device], version: str, uptime: int = 1) -> None:
    ReportIngester(services.engine).ingest_messages(
        (
            f"/{t.owner.user.mqtt_user}/devices/{device.id}/status",
            json.dumps({"fw_version": version, "uptime": uptime}).encode(),
        )
        for device in devices
    )


def canary_devices(t: Tree) -> list[Device]:
    return t.devices["canary"] + t.devices["bench"]


def test_a_plain_deploy_to_the_fleet_during_the_canary_aborts_the_rollout(
    client: TestClient, services: Services, tree: Tree
) -> None:
    """The issue's reproduction: the rollout used to stay `canary`, and its
    promotion then pushed 1.8.0 over the newer 1.7.0."""
    t = tree
    rollout_id = start(client, t)
    status(services, t, canary_devices(t), "1.8.0")

    body = deploy(client, t, "fleet", "1.7.0")
    assert body["message"] == "Firmware successfully deployed"
    deployment = last_deployment(services, t.groups["fleet"])
    assert deployment.version == "1.7.0"

    state = get_rollout(client, t, rollout_id)
    assert state["state"] == "aborted"
    assert state["reason"] == (
        f"superseded by deployment {deployment.id} of 1.7.0 to group {t.groups['fleet'].id}"
    )
    # The canary is back on the group's newer firmware; the devices follow it,
    # and the rollout keeps showing what each one runs.
    assert latest(client, t.groups["canary"]) == "1.7.0"
    status(services, t, canary_devices(t), "1.7.0", uptime=2)
    devices = get_rollout(client, t, rollout_id)["devices"]
    assert {(d["outcome"], d["fw_version"]) for d in devices} == {("succeeded", "1.7.0")}

    refused = client.post(f"/v1/rollouts/{rollout_id}/promote", headers=t.owner.headers)
    assert refused.status_code == 409
    assert refused.json() == {
        "message": "only a rollout in its canary stage can be promoted; this one is aborted"
    }
    assert latest(client, t.groups["fleet"]) == latest(client, t.groups["rest"]) == "1.7.0"


@pytest.mark.parametrize(
    ("target", "aborts"),
    [
        ("top", True),  # an ancestor: its deploy reaches the whole fleet
        ("fleet", True),
        ("canary", True),
        ("bench", True),  # below the canary
        ("rest", True),  # below the fleet: the promotion would overwrite it
        ("sibling", False),
        ("other", False),
    ],
)
def test_which_deploys_supersede_a_rollout(
    client: TestClient, services: Services, tree: Tree, target: str, aborts: bool
) -> None:
    t = tree
    rollout_id = start(client, t)
    deploy(client, t, target, "1.7.0")
    deployment = last_deployment(services, t.groups[target])
    state = get_rollout(client, t, rollout_id)
    if aborts:
        assert (state["state"], state["reason"]) == (
            "aborted",
            f"superseded by deployment {deployment.id} of 1.7.0 to group {t.groups[target].id}",
        )
        return
    assert (state["state"], state["reason"]) == ("canary", None)
    # Untouched: it still promotes, and the other group keeps its own firmware.
    status(services, t, canary_devices(t), "1.8.0")
    promoted = client.post(f"/v1/rollouts/{rollout_id}/promote", headers=t.owner.headers)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["state"] == "fleet"
    assert latest(client, t.groups["fleet"]) == "1.8.0"
    assert latest(client, t.groups[target]) == "1.7.0"


def test_a_deploy_of_the_same_version_and_bytes_changes_nothing_and_supersedes_nothing(
    client: TestClient, tree: Tree
) -> None:
    t = tree
    deploy(client, t, "rest", "1.6.0")
    rollout_id = start(client, t)
    again = deploy(client, t, "rest", "1.6.0")
    assert again["deployed"] is False
    assert get_rollout(client, t, rollout_id)["state"] == "canary"


def test_a_new_rollout_supersedes_the_one_in_progress(
    client: TestClient, services: Services, tree: Tree
) -> None:
    t = tree
    first = start(client, t, "1.8.0")
    second = start(client, t, "1.9.0")
    canary_deploy = last_deployment(services, t.groups["canary"])
    assert (canary_deploy.version, canary_deploy.rollout_id) == ("1.9.0", second)
    old = get_rollout(client, t, first)
    assert (old["state"], old["reason"]) == (
        "aborted",
        f"superseded by deployment {canary_deploy.id} of 1.9.0 to group {t.groups['canary'].id} (rollout {second})",
    )
    assert get_rollout(client, t, second)["state"] == "canary"


def test_the_promotion_of_another_rollout_supersedes(
    client: TestClient, services: Services, tree: Tree
) -> None:
    t = tree
    inner = start(client, t, "1.8.0")
    # A rollout of the whole tree, tried on the sibling first: its canary
    # deploy is outside the inner rollout's groups, its promotion is not.
    outer = deploy(client, t, "top", "2.0.0", canary="sibling", auto_promote="false")["rollout"]["id"]
    assert get_rollout(client, t, inner)["state"] == "canary"

    status(services, t, t.devices["sibling"], "2.0.0")
    promoted = client.post(f"/v1/rollouts/{outer}/promote", headers=t.owner.headers)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["state"] == "fleet"
    promotion = last_deployment(services, t.groups["top"])
    assert promotion.rollout_id == outer
    state = get_rollout(client, t, inner)
    assert (state["state"], state["reason"]) == (
        "aborted",
        f"superseded by deployment {promotion.id} of 2.0.0 to group {t.groups['top'].id} (rollout {outer})",
    )
    assert latest(client, t.groups["fleet"]) == "2.0.0"


def test_an_automatic_promotion_of_another_rollout_supersedes(
    client: TestClient, services: Services, tree: Tree
) -> None:
    t = tree
    inner = start(client, t, "1.8.0")
    outer = deploy(client, t, "top", "2.0.0", canary="sibling")["rollout"]["id"]
    status(services, t, t.devices["sibling"], "2.0.0")
    tick(services)
    assert get_rollout(client, t, outer)["state"] == "fleet"
    assert get_rollout(client, t, inner)["state"] == "aborted"


def change_behind_the_rollouts_back(services: Services, group: Group, version: str) -> None:
    """Give the group other firmware without going through a deploy (and so
    without the supersede rule): what the promotion check is there for."""
    with write_session(services.engine) as session:
        ota = session.exec(select(GroupOta).where(col(GroupOta.group_id) == group.id)).first()
        record_image(session=session, now=utcnow(), sha256="f" * 64, md5="0" * 32, size=1, object_key="k")
        if ota is None:
            ota = GroupOta(
                group_id=group.id,
                owner_id=group.owner_id,
                version=version,
                path="p",
                sha256="f" * 64,
            )
        else:
            ota.version, ota.sha256, ota.revision = version, "f" * 64, ota.revision + 1
        session.add(ota)


@pytest.mark.parametrize("how", ["automatic", "manual"])
@pytest.mark.parametrize("where", ["fleet", "top"])
def test_a_promotion_never_deploys_over_newer_firmware(
    client: TestClient, services: Services, tree: Tree, how: str, where: str
) -> None:
    t = tree
    deploy(client, t, "fleet", "1.6.0")
    before = last_deployment(services, t.groups["fleet"])
    rollout_id = start(client, t, auto_promote="true" if how == "automatic" else "false")
    change_behind_the_rollouts_back(services, t.groups[where], "1.9.0")
    status(services, t, canary_devices(t), "1.8.0")

    if how == "automatic":
        tick(services)
    else:
        refused = client.post(f"/v1/rollouts/{rollout_id}/promote", headers=t.owner.headers)
        assert refused.status_code == 409
        assert refused.json()["message"].startswith("the rollout was aborted: ")

    state = get_rollout(client, t, rollout_id)
    assert state["state"] == "aborted"
    assert state["reason"] == (
        f"the group no longer runs what it ran when the rollout started (deployment {before.id} of 1.6.0); "
        f"it now runs 1.9.0: not promoting over it"
    )
    assert [stage["state"] for stage in state["stages"]] == ["aborted", "skipped"]
    assert latest(client, t.groups["fleet"]) == "1.9.0"
    with read_session(services.engine) as session:
        promotions = session.exec(
            select(Deployment).where(
                col(Deployment.rollout_id) == rollout_id, col(Deployment.group_id) == t.groups["fleet"].id
            )
        ).all()
    assert promotions == []


def test_a_group_without_firmware_at_the_start_is_checked_too(
    client: TestClient, services: Services, tree: Tree
) -> None:
    t = tree
    rollout_id = start(client, t)
    change_behind_the_rollouts_back(services, t.groups["fleet"], "1.9.0")
    status(services, t, canary_devices(t), "1.8.0")
    refused = client.post(f"/v1/rollouts/{rollout_id}/promote", headers=t.owner.headers)
    assert refused.status_code == 409
    state = get_rollout(client, t, rollout_id)
    assert (state["state"], state["reason"]) == (
        "aborted",
        "the group no longer runs what it ran when the rollout started (no firmware); "
        "it now runs 1.9.0: not promoting over it",
    )


def test_a_rollout_whose_start_was_not_recorded_is_promoted_unchecked(
    client: TestClient, services: Services, tree: Tree
) -> None:
    """A rollout already running when the receiver was upgraded has no record of
    what its group ran; it promotes as it did before the check existed."""
    t = tree
    rollout_id = start(client, t)
    with write_session(services.engine) as session:
        row = session.get(Rollout, rollout_id)
        assert row is not None
        row.baseline_recorded = False
        session.add(row)
    change_behind_the_rollouts_back(services, t.groups["fleet"], "1.9.0")
    status(services, t, canary_devices(t), "1.8.0")
    promoted = client.post(f"/v1/rollouts/{rollout_id}/promote", headers=t.owner.headers)
    assert promoted.status_code == 200
    assert promoted.json()["state"] == "fleet"


def test_rolling_out_a_superseded_version_again_reaches_the_canary(
    client: TestClient, services: Services, tree: Tree
) -> None:
    """The canary's own record still holds the image, but the fleet's newer
    deploy is what it runs: posting the version again must deploy it again,
    not answer 201 for a canary that never gets it."""
    t = tree
    first = start(client, t, "1.8.0")
    deploy(client, t, "fleet", "1.7.0")
    assert get_rollout(client, t, first)["state"] == "aborted"
    assert latest(client, t.groups["canary"]) == "1.7.0"

    again = deploy(client, t, "fleet", "1.8.0", canary="canary", auto_promote="false")
    assert again["deployed"] is True
    assert again["rollout"]["id"] != first and again["rollout"]["state"] == "canary"
    assert latest(client, t.groups["canary"]) == latest(client, t.groups["bench"]) == "1.8.0"
    assert latest(client, t.groups["fleet"]) == "1.7.0"
    canary_deploy = last_deployment(services, t.groups["canary"])
    assert (canary_deploy.version, canary_deploy.rollout_id) == ("1.8.0", again["rollout"]["id"])


def test_a_plain_redeploy_of_what_an_ancestor_overrode_takes_effect_again(
    client: TestClient, services: Services, tree: Tree
) -> None:
    t = tree
    deploy(client, t, "canary", "1.5.0")
    deploy(client, t, "fleet", "1.6.0")
    assert latest(client, t.groups["canary"]) == "1.6.0"
    again = deploy(client, t, "canary", "1.5.0")
    assert (again["deployed"], again["ota"]["__v"]) == (True, 1)
    assert latest(client, t.groups["canary"]) == "1.5.0"
    # Now it is what the canary runs: posting it once more changes nothing.
    assert deploy(client, t, "canary", "1.5.0")["deployed"] is False


def test_a_rollout_of_what_an_ancestor_overrode_starts_again(
    client: TestClient, services: Services, tree: Tree
) -> None:
    t = tree
    deploy(client, t, "fleet", "1.8.0")
    deploy(client, t, "top", "1.9.0")
    assert latest(client, t.groups["fleet"]) == "1.9.0"
    staged = deploy(client, t, "fleet", "1.8.0", canary="canary")
    assert staged["deployed"] is True and staged["rollout"]["state"] == "canary"
    assert latest(client, t.groups["canary"]) == "1.8.0"
    assert latest(client, t.groups["fleet"]) == "1.9.0"
