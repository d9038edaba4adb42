"""The device simulator against real parts: the Mosquitto broker and `otaship serve`."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from otaship.protocol import RESPONSE, STATUS
from otaship.receiver.cli import cli
from otaship.receiver.settings import Settings
from otaship.simulator.cli import config_from_args, simulate_command
from otaship.simulator.config import (
    SimulationConfig,
    SimulationError,
    broker_address,
    default_device_ids,
    failing_devices,
)
from otaship.simulator.fleet import FleetProgress, FleetSummary, register_devices, simulate
from tests import services
from tests.device_fleet import Group, MqttObserver, ReceiverWithFirmware, wait_until
from tests.esp_image import build_image
from tests.receiver_process import SERVERS, otaship_json


# Devices download from `otaship serve` on each server it runs on.
@pytest.fixture(scope="module", params=SERVERS)
def receiver(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReceiverWithFirmware]:
    running = ReceiverWithFirmware(tmp_path_factory.mktemp("simulate") / "data", server=request.param)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def released(receiver: ReceiverWithFirmware) -> Group:
    """A group whose firmware is 2.0.0."""
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
    receiver_url: str, observer: MqttObserver, group: Group, devices: int, prefix: str, **options: Any
) -> SimulationConfig:
    options.setdefault("status_interval", 1.0)
    options.setdefault("reboot_delay", (0.05, 0.2))
    return SimulationConfig(
        server=receiver_url,
        mqtt_url=observer.mqtt_url,
        group_id=group.id,
        token=group.token,
        devices=devices,
        id_prefix=f"{observer.mqtt_user}-{prefix}",
        **options,
    )


async def run_fleets(
    configs: list[SimulationConfig],
    observer: MqttObserver,
    triggers: list[str],
    done: Any,
    timeout: float = 20,
) -> list[FleetSummary]:
    """Start the fleets, trigger the groups once every device has booted, stop once `done()`."""
    stops = [asyncio.Event() for _ in configs]
    tasks = [asyncio.create_task(simulate(c, stop=s)) for c, s in zip(configs, stops, strict=False)]
    ids = [d for c in configs for d in c.resolved_device_ids()]
    try:
        await wait_until(lambda: observer.booted(ids), timeout, watch=tasks)
        for group_id in triggers:
            observer.trigger(group_id, "2.0.0")
        await wait_until(done, timeout, watch=tasks)
    finally:
        for stop in stops:
            stop.set()
    return list(await asyncio.gather(*tasks))


def open_fds() -> int:
    # Collect first: a socket some earlier test dropped unclosed must not count.
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


# -- end to end against the receiver ---------------------------------------------------------


def test_devices_update_answer_202_and_fail_rate_devices_come_back_old(
    receiver: ReceiverWithFirmware, released: Group, observer: MqttObserver
) -> None:
    old = fleet(receiver.url, observer, released, 20, "old", version="1.0.0", fail_rate=0.25, seed=7)
    current = fleet(receiver.url, observer, released, 4, "cur", version="2.0.0")
    old_ids, current_ids = old.resolved_device_ids(), current.resolved_device_ids()

    def settled() -> bool:
        return all(observer.statuses_after(d, 201) for d in old_ids) and all(
            observer.codes(d) == [200, 202] for d in current_ids
        )

    old_summary, current_summary = asyncio.run(run_fleets([old, current], observer, [released.id], settled))

    failing = {old_ids[i] for i in failing_devices(20, 0.25, 7)}
    assert len(failing) == 5
    for device_id in old_ids:
        assert observer.codes(device_id) == [200, 201]
        boot, *_ = observer.statuses(device_id)
        assert boot["fw_version"] == "1.0.0"
        assert set(boot) == {"battery", "uptime", "core_version", "fw_version"}
        assert 0 <= boot["battery"] <= 100
        after_reboot = observer.statuses_after(device_id, 201)[0]
        # Rebooted: uptime starts again, and the version says whether the image booted.
        assert after_reboot["uptime"] <= 1
        assert after_reboot["fw_version"] == ("1.0.0" if device_id in failing else "2.0.0")

    assert (old_summary.updated, old_summary.failed, old_summary.errors) == (15, 5, 0)
    assert old_summary.versions == {"2.0.0": 15, "1.0.0": 5}
    assert {d.id for d in old_summary.devices if d.outcome == "failed"} == failing
    assert all(d.version == "2.0.0" and d.updates == 1 for d in old_summary.devices if d.id not in failing)
    assert old_summary.target_version == "2.0.0"
    assert old_summary.trigger_to_last_on_target is not None and old_summary.trigger_to_last_on_target > 0
    assert old_summary.update_seconds_p50 is not None

    assert current_summary.already_current == 4
    assert current_summary.versions == {"2.0.0": 4}
    assert all(d.last_code == 202 for d in current_summary.devices)


def test_each_fail_mode_fails_its_devices_its_own_way(
    receiver: ReceiverWithFirmware, released: Group, observer: MqttObserver
) -> None:
    def failing(mode: str, **options: Any) -> SimulationConfig:
        prefix = {"revert": "rv", "dark": "dk", "reboot-loop": "rl", "203": "er"}[mode]
        return fleet(
            receiver.url,
            observer,
            released,
            2,
            prefix,
            version="1.0.0",
            fail_rate=1.0,
            fail_mode=mode,
            **options,
        )

    configs = [
        failing("revert"),
        failing("dark"),
        # No receiver judges this loop: it may reboot faster than a receiver could tell.
        failing("reboot-loop", reboot_loop_interval=0.3),
        failing("203"),
    ]
    revert, dark, loop, error = ([*c.resolved_device_ids()] for c in configs)

    def boots(device_id: str) -> list[dict[str, Any]]:
        return [s for s in observer.statuses_after(device_id, 201) if s["uptime"] == 0]

    def settled() -> bool:
        return (
            all(observer.statuses_after(d, 201) for d in revert)
            and all(len(boots(d)) >= 4 for d in loop)
            and all(observer.codes(d) == [200, 201, 203] for d in error)
        )

    summaries = asyncio.run(run_fleets(configs, observer, [released.id], settled))
    by_mode = dict(zip(("revert", "dark", "reboot-loop", "203"), summaries, strict=True))

    # revert: rebooted, back on the old version.
    assert [observer.statuses_after(d, 201)[0]["fw_version"] for d in revert] == ["1.0.0", "1.0.0"]
    assert (by_mode["revert"].failed, by_mode["revert"].versions) == (2, {"1.0.0": 2})
    # dark: a 201, and then nothing (at most a status sent while it downloaded).
    for device_id in dark:
        assert observer.codes(device_id) == [200, 201]
        assert len(observer.statuses_after(device_id, 201)) <= 1
        assert all(s["fw_version"] == "1.0.0" for s in observer.statuses_after(device_id, 201))
    assert (by_mode["dark"].dark, by_mode["dark"].failed, by_mode["dark"].versions) == (2, 0, {"1.0.0": 2})
    assert {d.outcome for d in by_mode["dark"].devices} == {"dark"}
    # reboot-loop: the new version booted, then booted again and again, uptime back to 0 each time.
    for device_id in loop:
        assert observer.codes(device_id) == [200, 201]
        assert {s["fw_version"] for s in boots(device_id)} == {"2.0.0"}
    assert (by_mode["reboot-loop"].reboot_loop, by_mode["reboot-loop"].versions) == (2, {"2.0.0": 2})
    assert all(d.outcome == "reboot_loop" and d.reboots >= 3 for d in by_mode["reboot-loop"].devices)
    # 203: the download failed, the version is the old one, no reboot.
    assert (by_mode["203"].errors, by_mode["203"].versions) == (2, {"1.0.0": 2})
    assert all(not boots(d) for d in error)
    table = by_mode["dark"].table()
    assert re.search(r"^dark \(silent after 201\) +2$", table, re.MULTILINE), table
    assert re.search(r"^in a reboot loop +2$", by_mode["reboot-loop"].table(), re.MULTILINE)
    assert (by_mode["dark"].to_json()["dark"], by_mode["reboot-loop"].to_json()["reboot_loop"]) == (2, 2)


def test_the_time_to_the_target_counts_from_the_trigger_of_its_own_deploy(
    receiver: ReceiverWithFirmware, observer: MqttObserver
) -> None:
    """One run, two deploys: 1.0.0 (already running: 202), then 1.1.0. The summary's
    "first trigger -> last on 1.1.0" starts at 1.1.0's trigger, not at 1.0.0's."""
    group = receiver.group("twice")
    receiver.deploy(group, "1.0.0")
    config = fleet(receiver.url, observer, group, 3, "twice", version="1.0.0", status_interval=0.5)
    ids = config.resolved_device_ids()

    def on(version: str) -> bool:
        return all(any(s["fw_version"] == version for s in observer.statuses(d)) for d in ids)

    async def run() -> FleetSummary:
        stop = asyncio.Event()
        task = asyncio.create_task(simulate(config, stop=stop))
        try:
            await wait_until(lambda: observer.booted(ids), 20, watch=[task])
            observer.trigger(group.id, "1.0.0")
            await wait_until(lambda: all(observer.codes(d) == [200, 202] for d in ids), 20, watch=[task])
            # Time passes between the deploys: two more status reports from each device.
            await wait_until(
                lambda: all(len(observer.statuses_after(d, 202)) >= 2 for d in ids), 20, watch=[task]
            )
            await asyncio.to_thread(receiver.deploy, group, "1.1.0")
            observer.trigger(group.id, "1.1.0")
            await wait_until(lambda: on("1.1.0"), 20, watch=[task])
        finally:
            stop.set()
        return await task

    summary = asyncio.run(run())
    assert (summary.target_version, summary.on_target, summary.updated) == ("1.1.0", 3, 3)
    # Each device's update time runs from its own last trigger, 1.1.0's; the fleet's
    # from the first of those triggers (one publish reached all three).
    # Counted from 1.0.0's trigger, it would be a second (two reports) longer at least.
    slowest = max(d.update_seconds for d in summary.devices if d.update_seconds is not None)
    assert summary.trigger_to_last_on_target == pytest.approx(slowest, abs=0.05)


def test_no_firmware_or_a_wrong_token_answers_203_and_keeps_the_version(
    receiver: ReceiverWithFirmware, released: Group, observer: MqttObserver
) -> None:
    empty = receiver.group("empty")  # latest is a 404
    no_firmware = fleet(receiver.url, observer, empty, 3, "empty", version="1.0.0")
    wrong_token = fleet(receiver.url, observer, Group(released.id, "x" * 16), 3, "tok", version="1.0.0")
    ids = no_firmware.resolved_device_ids() + wrong_token.resolved_device_ids()

    summaries = asyncio.run(
        run_fleets(
            [no_firmware, wrong_token],
            observer,
            [empty.id, released.id],
            lambda: all(203 in observer.codes(d) for d in ids),
        )
    )

    for device_id in no_firmware.resolved_device_ids():
        assert observer.codes(device_id) == [200, 203]
    for device_id in wrong_token.resolved_device_ids():
        # latest answered 2.0.0, then the download was a 404.
        assert observer.codes(device_id) == [200, 201, 203]
    for summary in summaries:
        assert (summary.errors, summary.updated) == (3, 0)
        assert summary.versions == {"1.0.0": 3}
    assert all(s["fw_version"] == "1.0.0" for d in ids for s in observer.statuses(d))


def test_until_version_already_reached_ends_at_once(
    receiver: ReceiverWithFirmware, released: Group, observer: MqttObserver
) -> None:
    config = fleet(receiver.url, observer, released, 3, "done", version="2.0.0", until_version="2.0.0")
    summary = asyncio.run(asyncio.wait_for(simulate(config), 15))
    assert summary.reached_until_version
    assert summary.not_triggered == 3
    assert summary.first_trigger_seconds is None


def test_the_command_exits_1_when_the_duration_ends_before_the_version(
    receiver: ReceiverWithFirmware,
    released: Group,
    observer: MqttObserver,
) -> None:
    exited = otaship(
        receiver.env,
        [
            "simulate",
            "--group",
            released.id,
            "--token",
            released.token,
            "--mqtt-url",
            observer.mqtt_url,
            "--server",
            receiver.url,
            "--devices",
            "2",
            "--id-prefix",
            f"{observer.mqtt_user}-short",
            "--until-version",
            "9.9.9",
            "--duration",
            "1",
        ],
    )
    assert exited.exit_code == 1
    out = exited.stdout
    assert "reached 9.9.9" in out and "not triggered" in out


def test_three_hundred_devices_update_quickly_and_leave_nothing_behind(
    receiver: ReceiverWithFirmware, released: Group, observer: MqttObserver
) -> None:
    threads, fds = threading.active_count(), open_fds()
    config = fleet(
        receiver.url,
        observer,
        released,
        300,
        "scale",
        version="1.0.0",
        until_version="2.0.0",
        status_interval=5.0,
        progress_interval=0.1,
    )
    progress: list[FleetProgress] = []

    async def scenario() -> FleetSummary:
        run = asyncio.create_task(simulate(config, on_progress=progress.append, stop=asyncio.Event()))
        await wait_until(lambda: bool(progress) and progress[-1].online == 300, 15, watch=[run])
        observer.trigger(released.id, "2.0.0")
        return await asyncio.wait_for(run, 20)

    started = time.monotonic()
    summary = asyncio.run(scenario())
    elapsed = time.monotonic() - started

    assert summary.reached_until_version
    assert summary.updated == 300 and summary.versions == {"2.0.0": 300}
    assert summary.trigger_to_last_on_target is not None
    assert elapsed < 20, f"300 devices took {elapsed:.1f} s"
    assert progress[-1].on_target == 300
    json.dumps(summary.to_json())
    assert "first trigger -> last on 2.0.0" in summary.table()
    assert (threading.active_count(), open_fds()) == (threads, fds)


def test_start_and_stop_repeatedly_leaks_no_threads_or_sockets(
    receiver: ReceiverWithFirmware, released: Group, observer: MqttObserver
) -> None:
    config = fleet(receiver.url, observer, released, 40, "restart", version="1.0.0")
    threads, fds = threading.active_count(), open_fds()

    async def run_once(online: bool) -> FleetSummary:
        stop = asyncio.Event()
        progress: list[FleetProgress] = []

        def note(update: FleetProgress) -> None:
            progress.append(update)
            if not online:
                # At its first report, while the devices are still connecting.
                stop.set()

        run = asyncio.create_task(simulate(config, stop=stop, on_progress=note))
        if online:
            await wait_until(lambda: bool(progress) and progress[-1].online == 40, 15, watch=[run])
            stop.set()
        summary = await asyncio.wait_for(run, 10)
        if not online:
            assert progress[0].online == 0
        return summary

    for online in (True, False, True):
        asyncio.run(run_once(online))
        assert (threading.active_count(), open_fds()) == (threads, fds)


# -- image verification against a server that misbehaves ------------------------------------


# How long the "slow" group's download takes to start.
SLOW_DOWNLOAD = 1.0


class MisbehavingServer:
    """A tiny HTTP server whose downloads are wrong in one way per group id."""

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.paths: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> MisbehavingServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # One request per connection, then close: a short body then ends early.
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ")[1].decode()
            self.paths.append(path)
            if path.endswith("/slowtoken"):
                await asyncio.sleep(SLOW_DOWNLOAD)
            writer.write(self._answer(path))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, path: str) -> bytes:
        image, md5 = self.image, hashlib.md5(self.image).hexdigest()
        if path.startswith("/v1/ota/group/latest/"):
            return _http(200, {"content-type": "application/json"}, b'{"ver": "2.0.0"}')
        variant = path.rsplit("/", 1)[1].removesuffix("token")
        headers = {"content-type": "application/octet-stream", "x-MD5": md5}
        if variant in ("good", "slow"):
            return _http(200, headers, image)
        if variant == "badmd5":
            return _http(200, {**headers, "x-MD5": "0" * 32}, image)
        if variant == "nomd5":
            return _http(200, {"content-type": "application/octet-stream"}, image)
        if variant == "badmagic":
            body = b"\x00" + image[1:]
            return _http(200, {**headers, "x-MD5": hashlib.md5(body).hexdigest()}, body)
        if variant == "redirect":
            return _http(302, {"location": "/v1/ota/group/download/goodtoken"}, b"")
        if variant == "short":
            # Claims the whole image, sends half, and closes.
            return _http(
                200, {**headers, "content-length": str(len(image))}, image[: len(image) // 2], length=False
            )
        raise AssertionError(f"unexpected path {path}")


def _http(status: int, headers: dict[str, str], body: bytes, *, length: bool = True) -> bytes:
    headers = {**headers, "connection": "close"}
    if length:
        headers["content-length"] = str(len(body))
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


def test_downloads_are_verified_and_redirects_not_followed(observer: MqttObserver) -> None:
    variants = ["good", "badmd5", "nomd5", "badmagic", "redirect", "short"]

    async def scenario() -> tuple[list[FleetSummary], list[str]]:
        async with MisbehavingServer(build_image("2.0.0", code_size=8192)) as server:
            configs = [
                fleet(server.url, observer, Group(variant, "token"), 2, variant, version="1.0.0")
                for variant in variants
            ]
            ids = {v: c.resolved_device_ids() for v, c in zip(variants, configs, strict=False)}

            def answered() -> bool:
                return all(observer.statuses_after(d, 201) for d in ids["good"]) and all(
                    203 in observer.codes(d) for v in variants[1:] for d in ids[v]
                )

            summaries = await run_fleets(configs, observer, variants, answered)
            return summaries, server.paths

    summaries, paths = asyncio.run(scenario())
    by_variant = dict(zip(variants, summaries, strict=False))
    assert by_variant["good"].updated == 2 and by_variant["good"].versions == {"2.0.0": 2}
    for variant in variants[1:]:
        summary = by_variant[variant]
        assert (summary.errors, summary.versions) == (2, {"1.0.0": 2}), variant
        assert all(observer.codes(d.id) == [200, 201, 203] for d in summary.devices)
    # The redirect was answered 203, not followed: only "good" devices fetched its target.
    assert paths.count("/v1/ota/group/download/goodtoken") == 2


def test_a_device_publishes_no_status_while_it_answers_a_trigger(observer: MqttObserver) -> None:
    """On the device, MQTT and the download share one client, and the update runs
    inside the trigger's callback: nothing is published from the trigger to the
    reboot, however short the status interval."""

    async def scenario() -> list[str]:
        async with MisbehavingServer(build_image("2.0.0", code_size=8192)) as server:
            config = fleet(
                server.url, observer, Group("slow", "token"), 2, "slow", version="1.0.0", status_interval=0.1
            )
            ids = config.resolved_device_ids()
            await run_fleets(
                [config], observer, ["slow"], lambda: all(observer.statuses_after(d, 201) for d in ids)
            )
            return ids

    for device_id in asyncio.run(scenario()):
        assert observer.codes(device_id) == [200, 201]
        kinds = [kind for kind, _ in observer.events(device_id)]
        triggered = kinds.index(RESPONSE)
        # Reporting went on before the trigger; then 200 and 201 at once.
        assert STATUS in kinds[:triggered]
        assert kinds[triggered : triggered + 2] == [RESPONSE, RESPONSE], kinds
        # The next report is the new image's first boot, after the slow download.
        assert observer.statuses_after(device_id, 201)[0]["fw_version"] == "2.0.0"


# -- configuration and command line ----------------------------------------------------------


def test_mqtt_urls() -> None:
    plain = broker_address("mqtt://owner%40x:p%3Ass@broker.example:1884")
    assert (plain.host, plain.port, plain.tls, plain.username, plain.password) == (
        "broker.example",
        1884,
        False,
        "owner@x",
        "p:ss",
    )
    tls = broker_address("mqtts://owner:pw@broker.example")
    assert (tls.port, tls.tls) == (8883, True)
    assert broker_address("mqtt://owner@h").port == 1883
    for bad in ("http://u:p@h", "mqtt://h:1883", "mqtt://u:p@h:notaport"):
        with pytest.raises(SimulationError):
            broker_address(bad)


def test_device_ids_and_failures_are_deterministic() -> None:
    assert default_device_ids("0123456789abcdef01234567", 2) == ["sim-01234567-00001", "sim-01234567-00002"]
    assert default_device_ids("g", 1, "lab") == ["lab-00001"]
    assert failing_devices(1000, 0.05, 3) == failing_devices(1000, 0.05, 3)
    assert len(failing_devices(1000, 0.05, 3)) == 50
    assert failing_devices(1000, 0.05, 3) != failing_devices(1000, 0.05, 4)
    assert failing_devices(10, 0.0, 0) == frozenset() and len(failing_devices(10, 1.0, 0)) == 10


@pytest.mark.parametrize(
    "change",
    [
        {"devices": 0},
        {"fail_rate": 1.5},
        {"fail_mode": "explode"},
        {"reboot_loop_interval": 0},
        {"server": "ftp://x"},
        {"device_ids": ["a/b"], "devices": 1},
        {"device_ids": ["a", "a"], "devices": 2},
        {"device_ids": ["a"], "devices": 2},
    ],
)
def test_bad_configurations_are_refused(change: dict[str, Any]) -> None:
    config = SimulationConfig(
        **{
            "server": "http://127.0.0.1:1",
            "mqtt_url": "mqtt://u@127.0.0.1:1",
            "group_id": "g",
            "token": "t",
            "devices": 1,
            **change,
        }
    )
    with pytest.raises(SimulationError):
        asyncio.run(simulate(config))


def otaship(env: dict[str, str], argv: list[str]) -> Result:
    """`otaship ARGV` in this process, with `env` as its whole OTASHIP_* configuration."""
    unset: dict[str, str | None] = {name: None for name in os.environ if name.startswith("OTASHIP_")}
    return CliRunner().invoke(cli, argv, env={**unset, **env})


SIMULATE = ["--group", "g1", "--token", "t1", "--mqtt-url", "mqtt://u:p@h:1", "--server", "http://s"]


def test_parser_maps_options_to_the_config() -> None:
    params = simulate_command.make_context(
        "simulate",
        [
            "--group",
            "g1",
            "--token",
            "t1",
            "--mqtt-url",
            "mqtt://u:p@h:1",
            "--server",
            "http://s",
            "--devices",
            "7",
            "--version",
            "1.2.3",
            "--fail-rate",
            "0.5",
            "--status-interval",
            "2",
            "--id-prefix",
            "lab",
            "--until-version",
            "2.0.0",
            "--seed",
            "9",
        ],
    ).params
    config = config_from_args(params)
    assert (config.group_id, config.token, config.devices, config.version, config.fail_rate) == (
        "g1",
        "t1",
        7,
        "1.2.3",
        0.5,
    )
    assert (config.status_interval, config.until_version, config.duration, config.seed) == (
        2.0,
        "2.0.0",
        None,
        9,
    )
    assert config.resolved_device_ids()[0] == "lab-00001"
    # Failing devices come back on their old version unless told otherwise.
    assert config.fail_mode == "revert"
    for mode in ("revert", "dark", "reboot-loop", "203"):
        chosen = simulate_command.make_context("simulate", [*SIMULATE, "--fail-mode", mode]).params
        assert config_from_args(chosen).fail_mode == mode
    assert callable(simulate_command.callback) and not params["register"] and not params["json"]
    for bad in (["--fail-rate", "2"], ["--devices", "0"], ["--duration", "soon"], ["--fail-mode", "brick"]):
        result = CliRunner().invoke(cli, ["simulate", *SIMULATE, *bad])
        assert result.exit_code == 2, result.output
        assert f"Invalid value for '{bad[0]}'" in result.stderr


def test_command_registers_devices_and_prints_a_json_summary(
    receiver: ReceiverWithFirmware,
    released: Group,
    observer: MqttObserver,
) -> None:
    prefix = f"{observer.mqtt_user}-cli"
    argv = [
        "simulate",
        "--group",
        released.id,
        "--token",
        released.token,
        "--mqtt-url",
        observer.mqtt_url,
        "--server",
        receiver.url,
        "--devices",
        "3",
        "--version",
        "1.0.0",
        "--register",
        "--id-prefix",
        prefix,
        "--until-version",
        "2.0.0",
        "--json",
    ]
    settings = Settings.from_env(receiver.env)
    ids = default_device_ids(released.id, 3, prefix)
    outcome: list[Result] = []

    # The command calls asyncio.run itself, as `otaship simulate` does.
    worker = threading.Thread(target=lambda: outcome.append(otaship(receiver.env, argv)))
    worker.start()
    deadline = time.monotonic() + 15
    while not observer.booted(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    observer.trigger(released.id, "2.0.0")
    worker.join(20)
    [result] = outcome
    assert (result.exit_code, result.exception) == (0, None), result.output

    out, err = result.stdout, result.stderr
    summary = json.loads(out)
    assert (summary["updated"], summary["versions"], summary["reached_until_version"]) == (
        3,
        {"2.0.0": 3},
        True,
    )
    assert "registered 3 devices (0 already there)" in err
    registered = {d["id"]: d for d in otaship_json(receiver.env, "device", "list", "--group", released.id)}
    assert all(registered[d]["firmware_version"] == "1.0.0" for d in ids)

    # Registering again skips them.
    params = simulate_command.make_context("simulate", argv[1:]).params
    assert register_devices(settings, config_from_args(params)) == (0, 3)


def test_registering_against_another_database_says_so(tmp_path: Path, released: Group) -> None:
    settings = Settings(data_dir=tmp_path / "elsewhere", mqtt_url="none")
    config = SimulationConfig(
        server="http://127.0.0.1:1",
        mqtt_url="mqtt://u@127.0.0.1",
        group_id=released.id,
        token=released.token,
        devices=1,
    )
    with pytest.raises(SimulationError, match=r"^no database at .*/elsewhere/otaship\.db: run otaship from"):
        register_devices(settings, config)
    # Not made empty on the way: the next try with the right settings finds no stray file.
    assert not (tmp_path / "elsewhere").exists()


# -- the embedded broker: the owner's credentials and its topic rules ------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_devices_log_in_to_the_embedded_broker_with_the_owners_credentials(
    tmp_path: Path, server: str
) -> None:
    port = services.free_port()
    receiver = ReceiverWithFirmware(tmp_path / "data", mqtt_url=f"embedded://127.0.0.1:{port}", server=server)
    try:
        group = receiver.group("fleet")
        receiver.deploy(group, "2.0.0")
        user, password = receiver.user["mqtt_user"], receiver.user["mqtt_password"]
        observer = MqttObserver(user, password=password, port=port).start()
        try:
            config = fleet(receiver.url, observer, group, 5, "amqtt", version="1.0.0", until_version="2.0.0")
            ids = config.resolved_device_ids()

            async def scenario() -> FleetSummary:
                run = asyncio.create_task(simulate(config))
                await wait_until(lambda: observer.booted(ids), 15, watch=[run])
                observer.trigger(group.id, "2.0.0")
                return await asyncio.wait_for(run, 15)

            summary = asyncio.run(scenario())
            assert summary.reached_until_version and summary.updated == 5
            assert all(observer.codes(d) == [200, 201] for d in ids)
        finally:
            observer.stop()

        wrong = fleet(receiver.url, MqttObserver(user, password="wrong", port=port), group, 2, "bad")
        with pytest.raises(SimulationError, match="refused"):
            asyncio.run(asyncio.wait_for(simulate(wrong), 15))
    finally:
        receiver.stop()


# -- --detach: back to the caller once the fleet is online ------------------------------------


def reap(pid: int, timeout: float = 20) -> int:
    """The exit status of a detached simulation this process spawned (so it is ours to reap)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"the detached simulation {pid} did not stop")


