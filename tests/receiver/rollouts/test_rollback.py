"""Automatic rollback through the real app and database (SQLite and
PostgreSQL), reports fed straight in as in test_waves.py: a halted rollout
with rollback=true gives each wave that got the version back what it ran
before, triggers it and follows its devices; without it, nothing changes."""

from __future__ import annotations

import dataclasses
import itertools
import json
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import col, select
from starlette.testclient import TestClient

from otaship.firmware.signing_keys import Scheme
from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.enums import Outcome
from otaship.receiver.db.models import Deployment, RolloutDevice
from otaship.receiver.ids import utcnow
from otaship.receiver.rollouts.policy import RetryPolicy
from otaship.receiver.rollouts.rollback import (
    LEAVE,
    ROLL_BACK,
    WaveFacts,
    close_rollbacks,
    retry_rollbacks,
    roll_back,
    wave_rollback,
)
from otaship.receiver.rollouts.store import evaluate, lock_rollout
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from tests.conftest import Fleet
from tests.esp_image import build_image
from tests.receiver.rollouts.test_rollouts import report, rollout, tick, trigger_topics
from tests.receiver.rollouts.test_waves import Waves, fail, post, seen, succeed
from tests.signing import private_pem, public_pem
from tests.waiting import eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The app's own clock does not retry: a test that counts a failed device
    would otherwise race it to the row. Tests of retries call them themselves."""
    return dataclasses.replace(settings, trigger_retries=0)


@pytest.fixture
def services(services: Services) -> Services:
    """Deploys write triggers, as with a broker configured."""
    return dataclasses.replace(services, notify=True)


@pytest.fixture(name="w")
def waves_setup(fleet: Fleet, services: Services) -> Waves:
    """test_waves.py's fleet: a group with three waves of two devices on
    1.0.0, and two devices in the rest of it."""
    owner = fleet.owner()
    group = fleet.group(owner, name="fleet")
    waves = [fleet.group(owner, name=f"wave{i + 1}", parent=group) for i in range(3)]
    rest = fleet.group(owner, name="rest", parent=group)
    devices = [
        [fleet.device(wave, name=f"w{i}d{j}", firmware_version="1.0.0") for j in range(2)]
        for i, wave in enumerate(waves)
    ]
    fleet_devices = [fleet.device(rest, name=f"r{j}", firmware_version="1.0.0") for j in range(2)]
    return Waves(owner, group, waves, rest, devices, fleet_devices)


def plain_deploy(client: TestClient, w: Waves, version: str = "1.0.0") -> None:
    response = client.post(
        "/v1/ota/group",
        headers=w.owner.headers,
        data={"group": w.group.id, "token": w.group.token, "version": version},
        files={"firmware": ("firmware.bin", build_image(version))},
    )
    assert response.status_code == 201, response.text


def halt_in_wave_2(client: TestClient, services: Services, w: Waves, **fields: Any) -> str:
    """Wave 1 healthy, then one of wave 2's devices fails: the rollout halts."""
    rollout_id: str = post(client, w, **fields).json()["rollout"]["id"]
    succeed(services, w, w.devices[0])
    tick(services)
    succeed(services, w, w.devices[1][:1])
    fail(services, w, w.devices[1][1:])
    tick(services)
    return rollout_id


def status(services: Services, w: Waves, device: Any, version: str) -> None:
    report(services, w, device, "status", {"fw_version": version, "uptime": 5})  # type: ignore[arg-type]


HALT_REASON = "1 wave 2 device(s) failed; error_threshold tolerates 0"


