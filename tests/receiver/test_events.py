"""The event lines at info: deploys and every change of a rollout's state, one
line each, exact, through the real app and database; and nothing logged for a
transaction that did not commit."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlmodel import col, select
from starlette.testclient import TestClient

from otaship.receiver.db.engine import write_session
from otaship.receiver.db.models import Deployment, Rollout
from otaship.receiver.events import after_commit
from otaship.receiver.services import Services
from tests.receiver.rollouts.test_rollouts import Setup, post_rollout, report, services, setup, succeed, tick

# The fixtures, shared with test_rollouts.py: deploys write triggers, as with a broker.
__all__ = ["services", "setup"]

EVENT_LOGGERS = ("otaship.deploys", "otaship.rollouts")


@pytest.fixture
def events(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def event_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name in EVENT_LOGGERS and r.levelno == logging.INFO]


def sha_prefix(client: TestClient, s: Setup, group_id: str) -> str:
    otas = client.get("/v1/ota/group", headers=s.owner.headers).json()["otas"]
    sha256: str = next(o["sha256"] for o in otas if o["group"] == group_id)
    return sha256[:12]


def states(s: Setup, rollout_id: str) -> str:
    return f"group={s.group.id} canary_group={s.canary.id} version=1.1.0"


def test_a_plain_deploy_is_one_line_with_its_ids(
    client: TestClient, services: Services, setup: Setup, events: pytest.LogCaptureFixture
) -> None:
    s = setup
    commit = "0123456789abcdef0123456789abcdef01234567"
    response = client.post(
        "/v1/ota/group",
        headers=s.owner.headers,
        data={"group": s.group.id, "token": s.group.token, "version": "1.0.1", "commit": commit},
        files={"firmware": ("firmware.bin", _image("1.0.1"))},
    )
    assert response.status_code == 201, response.text
    # The group and both subgroups get a trigger: their effective version changed.
    assert event_lines(events) == [
        f"deployed version=1.0.1 group={s.group.id} owner={s.owner.user.id} kind=plain rollout=- "
        f"sha256={sha_prefix(client, s, s.group.id)} commit={commit} triggers=3"
    ]
    [record] = [r for r in events.records if r.name == "otaship.deploys"]
    fields: dict[str, Any] = record.__dict__
    assert (fields["event"], fields["group"], fields["kind"], fields["triggers"]) == (
        "deploy",
        s.group.id,
        "plain",
        3,
    )
    assert len(fields["sha256"]) == 64

    # The same version and bytes again changes nothing, and says nothing.
    events.clear()
    again = client.post(
        "/v1/ota/group",
        headers=s.owner.headers,
        data={"group": s.group.id, "token": s.group.token, "version": "1.0.1", "commit": commit},
        files={"firmware": ("firmware.bin", _image("1.0.1"))},
    )
    assert again.status_code == 201 and again.json()["deployed"] is False
    assert event_lines(events) == []


def test_a_rollout_from_canary_to_complete_logs_each_step(
    client: TestClient, services: Services, setup: Setup, events: pytest.LogCaptureFixture
) -> None:
    s = setup
    rollout_id = post_rollout(client, s).json()["rollout"]["id"]
    sha = sha_prefix(client, s, s.canary.id)
    owner = s.owner.user.id
    assert event_lines(events) == [
        f"deployed version=1.1.0 group={s.canary.id} owner={owner} kind=canary rollout={rollout_id} "
        f"sha256={sha} commit=- triggers=1",
        f"rollout {rollout_id} new -> canary: {states(s, rollout_id)} targeted=2 succeeded=0 failed=0 "
        "timed_out=0 stopped=0 pending=2; reason: started by a deploy with a canary",
    ]
    events.clear()
    succeed(services, s, s.canary_devices)
    tick(services)
    assert event_lines(events) == [
        f"deployed version=1.1.0 group={s.group.id} owner={owner} kind=promotion rollout={rollout_id} "
        f"sha256={sha} commit=- triggers=2",
        f"rollout {rollout_id} canary -> fleet: {states(s, rollout_id)} targeted=2 succeeded=2 failed=0 "
        "timed_out=0 stopped=0 pending=0; reason: canary healthy: 2/2 succeeded",
    ]
    events.clear()
    succeed(services, s, s.fleet_devices)
    tick(services)
    assert event_lines(events) == [
        f"rollout {rollout_id} fleet -> complete: {states(s, rollout_id)} targeted=6 succeeded=6 failed=0 "
        "timed_out=0 stopped=0 pending=0; reason: all 6 device(s) reported",
    ]
    [record] = [r for r in events.records if r.name == "otaship.rollouts"]
    assert (record.__dict__["from_state"], record.__dict__["to_state"]) == ("fleet", "complete")
    assert record.__dict__["counts"]["succeeded"] == 6


def test_a_halt_says_why_with_the_counts(
    client: TestClient, services: Services, setup: Setup, events: pytest.LogCaptureFixture
) -> None:
    s = setup
    rollout_id = post_rollout(client, s).json()["rollout"]["id"]
    events.clear()
    succeed(services, s, s.canary_devices[:1])
    report(services, s, s.canary_devices[1], "update-response", {"code": 203})
    tick(services)
    assert event_lines(events) == [
        f"rollout {rollout_id} canary -> halted: {states(s, rollout_id)} targeted=2 succeeded=1 failed=1 "
        "timed_out=0 stopped=0 pending=0; reason: 1 canary device(s) failed; error_threshold tolerates 0",
    ]


def test_an_abort_and_a_supersede_are_logged(
    client: TestClient, services: Services, setup: Setup, events: pytest.LogCaptureFixture
) -> None:
    s = setup
    first = post_rollout(client, s, "1.1.0").json()["rollout"]["id"]
    events.clear()
    second = post_rollout(client, s, "1.2.0", seed=1).json()["rollout"]["id"]
    with write_session(services.engine) as session:
        canary_deploy = session.exec(select(Deployment).where(col(Deployment.rollout_id) == second)).one().id
    lines = event_lines(events)
    assert lines[0].startswith(f"deployed version=1.2.0 group={s.canary.id} ")
    assert lines[1] == (
        f"rollout {first} canary -> aborted: {states(s, first)} targeted=2 succeeded=0 failed=0 "
        f"timed_out=0 stopped=2 pending=0; reason: superseded by deployment {canary_deploy} of 1.2.0 "
        f"to group {s.canary.id} (rollout {second})"
    )
    assert lines[2].startswith(f"rollout {second} new -> canary: ")
    assert len(lines) == 3

    events.clear()
    assert client.post(f"/v1/rollouts/{second}/abort", headers=s.owner.headers).status_code == 200
    assert event_lines(events) == [
        f"rollout {second} canary -> aborted: group={s.group.id} canary_group={s.canary.id} version=1.2.0 "
        "targeted=2 succeeded=0 failed=0 timed_out=0 stopped=2 pending=0; reason: aborted by request",
    ]


def test_a_held_canary_says_once_that_it_waits_for_a_promote(
    client: TestClient, services: Services, setup: Setup, events: pytest.LogCaptureFixture
) -> None:
    s = setup
    rollout_id = post_rollout(client, s, auto_promote="false").json()["rollout"]["id"]
    events.clear()
    succeed(services, s, s.canary_devices)
    tick(services)
    tick(services)
    assert event_lines(events) == [
        f"rollout {rollout_id} canary -> canary: {states(s, rollout_id)} targeted=2 succeeded=2 failed=0 "
        "timed_out=0 stopped=0 pending=0; reason: canary healthy; waiting for a promote",
    ]


def test_nothing_is_logged_for_a_transaction_that_rolled_back(
    services: Services, events: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("otaship.rollouts")
    with pytest.raises(RuntimeError), write_session(services.engine) as session:
        after_commit(session, logger, "rolled back")
        session.exec(select(Rollout)).all()
        raise RuntimeError("the transaction fails after the decision")
    with write_session(services.engine) as session:
        after_commit(session, logger, "committed %s, literally", event="test")
        assert event_lines(events) == []  # not before the commit
    assert event_lines(events) == ["committed %s, literally"]


def _image(version: str) -> bytes:
    from tests.esp_image import build_image

    return build_image(version)