def test_detach_returns_with_the_fleet_online_and_kill_writes_the_summary(
    receiver: ReceiverWithFirmware, released: Group, observer: MqttObserver, tmp_path: Path
) -> None:
    prefix = f"{observer.mqtt_user}-detach"
    log = tmp_path / "fleet.log"
    argv = [
        *("simulate", "--group", released.id, "--token", released.token),
        *("--mqtt-url", observer.mqtt_url, "--server", receiver.url),
        *("--devices", "3", "--version", "1.0.0", "--id-prefix", prefix, "--detach", str(log)),
    ]
    result = otaship(receiver.env, argv)
    assert result.exit_code == 0, result.output
    pid = int(result.stdout)
    try:
        assert f"3 devices online in group {released.id}, running in the background (process {pid}" in (
            result.stderr
        )
        ids = default_device_ids(released.id, 3, prefix)
        # Online means subscribed: a trigger published now reaches every device.
        observer.trigger(released.id, "2.0.0")
        deadline = time.monotonic() + 20
        while not all(observer.codes(d)[-1:] == [201] for d in ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(observer.codes(d) == [200, 201] for d in ids)
    finally:
        os.kill(pid, signal.SIGTERM)
        assert reap(pid) == 0
    text = log.read_text()
    assert re.search(r"^devices +3\nupdated +\d\n", text, re.MULTILINE), text


def test_detach_reports_a_fleet_that_cannot_come_online(tmp_path: Path) -> None:
    port = services.free_port()
    receiver = ReceiverWithFirmware(tmp_path / "data", mqtt_url=f"embedded://127.0.0.1:{port}")
    try:
        group = receiver.group("fleet")
        user = receiver.user["mqtt_user"]
        argv = [
            *("simulate", "--group", group.id, "--token", group.token, "--server", receiver.url),
            *("--mqtt-url", f"mqtt://{user}:wrong-secret@127.0.0.1:{port}"),
            *("--devices", "2", "--detach", str(tmp_path / "fleet.log")),
        ]
        result = otaship(receiver.env, argv)
    finally:
        receiver.stop()
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "otaship: error: the background simulation stopped; its log says:" in result.stderr
    assert f"the broker refused sim-{group.id[:8]}-0000" in result.stderr
    assert "wrong-secret" not in result.stderr


def test_the_summary_counts_from_the_trigger_of_the_target_version(
    receiver: ReceiverWithFirmware, observer: MqttObserver
) -> None:
    """A fleet that lives through two deploys: its time to the second counts from the second trigger."""
    group = receiver.group("twice")
    receiver.deploy(group, "1.0.0")
    config = fleet(receiver.url, observer, group, 1, "twice", version="1.0.0")
    (device_id,) = config.resolved_device_ids()

    async def scenario() -> FleetSummary:
        stop = asyncio.Event()
        run = asyncio.create_task(simulate(config, stop=stop))
        try:
            await wait_until(lambda: observer.booted([device_id]), 20, watch=[run])
            observer.trigger(group.id, "1.0.0")
            await wait_until(lambda: observer.codes(device_id) == [200, 202], 20, watch=[run])
            await asyncio.to_thread(receiver.deploy, group, "2.0.0")
            observer.trigger(group.id, "2.0.0")
            await wait_until(
                lambda: any(s["fw_version"] == "2.0.0" for s in observer.statuses_after(device_id, 201)),
                20,
                watch=[run],
            )
        finally:
            stop.set()
        return await run

    summary = asyncio.run(scenario())
    [device] = summary.devices
    assert (summary.target_version, device.version, device.updates) == ("2.0.0", "2.0.0", 1)
    # One device: from the trigger it updated on to its reboot, exactly its own update time.
    assert device.update_seconds is not None
    assert summary.trigger_to_last_on_target == pytest.approx(device.update_seconds, abs=1e-6)