def test_a_halted_rollout_with_rollback_gives_both_waves_their_previous_image_and_follows_them(
    client: TestClient, services: Services, w: Waves
) -> None:
    plain_deploy(client, w)
    assert seen(client, w) == ["1.0.0"] * 4
    before = len(trigger_topics(services))
    rollout_id = halt_in_wave_2(client, services, w, rollback="true")

    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert (state["state"], state["reason"]) == ("rolled_back", HALT_REASON)
    assert [s["state"] for s in state["stages"]] == ["passed", "failed", "skipped", "skipped"]
    # Waves 1 and 2 are offered 1.0.0 again; wave 3 and the rest never saw 1.1.0.
    assert seen(client, w) == ["1.0.0"] * 4
    mqtt_user = w.owner.user.mqtt_user
    assert trigger_topics(services)[before + 2 :] == [
        (f"/{mqtt_user}/groups/{w.waves[0].id}/update-trigger", json.dumps({"version": "1.0.0"})),
        (f"/{mqtt_user}/groups/{w.waves[1].id}/update-trigger", json.dumps({"version": "1.0.0"})),
    ]
    # The stored image, no re-upload: the same bytes as the first deploy.
    with read_session(services.engine) as session:
        kinds = session.exec(
            select(Deployment.group_id, Deployment.version, Deployment.sha256)
            .where(col(Deployment.rollout_id) == rollout_id)
            .order_by(col(Deployment.deployed_at))
        ).all()
        first = session.exec(select(Deployment.sha256).where(col(Deployment.group_id) == w.group.id)).one()
    assert kinds[2:] == [(w.waves[0].id, "1.0.0", first), (w.waves[1].id, "1.0.0", first)]

    waves = [(r["wave"], r["group"], r["result"], r["version"]) for r in state["rollback"]]
    assert waves == [
        (1, w.waves[0].id, f"canary ({w.waves[0].id}) rolled back to 1.0.0", "1.0.0"),
        (2, w.waves[1].id, f"wave 2 ({w.waves[1].id}) rolled back to 1.0.0", "1.0.0"),
    ]
    # Wave 2's failed device never left 1.0.0: back at once. The others run 1.1.0.
    counts = [
        (r["targeted"], r["went_back"], r["did_not"], r["unreachable"], r["pending"])
        for r in state["rollback"]
    ]
    assert counts == [(2, 0, 0, 0, 2), (2, 1, 0, 0, 1)]

    status(services, w, w.devices[0][0], "1.0.0")
    status(services, w, w.devices[1][0], "1.0.0")
    # w0d1 stays silent.
    with write_session(services.engine) as session:
        assert close_rollbacks(session=session, now=utcnow()) == []
    closed: list[str] = []

    def follow_time_over() -> bool:
        # The app's own clock may hold the row for a moment (skip_locked).
        with write_session(services.engine) as session:
            closed.extend(close_rollbacks(session=session, now=utcnow() + timedelta(seconds=1801)))
        return bool(closed)

    eventually(follow_time_over, "the rollback's follow time to be closed")
    assert closed == [rollout_id]
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    counts = [
        (r["targeted"], r["went_back"], r["did_not"], r["unreachable"], r["pending"])
        for r in state["rollback"]
    ]
    assert counts == [(2, 1, 0, 1, 0), (2, 2, 0, 0, 0)]
    rows = {
        (d["name"], d["wave"]): (d["outcome"], d["reason"])
        for d in state["devices"]
        if d["stage"] == "rollback"
    }
    assert rows == {
        ("w0d0", 1): ("succeeded", None),
        ("w0d1", 1): ("timed_out", "timeout"),
        ("w1d0", 2): ("succeeded", None),
        ("w1d1", 2): ("succeeded", None),
    }
    # The rollback's devices are counted apart from the stages'.
    assert [s["targeted"] for s in state["stages"]] == [2, 2, 0, 0]
    # A version rolled back is as final as a halted one: bump it.
    response = post(client, w)
    assert response.status_code == 409, response.text
    assert "was halted" in response.json()["message"]


def test_without_rollback_a_halt_leaves_every_wave_as_it_is(
    client: TestClient, services: Services, w: Waves
) -> None:
    plain_deploy(client, w)
    before = len(trigger_topics(services))
    rollout_id = halt_in_wave_2(client, services, w)
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert (state["state"], state["reason"], state["rollback"]) == ("halted", HALT_REASON, [])
    assert seen(client, w) == ["1.1.0", "1.1.0", "1.0.0", "1.0.0"]
    assert len(trigger_topics(services)) == before + 2
    assert all(d["stage"] != "rollback" for d in state["devices"])


