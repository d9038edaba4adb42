"""`otaship simulate --processes N` against real parts: Mosquitto and `otaship serve`."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from otaship.receiver.cli import cli
from otaship.simulator.config import SimulationConfig, SimulationError, failing_devices
from otaship.simulator.fleet import FleetProgress, FleetSummary
from otaship.simulator.processes import run_fleet, shares, split
from tests import services
from tests.device_fleet import Group, MqttObserver, ReceiverWithFirmware, wait_until


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverWithFirmware]:
    running = ReceiverWithFirmware(tmp_path_factory.mktemp("processes") / "data")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def released(receiver: ReceiverWithFirmware) -> Group:
    group = receiver.group("released")
    receiver.deploy(group, "2.0.0")
    return group


@pytest.fixture
def observer() -> Iterator[MqttObserver]:
    services.require("Mosquitto", services.MOSQUITTO)
    running = MqttObserver().start()
    yield running
    running.stop()


def fleet(
    receiver: ReceiverWithFirmware, observer: MqttObserver, group: Group, devices: int, **options: Any
) -> SimulationConfig:
    options.setdefault("status_interval", 0.5)
    options.setdefault("reboot_delay", (0.05, 0.2))
    options.setdefault("progress_interval", 0.1)
    return SimulationConfig(
        server=receiver.url,
        mqtt_url=observer.mqtt_url,
        group_id=group.id,
        token=group.token,
        devices=devices,
        id_prefix=f"{observer.mqtt_user}-p",
        version="1.0.0",
        **options,
    )


def otaship(env: dict[str, str], argv: list[str]) -> Result:
    unset: dict[str, str | None] = {name: None for name in os.environ if name.startswith("OTASHIP_")}
    return CliRunner().invoke(cli, argv, env={**unset, **env})


# -- the shares --------------------------------------------------------------------------------


def test_split_is_near_equal_and_never_zero() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert split(16, 4) == [4, 4, 4, 4]
    assert split(2, 4) == [1, 1, 1, 1]
    assert split(7, 1) == [7]


def test_each_process_gets_a_run_of_ids_its_failing_devices_and_its_part_of_the_limits() -> None:
    config = SimulationConfig(
        server="http://127.0.0.1:1",
        mqtt_url="mqtt://u@127.0.0.1:1",
        group_id="g",
        token="t",
        devices=10,
        id_prefix="lab",
        fail_rate=0.3,
        fail_mode="reboot-loop",
        reboot_loop_interval=8.0,
        seed=4,
        duration=30,
        processes=3,
        http_connections=16,
        connect_concurrency=32,
    )
    parts = shares(config)
    ids = config.resolved_device_ids()
    assert [p.device_ids for p in parts] == [ids[:4], ids[4:7], ids[7:]]
    assert [p.devices for p in parts] == [4, 3, 3]
    # The fleet's failing devices whatever the number of processes.
    failing = {ids[i] for i in failing_devices(10, 0.3, 4)}
    assert {d for p in parts for d in p.failing_ids or []} == failing
    assert all(set(p.failing_ids or []) <= set(p.device_ids or []) for p in parts)
    assert [len(p.failing_indexes()) for p in parts] == [len(p.failing_ids or []) for p in parts]
    assert [p.http_connections for p in parts] == [6, 5, 5]
    assert [p.connect_concurrency for p in parts] == [11, 11, 10]
    assert {(p.processes, p.duration) for p in parts} == {(1, None)}
    # Each process's failing devices fail the fleet's way.
    assert {(p.fail_mode, p.reboot_loop_interval) for p in parts} == {("reboot-loop", 8.0)}
    assert len({p.seed for p in parts}) == 3
    for part in parts:
        part.check()
    # More processes than devices: one device each.
    assert [p.devices for p in shares(SimulationConfig(**{**config.__dict__, "devices": 2}))] == [1, 1]


# -- against the receiver ------------------------------------------------------------------------


def test_devices_over_three_processes_update_and_report_as_one_fleet(
    receiver: ReceiverWithFirmware, released: Group, observer: MqttObserver
) -> None:
    config = fleet(receiver, observer, released, 12, fail_rate=0.25, seed=7, processes=3)
    ids = config.resolved_device_ids()
    progress: list[FleetProgress] = []
    children: list[int] = []

    async def scenario() -> FleetSummary:
        stop = asyncio.Event()
        run = asyncio.create_task(run_fleet(config, stop=stop, on_progress=progress.append))
        try:
            await wait_until(lambda: bool(progress) and progress[-1].online == 12, 30, watch=[run])
            children.extend(p.pid for p in multiprocessing.active_children() if p.pid is not None)
            observer.trigger(released.id, "2.0.0")
            await wait_until(lambda: all(observer.statuses_after(d, 201) for d in ids), 30, watch=[run])
        finally:
            stop.set()
        return await asyncio.wait_for(run, 30)

    summary = asyncio.run(scenario())
    assert len(children) == 3
    failing = {ids[i] for i in failing_devices(12, 0.25, 7)}
    assert [d.id for d in summary.devices] == ids
    assert (summary.updated, summary.failed, summary.errors) == (9, 3, 0)
    assert {d.id for d in summary.devices if d.outcome == "failed"} == failing
    assert summary.versions == {"2.0.0": 9, "1.0.0": 3}
    assert (summary.target_version, summary.on_target) == ("2.0.0", 9)
    assert all(observer.codes(d) == [200, 201] for d in ids)
    assert summary.trigger_to_last_on_target is not None and summary.trigger_to_last_on_target > 0
    assert summary.all_online_seconds is not None and summary.all_online_seconds < summary.duration_seconds
    assert summary.update_seconds_p50 is not None and summary.cpu_seconds is not None
    # The merged progress: the whole fleet on one line, the last one with every device.
    assert {p.devices for p in progress} == {12}
    assert (progress[-1].updated, progress[-1].failed, progress[-1].on_target) == (9, 3, 9)
    json.dumps(summary.to_json())
    # Every process is gone.
    assert not multiprocessing.active_children()


def test_until_version_waits_for_every_process(
    receiver: ReceiverWithFirmware, released: Group, observer: MqttObserver
) -> None:
    """Devices 3 and 4 (the second process's) boot-loop back: the first process's share
    reaches 2.0.0 and keeps reporting; the fleet has not reached it and runs on."""
    seed = next(s for s in range(100) if failing_devices(4, 0.5, s) == {2, 3})
    config = fleet(
        receiver, observer, released, 4, fail_rate=0.5, seed=seed, processes=2, until_version="2.0.0"
    )
    ids = config.resolved_device_ids()

    async def scenario() -> tuple[FleetSummary, FleetSummary]:
        stop = asyncio.Event()
        run = asyncio.create_task(run_fleet(config, stop=stop))
        try:
            await wait_until(lambda: observer.booted(ids), 30, watch=[run])
            observer.trigger(released.id, "2.0.0")
            # The first share is on 2.0.0 and still online: three reports since its reboot.
            await wait_until(
                lambda: all(len(observer.statuses_after(d, 201)) >= 3 for d in ids), 30, watch=[run]
            )
            assert not run.done()
        finally:
            stop.set()
        stopped = await asyncio.wait_for(run, 30)
        # The same fleet without failures ends by itself once all four are on 2.0.0.
        good = SimulationConfig(
            **{**config.__dict__, "fail_rate": 0.0, "id_prefix": f"{observer.mqtt_user}-g"}
        )
        finished = asyncio.create_task(run_fleet(good))
        await wait_until(lambda: observer.booted(good.resolved_device_ids()), 30, watch=[finished])
        observer.trigger(released.id, "2.0.0")
        return stopped, await asyncio.wait_for(finished, 30)

    stopped, finished = asyncio.run(scenario())
    assert not stopped.reached_until_version
    assert (stopped.updated, stopped.failed, stopped.on_target) == (2, 2, 2)
    assert finished.reached_until_version and finished.updated == 4
    assert finished.last_on_target_seconds is not None
    assert finished.duration_seconds - finished.last_on_target_seconds < 10


def test_the_command_with_processes_stops_at_the_duration_and_exits_1(
    receiver: ReceiverWithFirmware, released: Group, observer: MqttObserver
) -> None:
    started = time.monotonic()
    exited = otaship(
        receiver.env,
        [
            *("simulate", "--group", released.id, "--token", released.token),
            *("--mqtt-url", observer.mqtt_url, "--server", receiver.url),
            *("--devices", "4", "--processes", "2", "--id-prefix", f"{observer.mqtt_user}-d"),
            *("--until-version", "9.9.9", "--duration", "3", "--json"),
        ],
    )
    assert exited.exit_code == 1, exited.output
    assert time.monotonic() - started < 25
    summary = json.loads(exited.stdout)
    assert (summary["devices"], summary["not_triggered"], summary["reached_until_version"]) == (4, 4, False)
    assert summary["versions"] == {"0.0.0": 4}
    assert 3 <= summary["timing"]["duration"] < 20
    assert summary["timing"]["all_online"] is not None
    assert [d["id"] for d in summary["device_details"]] == [
        f"{observer.mqtt_user}-d-{n:05d}" for n in range(1, 5)
    ]


def reap(pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)
    raise AssertionError(f"the detached simulation {pid} did not stop")


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_detach_with_processes_and_kill_stops_every_process(
    receiver: ReceiverWithFirmware, released: Group, observer: MqttObserver, tmp_path: Path
) -> None:
    prefix = f"{observer.mqtt_user}-bg"
    log = tmp_path / "fleet.log"
    result = otaship(
        receiver.env,
        [
            *("simulate", "--group", released.id, "--token", released.token),
            *("--mqtt-url", observer.mqtt_url, "--server", receiver.url),
            *("--devices", "4", "--processes", "2", "--version", "1.0.0"),
            *("--id-prefix", prefix, "--detach", str(log)),
        ],
    )
    assert result.exit_code == 0, result.output
    pid = int(result.stdout)
    try:
        ids = [f"{prefix}-{n:05d}" for n in range(1, 5)]
        # Online means every process's devices are subscribed.
        observer.trigger(released.id, "2.0.0")
        deadline = time.monotonic() + 30
        while not all(observer.codes(d)[-1:] == [201] for d in ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(observer.codes(d) == [200, 201] for d in ids)
    finally:
        os.kill(pid, signal.SIGTERM)
        assert reap(pid) == 0
    # Its processes (its session's) went with it.
    deadline = time.monotonic() + 10
    while not group_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group_gone(pid)
    text = log.read_text()
    assert re.search(r"^devices +4\nupdated +\d\n", text, re.MULTILINE), text


def test_a_process_that_dies_fails_the_run_and_stops_the_others(
    receiver: ReceiverWithFirmware, released: Group, observer: MqttObserver
) -> None:
    config = fleet(receiver, observer, released, 4, processes=2)
    progress: list[FleetProgress] = []

    async def scenario() -> None:
        run = asyncio.create_task(run_fleet(config, stop=asyncio.Event(), on_progress=progress.append))
        await wait_until(lambda: bool(progress) and progress[-1].online == 4, 30, watch=[run])
        victim = min(p.pid for p in multiprocessing.active_children() if p.pid is not None)
        os.kill(victim, signal.SIGKILL)
        await asyncio.wait_for(run, 40)

    started = time.monotonic()
    with pytest.raises(
        SimulationError, match=r"^simulation process \d of 2: ended without a summary \(exit code -9\)$"
    ):
        asyncio.run(scenario())
    assert time.monotonic() - started < 40
    assert not multiprocessing.active_children()


def test_a_refused_login_in_a_process_is_the_runs_error(tmp_path: Path) -> None:
    port = services.free_port()
    receiver = ReceiverWithFirmware(tmp_path / "data", mqtt_url=f"embedded://127.0.0.1:{port}")
    try:
        group = receiver.group("fleet")
        user = receiver.user["mqtt_user"]
        config = SimulationConfig(
            server=receiver.url,
            mqtt_url=f"mqtt://{user}:wrong-secret@127.0.0.1:{port}",
            group_id=group.id,
            token=group.token,
            devices=4,
            processes=2,
        )
        with pytest.raises(SimulationError, match=r"^simulation process \d of 2: the broker refused sim-"):
            asyncio.run(asyncio.wait_for(run_fleet(config), 40))
    finally:
        receiver.stop()
    assert not multiprocessing.active_children()
