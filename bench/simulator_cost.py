"""The simulator's own cost: CPU-seconds per device update, in one process.

`python -m bench.simulator_cost [--devices 2000] [--profile FILE]`: a private
Mosquitto and `otaship serve` (its defaults, one worker), N simulated devices
in this process (`otaship.simulator.fleet.simulate()`), one plain deploy of a
1.5 MiB image, and the CPU time this process used from the POST until every
device reported the new version, divided by N. With --profile, the same run
under cProfile (which slows it) writes its statistics to FILE and prints the
heaviest functions; the figure without the profiler is the one to quote.

Not part of `python -m bench`: it measures our load generator, not otaship.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench import servers
from bench.context import MiB, image
from bench.fleet import create_owner, insert_devices
from bench.system import cpu_seconds

START, NEW = "1.0.0", "1.0.1"


async def _measure(
    server: str, mqtt_url: str, group_id: str, token: str, api_key: str, devices: int, profile: Path | None
) -> dict[str, float]:
    from otaship.simulator.config import SimulationConfig
    from otaship.simulator.fleet import FleetProgress, simulate

    online: list[bool] = [False]

    def on_progress(progress: FleetProgress) -> None:
        online[0] = progress.online == progress.devices

    config = SimulationConfig(
        server=server,
        mqtt_url=mqtt_url,
        group_id=group_id,
        token=token,
        devices=devices,
        id_prefix="cost",
        version=START,
        until_version=NEW,
        status_interval=5.0,
        http_connections=64,
    )
    task = asyncio.create_task(simulate(config, stop=asyncio.Event(), on_progress=on_progress))
    booted = time.monotonic()
    while not online[0]:
        if task.done():
            task.result()
            raise RuntimeError("the simulation ended before its devices were online")
        if time.monotonic() - booted > 300:
            raise RuntimeError("the devices were not online within 300 s")
        await asyncio.sleep(0.05)
    online_s = time.monotonic() - booted
    # A minute of idle fleet would be a long wait: 10 s of status reports is its idle cost.
    idle_cpu = time.process_time()
    await asyncio.sleep(10)
    idle_cpu = time.process_time() - idle_cpu
    firmware = image(NEW, int(1.5 * MiB))
    profiler = cProfile.Profile() if profile is not None else None
    async with httpx.AsyncClient(base_url=server, timeout=120) as client:
        posted, cpu = time.monotonic(), time.process_time()
        if profiler is not None:
            profiler.enable()
        answer = await client.post(
            "/v1/ota/group",
            headers={"Authorization": f"Bearer {api_key}"},
            data={"group": group_id, "token": token, "version": NEW},
            files={"firmware": ("firmware.bin", firmware, "application/octet-stream")},
        )
        if answer.status_code != 201:
            raise RuntimeError(f"deploy answered {answer.status_code}: {answer.text[:200]}")
        summary = await asyncio.wait_for(task, 600)
        if profiler is not None:
            profiler.disable()
        cpu, seconds = time.process_time() - cpu, time.monotonic() - posted
    if not summary.reached_until_version:
        raise RuntimeError(f"only {summary.on_target} of {devices} devices reached {NEW}")
    if profiler is not None and profile is not None:
        profiler.dump_stats(profile)
    return {
        "devices": devices,
        "online_s": online_s,
        "idle_cpu_per_device_second": idle_cpu / 10 / devices,
        "seconds": seconds,
        "cpu": cpu,
        "cpu_per_update": cpu / devices,
    }


def measure(devices: int, profile: Path | None, work_dir: Path) -> dict[str, float]:
    log_dir = work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = servers.receiver_env(work_dir / "data")
    owner, (group,) = create_owner(env, [("fleet", None)])
    insert_devices(env, owner, group, [f"cost-{n:05d}" for n in range(1, devices + 1)], START)
    with servers.mosquitto(log_dir) as broker:
        rx_env = {**env, "OTASHIP_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}"}
        with servers.receiver(rx_env, log_dir) as receiver:
            mqtt_url = f"mqtt://{owner.mqtt_user}:{owner.mqtt_password}@127.0.0.1:{broker.port}"
            receiver_cpu = cpu_seconds(receiver.pid)
            result = asyncio.run(
                _measure(receiver.url, mqtt_url, group.id, group.token, owner.api_key, devices, profile)
            )
            result["receiver_cpu_whole_run"] = cpu_seconds(receiver.pid) - receiver_cpu
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulator_cost", description=__doc__)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--profile", type=Path, metavar="FILE", help="run under cProfile, stats to FILE")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="otaship-simcost-") as work:
        result = measure(args.devices, args.profile, Path(work))
    print(
        f"{result['devices']:.0f} devices: POST -> all updated {result['seconds']:.1f} s, "
        f"simulator {result['cpu']:.1f} CPU-s = {result['cpu_per_update'] * 1000:.2f} CPU-ms per device "
        f"update; idle (status every 5 s) {result['idle_cpu_per_device_second'] * 1e6:.1f} CPU-µs per "
        f"device-second; online after {result['online_s']:.1f} s"
        + (" (under cProfile)" if args.profile else "")
    )
    if args.profile:
        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(35)
    return 0


if __name__ == "__main__":
    sys.exit(main())