def test_a_wave_with_no_previous_firmware_is_left_as_it_is_and_said(
    client: TestClient, services: Services, w: Waves
) -> None:
    rollout_id = halt_in_wave_2(client, services, w, rollback="true")
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert (state["state"], state["reason"]) == ("rolled_back", HALT_REASON)
    assert [(r["result"], r["version"], r["targeted"]) for r in state["rollback"]] == [
        (f"canary ({w.waves[0].id}) left as it is: it had no previous firmware", None, 0),
        (f"wave 2 ({w.waves[1].id}) left as it is: it had no previous firmware", None, 0),
    ]
    assert seen(client, w) == ["1.1.0", "1.1.0", None, None]
    assert len(trigger_topics(services)) == 2


def test_a_group_deployed_to_after_the_rollout_started_is_not_touched(
    client: TestClient, services: Services, w: Waves
) -> None:
    """A deploy under a running rollout ends it (the supersede rule), so the
    deploy comes after a halt without rollback, and the rollback is run on
    the halted rollout directly: wave 1 was deployed to since the start, and
    keeps that; wave 2 goes back."""
    plain_deploy(client, w)
    rollout_id = halt_in_wave_2(client, services, w)
    plain_fix = "1.2.0"
    response = client.post(
        "/v1/ota/group",
        headers=w.owner.headers,
        data={"group": w.waves[0].id, "token": w.waves[0].token, "version": plain_fix},
        files={"firmware": ("firmware.bin", build_image(plain_fix))},
    )
    assert response.status_code == 201, response.text
    before = len(trigger_topics(services))
    with write_session(services.engine) as session:
        locked = lock_rollout(session, rollout_id, skip_locked=False)
        assert locked is not None
        notes = roll_back(session, locked, notify=True, now=utcnow())
    assert notes == [
        f"canary ({w.waves[0].id}) left as it is: group {w.waves[0].id} was deployed to after the rollout started",
        f"wave 2 ({w.waves[1].id}) rolled back to 1.0.0",
    ]
    assert seen(client, w) == [plain_fix, "1.0.0", "1.0.0", "1.0.0"]
    mqtt_user = w.owner.user.mqtt_user
    assert trigger_topics(services)[before:] == [
        (f"/{mqtt_user}/groups/{w.waves[1].id}/update-trigger", json.dumps({"version": "1.0.0"}))
    ]


def test_two_evaluators_roll_a_halted_rollout_back_once(
    client: TestClient, services: Services, w: Waves
) -> None:
    """The halt and its rollback are one transaction under the rollout's lock:
    an evaluation after it finds the rollout ended and deploys nothing."""
    plain_deploy(client, w)
    rollout_id = halt_in_wave_2(client, services, w, rollback="true")
    triggers = len(trigger_topics(services))
    tick(services, after=10_000)
    answers: list[str | None] = []

    def evaluated() -> bool:
        with write_session(services.engine) as session:
            answers.append(evaluate(session=session, rollout_id=rollout_id, notify=True, now=utcnow()))
        # None: the app's own clock held the row at that moment.
        return answers[-1] is not None

    eventually(evaluated, "an evaluation of the rollout")
    assert answers[-1] == "rolled_back"
    assert len(trigger_topics(services)) == triggers
    with read_session(services.engine) as session:
        rolled = session.exec(
            select(Deployment.group_id).where(
                col(Deployment.rollout_id) == rollout_id, col(Deployment.version) == "1.0.0"
            )
        ).all()
    assert sorted(rolled) == sorted([w.waves[0].id, w.waves[1].id])


FACTS = [
    WaveFacts("wave 2 (g)", recorded, version, stored, since)
    for recorded, version, stored, since in itertools.product(
        (True, False), ("1.0.0", None), (True, False), (None, "group g")
    )
]


