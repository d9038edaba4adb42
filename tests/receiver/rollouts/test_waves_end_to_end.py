"""Rollouts in waves end to end: `otaship serve` on the machine's Mosquitto
(two of them on one PostgreSQL for the replica test), and simulated IoTaaP OS
devices, four in each of three waves and four in the rest of the group.

Every message on the owner's topics (the receiver's triggers, the devices'
reports) is recorded with the time it arrived, so that the tests can say in
which order things happened: a wave's devices are triggered, and answer 201,
only after every device of the wave before it runs the new version.

Nothing is retried (OTASHIP_TRIGGER_RETRIES=0) but where a test says so: a
failure halts at once, and each device is triggered once per deploy that
reaches its group. With retries on, that stays so for a failure that halts its
wave: the retry it is given comes due only after the halt decided in the same
pass of the clock, so the device's group hears next of the rollback. A device
is dark after 3 s of silence since its 201. Each fail mode's reason, end to
end, is in test_health_end_to_end.py; here the dark one is timed against its
wave's timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from otaship.protocol import parse_report_topic, parse_trigger_topic, report_filters, trigger_topic
from otaship.receiver.cli import cli
from otaship.receiver.db.engine import create_db_engine, read_session
from otaship.receiver.db.models import Device
from otaship.receiver.settings import Settings
from otaship.simulator.config import SimulationConfig
from otaship.simulator.fleet import FleetSummary, register_devices
from tests.action_fixtures import OWNER, Tenant, make_tenant
from tests.receiver.mqtt.test_fleet import with_fleets
from tests.receiver_process import ReceiverProcess
from tests.services import MOSQUITTO, require

OLD, NEW = "1.0.0", "1.1.0"
PER_GROUP = 4
BROKER = "127.0.0.1:1883"


class QuickTenant(Tenant):
    """A tenant whose `otaship group create` runs in this process: the same
    command, without a Python interpreter started for each group."""

    def group(self, name: str, parent: dict[str, Any] | None = None) -> dict[str, Any]:
        args = ["group", "create", name, "--owner", OWNER, *(["--parent", parent["id"]] if parent else [])]
        unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OTASHIP_")}
        result = CliRunner().invoke(cli, args, env={**unset, **self.env})
        assert result.exit_code == 0, result.output
        created: dict[str, Any] = json.loads(result.stdout)
        return created


def receiver(data_dir: Path, **settings: str) -> QuickTenant:
    require("Mosquitto", MOSQUITTO)
    t = make_tenant(
        data_dir,
        f"mqtt://{BROKER}",
        BROKER,
        **{"OTASHIP_TRIGGER_RETRIES": "0", "OTASHIP_TRIGGER_DARK_AFTER": "3", **settings},
    )
    return QuickTenant(**{f.name: getattr(t, f.name) for f in fields(Tenant)})


@pytest.fixture
def tenant(tmp_path: Path) -> Iterator[Tenant]:
    running = receiver(tmp_path / "data")
    yield running
    running.receiver.stop()


# Retried once, a second after the failure.
RETRIES = {"OTASHIP_TRIGGER_RETRIES": "1", "OTASHIP_TRIGGER_RETRY_BACKOFF": "1"}


@pytest.fixture(params=[{}, RETRIES], ids=["no-retries", "retries"])
def either(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Tenant]:
    """A receiver without retries, and one with."""
    running = receiver(tmp_path / "data", **request.param)
    yield running
    running.receiver.stop()


# -- what the broker carried, and when ----------------------------------------------------


@dataclass(frozen=True)
class Message:
    at: float  # time.monotonic() on arrival
    group: str | None  # a trigger's group
    device: str | None  # a report's device
    kind: str  # "trigger", "status" or "update-response"
    payload: dict[str, Any]


class Timeline:
    """Every trigger and report on one owner's topics, in arrival order."""

    def __init__(self, tenant: Tenant) -> None:
        self.user = tenant.mqtt_user
        self._lock = threading.Lock()
        self.messages: list[Message] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"timeline-{secrets.token_hex(6)}", protocol=mqtt.MQTTv311
        )
        self.client.username_pw_set(tenant.mqtt_user, tenant.mqtt_password)
        self.client.on_connect = lambda client, *_: client.subscribe(
            [(f, 1) for f in [*report_filters(mqtt_user=self.user), trigger_topic(self.user, "+")]]
        )
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def __enter__(self) -> Timeline:
        host, port = BROKER.split(":")
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert self._subscribed.wait(10), "the timeline could not subscribe"
        return self

    def __exit__(self, *_: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        payload = json.loads(message.payload)
        report, trigger = parse_report_topic(message.topic), parse_trigger_topic(message.topic)
        if report is not None:
            entry = Message(at, None, report.device_id, report.kind, payload)
        else:
            assert trigger is not None, message.topic
            entry = Message(at, trigger.group_id, None, "trigger", payload)
        with self._lock:
            self.messages.append(entry)

    def of(self, *, device: str | None = None, group: str | None = None) -> list[Message]:
        with self._lock:
            return [
                m
                for m in self.messages
                if (device is None or m.device == device) and (group is None or m.group == group)
            ]

    def triggers(self, group: dict[str, Any], version: str = NEW) -> list[float]:
        return [m.at for m in self.of(group=group["id"]) if m.payload.get("version") == version]

    def first_on(self, device: str, version: str) -> float | None:
        """When the device first reported running `version`."""
        for m in self.of(device=device):
            if m.kind == "status" and m.payload["fw_version"] == version:
                return m.at
        return None

    def first_201(self, device: str) -> float | None:
        for m in self.of(device=device):
            if m.kind == "update-response" and m.payload["code"] == 201:
                return m.at
        return None

    def last_version(self, device: str) -> str | None:
        statuses = [m for m in self.of(device=device) if m.kind == "status"]
        return statuses[-1].payload["fw_version"] if statuses else None

    def all_on(self, devices: list[str], version: str) -> bool:
        return all(self.last_version(d) == version for d in devices)


# -- a group in waves -----------------------------------------------------------------------


@dataclass
class Waves:
    group: dict[str, Any]
    subgroups: list[dict[str, Any]]  # the three waves, then the rest of the group
    ids: list[list[str]]  # their devices

    @property
    def waves(self) -> str:
        return ",".join(g["id"] for g in self.subgroups[:3])

    def fleets(self, t: Tenant, **per_wave: dict[str, Any]) -> list[SimulationConfig]:
        """A fleet per subgroup, on OLD; `wave2={...}` changes wave 2's (`rest=` the rest's)."""
        names = ["wave1", "wave2", "wave3", "rest"]
        return [
            t.sim(g, ids, OLD, **per_wave.get(name, {}))
            for name, g, ids in zip(names, self.subgroups, self.ids, strict=True)
        ]


def in_waves(t: Tenant) -> Waves:
    """A group with three wave subgroups and the rest, PER_GROUP devices on OLD in each."""
    group = t.group("fleet")
    subgroups = [t.group(name, parent=group) for name in ("wave1", "wave2", "wave3", "rest")]
    settings = Settings.from_env(t.env)
    ids = []
    for number, subgroup in enumerate(subgroups):
        # Device ids are MQTT client ids on the shared broker: unique to this owner.
        prefix = f"{t.mqtt_user}-{number}"
        wave_ids = [f"{prefix}-{n}" for n in range(PER_GROUP)]
        assert register_devices(settings, t.sim(subgroup, wave_ids, OLD)) == (PER_GROUP, 0)
        ids.append(wave_ids)
    return Waves(group, subgroups, ids)


async def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll `condition` (which may block: it runs in a thread) until it holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


async def deploy_until_rolled_back(t: Tenant, w: Waves, timeline: Timeline) -> str:
    """Deploy NEW in waves with rollback on; wait until the rollout is
    rolled back and waves 1 and 2 run OLD again. The rollout's id."""
    body = await asyncio.to_thread(t.deploy, w.group, NEW, waves=w.waves, rollback="true")
    rollout_id: str = body["rollout"]["id"]
    await until(lambda: t.rollout(rollout_id)["state"] == "rolled_back", "the rollback")
    await until(lambda: timeline.all_on(w.ids[0] + w.ids[1], OLD), "waves 1 and 2 back on the old version")
    return rollout_id


def control(t: Tenant, rollout_id: str, action: str) -> dict[str, Any]:
    """POST /v1/rollouts/<id>/<action> (pause, resume) as the owner."""
    response = httpx.post(f"{t.url}/v1/rollouts/{rollout_id}/{action}", headers=t.headers, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def assert_each_wave_saw_the_version_only_when_it_started(timeline: Timeline, w: Waves) -> None:
    """Each subgroup's trigger for NEW came once, after every device of the wave
    before it ran NEW; its devices answered 201 only after that trigger."""
    previous_done = None
    for subgroup, ids in zip(w.subgroups, w.ids, strict=True):
        (triggered,) = timeline.triggers(subgroup)
        if previous_done is not None:
            assert previous_done < triggered, subgroup["name"]
        firsts = [timeline.first_201(d) for d in ids]
        assert all(f is not None and f > triggered for f in firsts), (subgroup["name"], firsts, triggered)
        ons = [timeline.first_on(d, NEW) for d in ids]
        assert all(o is not None and o > triggered for o in ons), subgroup["name"]
        previous_done = max(o for o in ons if o is not None)


def assert_stages_ran_in_order(state: dict[str, Any]) -> None:
    stages = state["stages"]
    assert [(s["name"], s["wave"], s["state"]) for s in stages] == [
        ("canary", 1, "passed"),
        ("wave", 2, "passed"),
        ("wave", 3, "passed"),
        ("fleet", None, "complete"),
    ]
    for before, after in itertools.pairwise(stages):
        assert at(before["ended_at"]) <= at(after["started_at"]), (before, after)


def assert_healthy_fleets(summaries: list[FleetSummary]) -> None:
    for summary in summaries:
        assert summary.versions == {NEW: PER_GROUP}
        assert [(d.triggers, d.updates, d.last_code) for d in summary.devices] == [(1, 1, 201)] * PER_GROUP


# -- the tests ------------------------------------------------------------------------------


def test_three_healthy_waves_then_the_fleet_each_see_the_version_only_when_their_wave_starts(
    tenant: Tenant,
) -> None:
    t = tenant
    w = in_waves(t)
    with Timeline(t) as timeline:

        async def rollout() -> str:
            body = await asyncio.to_thread(t.deploy, w.group, NEW, waves=w.waves)
            rollout_id: str = body["rollout"]["id"]
            await until(lambda: t.rollout(rollout_id)["state"] == "complete", "the rollout to complete")
            return rollout_id

        rollout_id, summaries = asyncio.run(with_fleets(t, w.fleets(t), rollout))

    state = t.rollout(rollout_id)
    assert state["reason"] == f"all {4 * PER_GROUP} device(s) reported"
    assert_stages_ran_in_order(state)
    assert_each_wave_saw_the_version_only_when_it_started(timeline, w)
    assert_healthy_fleets(summaries)
    # The fleet stage deployed to the group: its own topic and the rest's, not the waves' again.
    assert len(timeline.triggers(w.group)) == 1
    assert {d["outcome"] for d in state["devices"]} == {"succeeded"}
    versions = t.versions()
    assert {versions[d] for ids in w.ids for d in ids} == {NEW}


def test_a_failing_second_wave_rolls_waves_1_and_2_back_and_the_rest_never_sees_the_version(
    either: Tenant,
) -> None:
    """The reverting device reboots more slowly than the others of wave 2: they
    have all booted 1.1.0 when its failure halts the rollout, so that none is
    still flashing (and deaf to the rollback's trigger) when it comes. With
    retries on, its failure halts the wave in the pass of the clock that gives
    it a retry, before the retry is due: it is never triggered again for 1.1.0."""
    t = either
    w = in_waves(t)
    # What the waves ran before: a rollback gives it back.
    t.deploy(w.group, OLD)
    # One device of wave 2 comes back on the old version: its failure halts.
    (reverting,) = w.ids[1][:1]
    with Timeline(t) as timeline:

        async def rollout() -> str:
            return await deploy_until_rolled_back(t, w, timeline)

        wave1_fleet, _, *later = w.fleets(t)
        slow = replace(t.sim(w.subgroups[1], [reverting], OLD, fail_rate=1.0), reboot_delay=(2.0, 2.5))
        fleets = [wave1_fleet, t.sim(w.subgroups[1], w.ids[1][1:], OLD), slow, *later]
        rollout_id, (wave1, wave2, reverted, wave3, rest) = asyncio.run(with_fleets(t, fleets, rollout))

    state = t.rollout(rollout_id)
    assert state["state"] == "rolled_back"
    assert state["reason"] == "1 wave 2 device(s) failed; error_threshold tolerates 0", state
    assert [s["state"] for s in state["stages"]] == ["passed", "failed", "skipped", "skipped"]
    assert state["stages"][1]["failed_by_reason"] == {"reverted": 1}
    assert [(r["wave"], r["group"], r["version"]) for r in state["rollback"]] == [
        (1, w.subgroups[0]["id"], OLD),
        (2, w.subgroups[1]["id"], OLD),
    ]
    # Retries on or off: the version, then the rollback, and nothing between
    # (the plain deploy's trigger may still go out once the timeline listens).
    for subgroup in w.subgroups[:2]:
        offered = [m.payload["version"] for m in timeline.of(group=subgroup["id"])]
        assert offered[offered.index(NEW) :] == [NEW, OLD], offered
    wave2_rows = {d["id"]: d for d in state["devices"] if d["stage"] == "canary" and d["wave"] == 2}
    failed = wave2_rows[reverting]
    assert (failed["outcome"], failed["reason"], failed["retries"], failed["next_retry_at"]) == (
        "failed",
        "reverted",
        0,
        None,
    )
    assert [(s["retries"], s["retrying"]) for s in state["stages"]] == [(0, 0)] * 4
    # Each device of waves 1 and 2 went back (the reverted ones never left).
    rollback_rows = {d["id"]: d["outcome"] for d in state["devices"] if d["stage"] == "rollback"}
    assert rollback_rows == dict.fromkeys(w.ids[0] + w.ids[1], "succeeded")
    # Wave 1 updated and went back: two updates each; wave 2's healthy ones too.
    assert [(d.triggers, d.updates, d.version) for d in wave1.devices] == [(2, 2, OLD)] * PER_GROUP
    assert [(d.triggers, d.updates, d.version) for d in wave2.devices] == [(2, 2, OLD)] * (PER_GROUP - 1)
    # The reverting device never left 1.0.0: it answers the rollback's trigger with a 202.
    assert [(d.triggers, d.updates, d.rollbacks, d.last_code, d.version) for d in reverted.devices] == [
        (2, 0, 1, 202, OLD)
    ]
    # Wave 3 and the rest: never triggered, never on the new version, never offered it.
    for summary in (wave3, rest):
        assert [(d.triggers, d.version) for d in summary.devices] == [(0, OLD)] * PER_GROUP
    for subgroup, ids in zip(w.subgroups[2:], w.ids[2:], strict=True):
        assert timeline.triggers(subgroup) == []
        assert all(timeline.first_on(d, NEW) is None for d in ids)
        assert t.latest(subgroup) == OLD
    assert t.latest(w.subgroups[0]) == t.latest(w.subgroups[1]) == OLD
    versions = t.versions()
    assert {versions[d] for ids in w.ids for d in ids} == {OLD}


def seen_by_the_receiver(t: Tenant, device_id: str) -> bool:
    """Whether the receiver has stored a report of the device (its row's last_seen)."""
    engine = create_db_engine(Settings.from_env(t.env).resolved_database_url)
    try:
        with read_session(engine) as session:
            row = session.get(Device, device_id)
            return row is not None and row.last_seen is not None
    finally:
        engine.dispose()


def test_a_device_back_on_the_old_version_before_a_restarted_receiver_heard_from_it_still_rolls_back(
    tmp_path: Path,
) -> None:
    """No worker of the receiver, restarted after the fleet came online, has
    seen a status of the reverting device: it reports only when it boots. The
    worker that takes its 201 reads the boot before it from the device's row,
    so the status it sends when it boots back on the old version is a revert,
    not the boot it updates from; else its wave would wait for its timeout,
    and never roll back. Only the revert may fail it here: it goes dark (it
    reports only when it boots) long after the test would have timed out, as
    a device that goes on reporting never does. With retries on."""
    t = receiver(tmp_path / "data", **RETRIES, OTASHIP_TRIGGER_DARK_AFTER="120")
    try:
        w = in_waves(t)
        t.deploy(w.group, OLD)
        (reverting,) = w.ids[1][:1]
        restarted: list[float] = []
        with Timeline(t) as timeline:

            async def rollout() -> str:
                # Its boot report stored: a crash cannot take it along.
                await until(lambda: seen_by_the_receiver(t, reverting), "the quiet device's boot report")
                t.receiver.kill()
                t.receiver.stop()
                await asyncio.to_thread(t.receiver.start)
                restarted.append(time.monotonic())
                return await deploy_until_rolled_back(t, w, timeline)

            wave1_fleet, _, *later = w.fleets(t)
            quiet = replace(
                t.sim(w.subgroups[1], [reverting], OLD, fail_rate=1.0),
                reboot_delay=(2.0, 2.5),
                status_interval=0,
            )
            fleets = [wave1_fleet, t.sim(w.subgroups[1], w.ids[1][1:], OLD), quiet, *later]
            rollout_id, (_, _, reverted, wave3, rest) = asyncio.run(with_fleets(t, fleets, rollout))
        state = t.rollout(rollout_id)
    finally:
        t.receiver.stop()

    # Between the restart and its 201 the device said nothing; then it came back on OLD.
    answered = timeline.first_201(reverting)
    assert answered is not None, (timeline.of(device=reverting), state)
    statuses = [(m.at, m.payload["fw_version"]) for m in timeline.of(device=reverting) if m.kind == "status"]
    assert [v for when, v in statuses if when > restarted[0]] == [OLD]
    assert all(when < restarted[0] or when > answered for when, _ in statuses)
    assert (state["state"], state["reason"]) == (
        "rolled_back",
        "1 wave 2 device(s) failed; error_threshold tolerates 0",
    )
    assert [s["state"] for s in state["stages"]] == ["passed", "failed", "skipped", "skipped"]
    assert state["stages"][1]["failed_by_reason"] == {"reverted": 1}
    rows = {d["id"]: d["outcome"] for d in state["devices"] if d["stage"] == "rollback"}
    assert rows == dict.fromkeys(w.ids[0] + w.ids[1], "succeeded")
    assert [(d.triggers, d.updates, d.rollbacks, d.version) for d in reverted.devices] == [(2, 0, 1, OLD)]
    assert all(d.triggers == 0 for d in wave3.devices + rest.devices)


def test_a_pause_in_wave_2_holds_it_past_its_soak_and_a_resume_completes_the_rollout(tenant: Tenant) -> None:
    t = tenant
    w = in_waves(t)
    soak = 3
    with Timeline(t) as timeline:

        async def rollout() -> tuple[str, dict[str, Any]]:
            body = await asyncio.to_thread(t.deploy, w.group, NEW, waves=w.waves, soak=str(soak))
            rollout_id: str = body["rollout"]["id"]
            await until(lambda: t.rollout(rollout_id)["wave"] == 2, "wave 2")
            paused = await asyncio.to_thread(control, t, rollout_id, "pause")
            assert paused["paused"] is True
            # Devices triggered before the pause go on updating; then they report on
            # NEW for longer than the soak and two ticks of the clock.
            await until(lambda: timeline.all_on(w.ids[1], NEW), "wave 2 on the new version")
            await until(
                lambda: all(
                    len([m for m in timeline.of(device=d) if m.payload.get("fw_version") == NEW]) >= soak + 3
                    for d in w.ids[1]
                ),
                "wave 2 to run the new version past its soak",
            )
            held = await asyncio.to_thread(t.rollout, rollout_id)
            resumed = await asyncio.to_thread(control, t, rollout_id, "resume")
            assert resumed["paused"] is False
            await until(lambda: t.rollout(rollout_id)["state"] == "complete", "the rollout to complete")
            return rollout_id, held

        (rollout_id, held), summaries = asyncio.run(with_fleets(t, w.fleets(t), rollout))

    # Held: wave 2 fully succeeded, its soak long over, and nothing advanced.
    assert (held["state"], held["wave"], held["paused"]) == ("canary", 2, True)
    assert [(s["state"], s["succeeded"]) for s in held["stages"]] == [
        ("passed", PER_GROUP),
        ("running", PER_GROUP),
        ("pending", 0),
        ("pending", 0),
    ]
    state = t.rollout(rollout_id)
    assert [(c["action"], c["by"]) for c in state["controls"]] == [
        ("pause", "ops@example.com"),
        ("resume", "ops@example.com"),
    ]
    assert at(state["controls"][1]["at"]) <= at(state["stages"][2]["started_at"])
    assert_stages_ran_in_order(state)
    assert_each_wave_saw_the_version_only_when_it_started(timeline, w)
    assert_healthy_fleets(summaries)


def test_a_receiver_restarted_in_wave_2_carries_on_and_completes(tenant: Tenant) -> None:
    t = tenant
    w = in_waves(t)
    with Timeline(t) as timeline:

        async def rollout() -> str:
            # Wave 2 soaks for a while: the receiver is killed, and started again, in it.
            body = await asyncio.to_thread(t.deploy, w.group, NEW, waves=w.waves, **{"wave2.soak": "4"})
            rollout_id: str = body["rollout"]["id"]
            await until(lambda: t.rollout(rollout_id)["wave"] == 2, "wave 2")
            await until(lambda: timeline.all_on(w.ids[1], NEW), "wave 2 on the new version")
            assert (await asyncio.to_thread(t.rollout, rollout_id))["wave"] == 2
            t.receiver.kill()
            t.receiver.stop()
            await asyncio.to_thread(t.receiver.start)
            await until(lambda: t.rollout(rollout_id)["state"] == "complete", "the rollout to complete")
            return rollout_id

        rollout_id, summaries = asyncio.run(with_fleets(t, w.fleets(t), rollout))

    state = t.rollout(rollout_id)
    assert_stages_ran_in_order(state)
    assert_each_wave_saw_the_version_only_when_it_started(timeline, w)
    assert_healthy_fleets(summaries)
    assert {d["outcome"] for d in state["devices"]} == {"succeeded"}


def test_two_receivers_on_one_postgresql_advance_each_wave_once(postgres_url: str, tmp_path: Path) -> None:
    t = receiver(tmp_path / "data", OTASHIP_DATABASE_URL=postgres_url)
    # A replica: the same database and share group, its own port and MQTT client id.
    replica = ReceiverProcess({**t.env, "OTASHIP_MQTT_CLIENT_ID": f"otaship-test-{secrets.token_hex(6)}"})
    try:
        replica.start()
        w = in_waves(t)
        with Timeline(t) as timeline:

            async def rollout() -> dict[str, Any]:
                body = await asyncio.to_thread(t.deploy, w.group, NEW, waves=w.waves)
                rollout_id: str = body["rollout"]["id"]
                await until(lambda: t.rollout(rollout_id)["state"] == "complete", "the rollout to complete")
                return t.rollout(rollout_id)

            state, summaries = asyncio.run(with_fleets(t, w.fleets(t), rollout))
    finally:
        replica.stop()
        t.receiver.stop()

    # assert_each_wave… checks one trigger per subgroup: one advance each, by either replica.
    assert_each_wave_saw_the_version_only_when_it_started(timeline, w)
    assert len(timeline.triggers(w.group)) == 1
    assert_healthy_fleets(summaries)
    assert_stages_ran_in_order(state)


def test_a_device_gone_dark_in_wave_2_fails_it_long_before_its_timeout(tenant: Tenant) -> None:
    t = tenant
    w = in_waves(t)
    dark = w.ids[1][0]
    with Timeline(t):

        async def rollout() -> str:
            body = await asyncio.to_thread(t.deploy, w.group, NEW, waves=w.waves, canary_timeout="600")
            rollout_id: str = body["rollout"]["id"]
            await until(lambda: t.rollout(rollout_id)["state"] == "halted", "the halt")
            return rollout_id

        fleets = w.fleets(t, wave2={"fail_rate": 1.0, "failing_ids": [dark], "fail_mode": "dark"})
        rollout_id, (_, wave2, wave3, rest) = asyncio.run(with_fleets(t, fleets, rollout))

    state = t.rollout(rollout_id)
    assert state["reason"] == "1 wave 2 device(s) failed; error_threshold tolerates 0", state
    wave2_stage = state["stages"][1]
    assert wave2_stage["failed_by_reason"] == {"dark": 1}
    # Dark after 3 s of silence, judged on the next tick: well within the 600 s timeout.
    assert (at(wave2_stage["ended_at"]) - at(wave2_stage["started_at"])).total_seconds() < 30
    rows = {
        d["id"]: (d["outcome"], d["reason"])
        for d in state["devices"]
        if d["stage"] == "canary" and d["wave"] == 2
    }
    assert rows == {d: ("failed", "dark") if d == dark else ("succeeded", None) for d in w.ids[1]}
    assert wave2.device(dark).outcome == "dark"
    assert all(d.triggers == 0 for d in wave3.devices + rest.devices)
