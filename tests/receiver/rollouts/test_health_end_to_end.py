"""Health after the reboot end to end: a real receiver (`otaship serve`), its
embedded broker, and simulated IoTaaP OS devices that fail in each of
`otaship simulate --fail-mode`'s ways.

One canary, one rollout: a device that comes back on its old version, one that
goes silent after its 201, one that keeps rebooting on the new version (in a
fleet spread over two processes, beside a healthy device), and one whose
download fails. The receiver must record each one's signal as its `reason`.
Nothing is retried (OTASHIP_TRIGGER_RETRIES=0), so each reason is the first
attempt's; a device is dark after 3 s of silence. The reboot loop is the slow
part: the receiver counts a boot only more than 5 s after the last one, and
fails the device on its fourth reboot, about 30 s after it updated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.action_fixtures import Tenant, make_tenant
from tests.receiver.mqtt.test_fleet import run_fleets
from tests.receiver.rollouts.test_retries_end_to_end import devices_of
from tests.services import free_port


@pytest.fixture
def watching(tmp_path: Path) -> Iterator[Tenant]:
    """A receiver with its embedded broker that retries nothing and calls 3 s of silence dark."""
    port = free_port()
    running = make_tenant(
        tmp_path / "data",
        f"embedded://127.0.0.1:{port}",
        f"127.0.0.1:{port}",
        OTASHIP_TRIGGER_RETRIES="0",
        OTASHIP_TRIGGER_DARK_AFTER="3",
    )
    yield running
    running.receiver.stop()


def test_each_fail_mode_is_recorded_as_its_reason(watching: Tenant) -> None:
    t = watching
    fleet = t.group("fleet")
    canary = t.group("canary", parent=fleet)
    rest = t.group("rest", parent=fleet)
    (reverts,) = t.devices(canary, 1, "1.0.0", "revert")
    (dark,) = t.devices(canary, 1, "1.0.0", "dark")
    (fails,) = t.devices(canary, 1, "1.0.0", "code")
    pair = t.devices(canary, 2, "1.0.0", "pair")
    rest_ids = t.devices(rest, 1, "1.0.0", "rest")
    # One of the pair loops, the other is healthy: each in a process of its own.
    looping = t.sim(canary, pair, "1.0.0", fail_rate=0.5, fail_mode="reboot-loop", processes=2)
    (loops,) = [pair[i] for i in looping.failing_indexes()]
    (healthy,) = set(pair) - {loops}
    fleets = [
        t.sim(canary, [reverts], "1.0.0", fail_rate=1.0),  # the default fail mode: revert
        t.sim(canary, [dark], "1.0.0", fail_rate=1.0, fail_mode="dark"),
        t.sim(canary, [fails], "1.0.0", fail_rate=1.0, fail_mode="203"),
        looping,
        t.sim(rest, rest_ids, "1.0.0"),
    ]
    # One success is enough and three failures are tolerated: the soak keeps
    # the canary judged until the looping device's fourth failure halts it.
    policy = {"success_threshold": "0.2", "error_threshold": "3", "soak": "120"}
    rollout_id, summaries = asyncio.run(
        run_fleets(
            t,
            fleets,
            lambda: t.deploy(fleet, "1.1.0", canary=canary["id"], **policy)["rollout"]["id"],
            timeout=90,
        )
    )
    state = t.rollout(rollout_id)
    assert state["state"] == "halted", state
    assert state["reason"] == "4 canary device(s) failed; error_threshold tolerates 3", state
    devices = devices_of(state, "canary")
    assert {d: (row["outcome"], row["reason"]) for d, row in devices.items()} == {
        reverts: ("failed", "reverted"),
        dark: ("failed", "dark"),
        fails: ("failed", "code"),
        loops: ("failed", "reboot-loop"),
        healthy: ("succeeded", None),
    }
    assert (devices[fails]["code"], devices[reverts]["fw_version"], devices[loops]["fw_version"]) == (
        203,
        "1.0.0",
        "1.1.0",
    )
    canary_stage = state["stages"][0]
    assert canary_stage["failed_by_reason"] == {"code": 1, "dark": 1, "reboot-loop": 1, "reverted": 1}
    # The fleet stage never started: the rest was never triggered.
    assert not devices_of(state, "fleet")
    # The simulator's own account of the same devices.
    revert_run, dark_run, code_run, loop_run, rest_run = summaries
    assert (revert_run.failed, dark_run.dark, code_run.errors, loop_run.reboot_loop) == (1, 1, 1, 1)
    assert loop_run.device(loops).reboots >= 4 and loop_run.device(healthy).outcome == "updated"
    assert dark_run.devices[0].version == "1.0.0" and dark_run.devices[0].last_code == 201
    assert rest_run.not_triggered == 1