@pytest.mark.parametrize("facts", FACTS)
def test_what_a_wave_is_rolled_back_to_against_the_rules_stated_plainly(facts: WaveFacts) -> None:
    """A wave goes back only when nothing was deployed to it since the start
    and its previous firmware was recorded, existed and is still stored."""
    action, note = wave_rollback(facts)
    goes_back = (
        facts.deployed_to_since is None
        and facts.previous_recorded
        and facts.previous_version is not None
        and facts.previous_image_stored
    )
    assert action == (ROLL_BACK if goes_back else LEAVE)
    assert note.startswith("wave 2 (g) ")
    assert ("rolled back to 1.0.0" in note) == goes_back


def test_a_previous_image_the_group_no_longer_accepts_is_left_as_it_is_and_said(
    client: TestClient, services: Services, w: Waves
) -> None:
    """A key added to the group during the canary halts the promotion (the
    signature re-check); the rollback's deploy of the unsigned 1.0.0 is
    refused by the same check, so the canary keeps 1.1.0, and says why."""
    plain_deploy(client, w)
    rollout_id = post(client, w, auto_promote="false", rollback="true").json()["rollout"]["id"]
    succeed(services, w, w.devices[0])
    tick(services)
    pem = public_pem(private_pem(Scheme.RSA_3072, "late")).decode()
    added = client.post(f"/v1/groups/{w.group.id}/keys", json={"public_key": pem}, headers=w.owner.headers)
    assert added.status_code == 201, added.text
    response = client.post(f"/v1/rollouts/{rollout_id}/promote", headers=w.owner.headers)
    assert response.status_code == 409
    assert response.json()["message"].startswith(
        "the rollout was halted and rolled back: the image no longer passes the signature check: "
    )
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert state["state"] == "rolled_back"
    assert state["reason"].startswith("the image no longer passes the signature check: ")
    [canary] = state["rollback"]
    assert canary["result"].startswith(
        f"canary ({w.waves[0].id}) left as it is: 1.0.0 no longer passes the signature check: "
    )
    assert (canary["version"], canary["targeted"]) == (None, 0)
    assert seen(client, w) == ["1.1.0", "1.0.0", "1.0.0", "1.0.0"]


def test_a_device_that_answers_but_does_not_go_back_is_counted_apart(
    client: TestClient, services: Services, w: Waves
) -> None:
    plain_deploy(client, w)
    rollout_id = halt_in_wave_2(client, services, w, rollback="true")
    report(services, w, w.devices[0][0], "update-response", {"code": 203})  # type: ignore[arg-type]
    status(services, w, w.devices[0][1], "1.1.0")
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    first = state["rollback"][0]
    assert (
        first["targeted"],
        first["went_back"],
        first["did_not"],
        first["unreachable"],
        first["pending"],
    ) == (
        2,
        0,
        1,
        0,
        1,
    )
    rows = {d["name"]: (d["outcome"], d["reason"]) for d in state["devices"] if d["stage"] == "rollback"}
    assert (rows["w0d0"], rows["w0d1"]) == (("failed", "code"), ("pending", None))


def test_a_device_flashing_the_new_version_when_its_wave_rolls_back_is_not_counted_back(
    client: TestClient, services: Services, w: Waves
) -> None:
    """Wave 2's first device has answered 201 when the halt comes: its row
    still says 1.0.0, so its rollback row starts succeeded. It misses the
    rollback's trigger while it flashes, and boots into 1.1.0: it did not go back."""
    plain_deploy(client, w)
    rollout_id: str = post(client, w, rollback="true").json()["rollout"]["id"]
    succeed(services, w, w.devices[0])
    tick(services)
    flashing, failing = w.devices[1]
    report(services, w, flashing, "update-response", {"code": 201})  # type: ignore[arg-type]
    fail(services, w, [failing])
    tick(services)
    state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
    assert (state["state"], state["reason"]) == ("rolled_back", HALT_REASON)

    def wave_2() -> tuple[tuple[int, ...], dict[str, tuple[str, str | None]]]:
        state = rollout(client, w, rollout_id)  # type: ignore[arg-type]
        (counts,) = [
            (r["targeted"], r["went_back"], r["did_not"], r["unreachable"], r["pending"], r["retrying"])
            for r in state["rollback"]
            if r["wave"] == 2
        ]
        rows = {
            d["name"]: (d["outcome"], d["reason"])
            for d in state["devices"]
            if d["stage"] == "rollback" and d["wave"] == 2
        }
        return counts, rows

    assert wave_2() == ((2, 2, 0, 0, 0, 0), {"w1d0": ("succeeded", None), "w1d1": ("succeeded", None)})
    before = len(trigger_topics(services))
    status(services, w, flashing, "1.1.0")
    # Not back: it did not go back.
    assert wave_2() == ((2, 1, 1, 0, 0, 0), {"w1d0": ("failed", "reverted"), "w1d1": ("succeeded", None)})
    # It is to be reached again (3 attempts), the first at once: just booted, it is
    # idle, and a backoff would only leave it on the version rolled back from.
    failed_at = utcnow()
    with write_session(services.engine) as session:
        done = retry_rollbacks(session=session, policy=RetryPolicy(), notify=True, now=failed_at)
    assert (done.scheduled, done.devices, done.groups) == (1, 0, [])
    with read_session(services.engine) as session:
        row = session.get(RolloutDevice, (rollout_id, "rollback", flashing.id))
        assert row is not None and (row.outcome, row.retry_at) == (Outcome.RETRYING, failed_at)
    # Waiting for its retry, it is neither back nor given up on.
    assert wave_2() == (
        (2, 1, 0, 0, 0, 1),
        {"w1d0": ("retrying", None), "w1d1": ("succeeded", None)},
    )
    assert len(trigger_topics(services)) == before
    with write_session(services.engine) as session:
        # The clock's next pass, with the default 60 s backoff.
        retried = retry_rollbacks(session=session, policy=RetryPolicy(), notify=True, now=failed_at).groups
    # Its group's trigger again, for the version its wave goes back to.
    assert retried == [w.waves[1].id]
    assert trigger_topics(services)[before:] == [
        (f"/{w.owner.user.mqtt_user}/groups/{w.waves[1].id}/update-trigger", json.dumps({"version": "1.0.0"}))
    ]
    assert wave_2() == ((2, 1, 0, 0, 1, 0), {"w1d0": ("pending", None), "w1d1": ("succeeded", None)})
    status(services, w, flashing, "1.0.0")
    assert wave_2() == ((2, 2, 0, 0, 0, 0), {"w1d0": ("succeeded", None), "w1d1": ("succeeded", None)})


def test_a_device_silent_in_its_rollback_is_dark_only_after_the_previous_image_s_download(
    client: TestClient, services: Services, w: Waves
) -> None:
    """The dark window of a rollback's device allows for the download of the
    image its wave goes back to, as a stage's does for the image it deploys."""
    plain_deploy(client, w)
    rollout_id = halt_in_wave_2(client, services, w, rollback="true")
    assert rollout(client, w, rollout_id)["state"] == "rolled_back"  # type: ignore[arg-type]
    silent = w.devices[1][0]
    # It answers the rollback's trigger (201, updating) and is heard of no more.
    report(services, w, silent, "update-response", {"code": 201})  # type: ignore[arg-type]
    answered = utcnow()
    # 10 s of silence after 1.0.0's download, which this rate makes 50 s.
    policy = RetryPolicy(attempts=1, dark_after=10, download_rate=len(build_image("1.0.0")) / 50)

    def retry_at(seconds: float) -> int:
        with write_session(services.engine) as session:
            return retry_rollbacks(
                session=session, policy=policy, notify=True, now=answered + timedelta(seconds=seconds)
            ).scheduled

    assert retry_at(59) == 0
    assert retry_at(61) == 1
    with read_session(services.engine) as session:
        row = session.get(RolloutDevice, (rollout_id, "rollback", silent.id))
        assert row is not None and (row.outcome, row.wave) == (Outcome.RETRYING, 1)
