"""6. Tag to fleet: from the POST of a new version until every device reports running it.

10,000 simulated IoTaaP OS devices (`otaship simulate`'s fleet, spread over
processes) against a private Mosquitto and `otaship serve` with its defaults
(granian, one worker a core with an external broker, log level info): all but
the canary's in the fleet group and the canary's in its subgroup. Without a
canary the POST goes to the fleet group and reaches the subgroup too; with one,
the canary updates first and the receiver promotes the rollout to the whole
group once every canary device succeeded.

Reported: devices a minute next to AWS IoT Jobs' cap of 1,000 a minute (an
anchor, not measured), and the receiver's CPU-seconds per device update (all
its processes, from the POST to the last device) next to what nginx spends to
serve the same image once (the floor for sending the bytes on this machine),
measured in the same run with wrk.

A device that is not on the new version when the wait ends (bounded, by the
fleet's size) fails the benchmark with its id, version and last code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import servers, wrk
from bench.context import Context, image, mib
from bench.fleet import GroupRef, Owner
from bench.results import Figure, Row
from bench.rollout_setup import GroupSpec, receiver_on_broker, tenant
from bench.system import cpu_seconds, tree_cpu_seconds

NAME = "fleet"
ANCHOR_PER_MINUTE = 1000.0  # AWS IoT Jobs: at most 1,000 devices a minute
START_VERSION = "5.0.0"
# The receiver's CPU with the fleet online and no deploy: its status reports' share.
IDLE_SECONDS = 5.0
# How many left-behind devices a failure names, at most.
NAMED = 20


def online_timeout(devices: int) -> float:
    """Seconds the fleet gets to come online (connecting is capped)."""
    return 60.0 + devices * 0.03


def update_timeout(devices: int) -> float:
    """Seconds from the POST before the devices not on the new version are declared left behind."""
    return 120.0 + devices * 0.06


@dataclass(frozen=True)
class Rollout:
    seconds: float  # POST sent -> the last device reported the new version
    devices: int
    rollout_seconds: float | None = None  # POST -> GET /v1/rollouts/<id> says complete
    receiver_cpu: float = 0.0  # CPU-seconds the receiver's processes used over `seconds`
    receiver_idle: float = 0.0  # and per second with the fleet online and idle, before the POST
    simulator_cpu: float = 0.0  # CPU-seconds of the simulated fleet's processes, its whole run

    @property
    def per_minute(self) -> float:
        return self.devices / self.seconds * 60

    @property
    def receiver_cpu_per_update(self) -> float:
        return self.receiver_cpu / self.devices


@dataclass(frozen=True)
class Fleet:
    owner: Owner
    group: GroupRef
    canary: GroupRef
    group_devices: list[str]
    canary_devices: list[str]


class LeftBehind(RuntimeError):
    """Devices that were not on the new version when the wait ended."""


def left_behind_message(
    behind: Sequence[tuple[str, str, int | None, str | None, int]], new: str, total: int
) -> str:
    """`behind` is (id, version, last code, outcome, triggers) of each device not on `new`."""

    def state(outcome: str | None, triggers: int) -> str:
        return outcome or ("still updating" if triggers else "never triggered")

    named = ", ".join(
        f"{device_id} (on {version}, last code {code if code is not None else '-'}, {state(outcome, triggers)})"
        for device_id, version, code, outcome, triggers in behind[:NAMED]
    )
    more = f" and {len(behind) - NAMED} more" if len(behind) > NAMED else ""
    return f"{len(behind)} of {total} devices left behind, not on {new}: {named}{more}"


def run(ctx: Context) -> list[Row]:
    scale = ctx.scale
    group_devices = [f"fl-{n:05d}" for n in range(scale.fleet_devices - scale.canary_devices)]
    canary_devices = [f"ca-{n:05d}" for n in range(scale.canary_devices)]
    specs = [GroupSpec("fleet", None, group_devices), GroupSpec("canary", 0, canary_devices)]
    setup = tenant(ctx, NAME, specs, START_VERSION)
    group, canary = setup.groups
    fleet = Fleet(setup.owner, group, canary, group_devices, canary_devices)

    nginx_cpu = _nginx_cpu_per_image(ctx, ctx.folder(NAME))
    plain: list[Rollout] = []
    staged: list[Rollout] = []
    with receiver_on_broker(ctx, setup) as running:
        receiver = running.receiver
        assert receiver.process is not None
        current = START_VERSION
        for rep in range(scale.fleet_repetitions):
            for with_canary in (False, True):
                new = f"5.0.{2 * rep + int(with_canary) + 1}"
                result = asyncio.run(
                    _rollout(
                        ctx,
                        receiver.url,
                        running.mqtt_url,
                        fleet,
                        current,
                        new,
                        with_canary,
                        seed=rep,
                        receiver_pid=receiver.process.pid,
                    )
                )
                (staged if with_canary else plain).append(result)
                current = new

    devices = scale.fleet_devices
    anchor = Figure.constant(ANCHOR_PER_MINUTE, "devices/min")
    nginx = Figure.of([c * 1000 for c in nginx_cpu], "CPU-ms")
    common = (
        f"{devices:,} simulated devices over {scale.fleet_processes} simulator process(es) "
        f"({scale.canary_devices} in the canary subgroup), image {mib(scale.fleet_image)}, private "
        f"Mosquitto, status every {scale.fleet_status_interval:g} s; the receiver with its defaults (granian, a worker a core, log level info)"
    )

    def timing(results: list[Rollout]) -> str:
        values = sorted(r.seconds for r in results)
        busy = max(results, key=lambda r: r.seconds)
        return (
            f"POST → all {devices:,} on the new version: {values[len(values) // 2]:.1f} s median "
            f"({', '.join(f'{v:.1f}' for v in values)} s), none left behind; in the slowest the receiver "
            f"used {busy.receiver_cpu:.1f} CPU-s ({busy.receiver_cpu / busy.seconds:.0%} of a core), "
            f"{busy.receiver_idle:.0%} of a core already with the fleet idle (status reports), and the "
            f"simulated fleet {busy.simulator_cpu / busy.devices * 1000:.1f} CPU-ms per device over its "
            "whole run"
        )

    def cpu_note(results: list[Rollout]) -> str:
        idle = [(r.receiver_cpu - r.receiver_idle * r.seconds) / r.devices * 1000 for r in results]
        return (
            f"receiver CPU from the POST to the last device, divided by the devices; without the idle "
            f"fleet's status reports: {min(idle):.2f}–{max(idle):.2f} CPU-ms; nginx: wrk, 64 connections, "
            f"the same {mib(scale.fleet_image)} image"
        )

    rollout_done = [r.rollout_seconds for r in staged if r.rollout_seconds is not None]
    canary_label = f"canary of {scale.canary_devices}"
    return [
        Row(
            NAME,
            f"6. tag to fleet, {devices:,} devices, no canary (devices/min)",
            Figure.of([r.per_minute for r in plain], "devices/min"),
            anchor,
            "AWS IoT Jobs anchor (not measured)",
            None,
            [common, timing(plain)],
        ),
        Row(
            NAME,
            f"6. tag to fleet, {devices:,} devices, {canary_label} (devices/min)",
            Figure.of([r.per_minute for r in staged], "devices/min"),
            anchor,
            "AWS IoT Jobs anchor (not measured)",
            None,
            [common, timing(staged)]
            + ([f"rollout state complete after {max(rollout_done):.1f} s at most"] if rollout_done else []),
        ),
        Row(
            NAME,
            "6. receiver CPU per device update, no canary",
            Figure.of([r.receiver_cpu_per_update * 1000 for r in plain], "CPU-ms"),
            nginx,
            "nginx serving the image once",
            None,
            [cpu_note(plain)],
        ),
        Row(
            NAME,
            f"6. receiver CPU per device update, {canary_label}",
            Figure.of([r.receiver_cpu_per_update * 1000 for r in staged], "CPU-ms"),
            nginx,
            "nginx serving the image once",
            None,
            [cpu_note(staged)],
        ),
    ]


def _nginx_cpu_per_image(ctx: Context, folder: Path) -> list[float]:
    """CPU-seconds nginx's worker spends per download of the fleet's image, one figure a repetition."""
    static = folder / "static"
    static.mkdir(exist_ok=True)
    (static / "firmware.bin").write_bytes(image("5.0.0", ctx.scale.fleet_image))
    figures = []
    with servers.nginx(static, ctx.log_dir) as nginx:
        url = f"{nginx.url}/firmware.bin"
        for _ in range(ctx.repetitions):
            before = cpu_seconds(nginx.pid)
            result = wrk.run(url, connections=64, seconds=ctx.scale.load_seconds, work_dir=ctx.work_dir)
            used = cpu_seconds(nginx.pid) - before
            if result.errors or not result.requests:
                raise RuntimeError(f"nginx: {result.errors} failed downloads of {result.requests}")
            figures.append(used / result.requests)
    return figures


async def _rollout(
    ctx: Context,
    server: str,
    mqtt_url: str,
    fleet: Fleet,
    current: str,
    new: str,
    with_canary: bool,
    *,
    seed: int,
    receiver_pid: int,
) -> Rollout:
    from otaship.simulator.config import SimulationConfig
    from otaship.simulator.fleet import FleetProgress, FleetSummary
    from otaship.simulator.processes import run_fleet

    parts = [(fleet.group, fleet.group_devices), (fleet.canary, fleet.canary_devices)]
    devices = sum(len(ids) for _, ids in parts)
    starts: dict[str, float] = {}
    online: dict[str, bool] = {}

    def watcher(group_id: str, count: int):  # type: ignore[no-untyped-def]
        def on_progress(progress: FleetProgress) -> None:
            starts[group_id] = time.monotonic() - progress.elapsed
            online[group_id] = progress.online == count

        return on_progress

    stop = asyncio.Event()
    tasks: list[asyncio.Task[FleetSummary]] = []
    for group, ids in parts:
        config = SimulationConfig(
            server=server,
            mqtt_url=mqtt_url,
            group_id=group.id,
            token=group.token,
            devices=len(ids),
            device_ids=ids,
            version=current,
            until_version=new,
            status_interval=ctx.scale.fleet_status_interval,
            seed=seed,
            http_connections=64,
            processes=ctx.scale.fleet_processes if len(ids) > 1000 else 1,
        )
        tasks.append(
            asyncio.create_task(run_fleet(config, stop=stop, on_progress=watcher(group.id, len(ids))))
        )
    timed_out = False
    try:
        await _until(
            lambda: len(online) == len(parts) and all(online.values()), tasks, timeout=online_timeout(devices)
        )
        idle = tree_cpu_seconds(receiver_pid)
        await asyncio.sleep(IDLE_SECONDS)
        idle = (tree_cpu_seconds(receiver_pid) - idle) / IDLE_SECONDS
        firmware = image(new, ctx.scale.fleet_image)
        fields = {"group": fleet.group.id, "token": fleet.group.token, "version": new}
        if with_canary:
            fields.update(
                {
                    "canary": fleet.canary.id,
                    "canary_timeout": "600",
                    "success_threshold": "1",
                    "error_threshold": "0",
                }
            )
        async with httpx.AsyncClient(base_url=server, headers=fleet.owner.headers, timeout=120) as client:
            posted = time.monotonic()
            cpu = (tree_cpu_seconds(receiver_pid), time.process_time())
            answer = await client.post(
                "/v1/ota/group",
                data=fields,
                files={"firmware": ("firmware.bin", firmware, "application/octet-stream")},
            )
            if answer.status_code != 201:
                raise RuntimeError(f"deploy of {new} answered {answer.status_code}: {answer.text[:300]}")
            rollout_id = (answer.json().get("rollout") or {}).get("id")
            # Bounded: a device left behind must fail the run, not hang it.
            done, _ = await asyncio.wait(tasks, timeout=update_timeout(devices))
            timed_out = len(done) < len(tasks)
            used = tree_cpu_seconds(receiver_pid) - cpu[0]
            rollout_seconds = None
            if rollout_id and not timed_out:
                rollout_seconds = await _rollout_complete(client, rollout_id, posted)
    finally:
        stop.set()
        # A stopped fleet ends within its stop margin; this bounds it all the same.
        await asyncio.wait(tasks, timeout=120)
    summaries = [task.result() for task in tasks]  # a fleet's failure is the benchmark's
    behind = [
        (d.id, d.version, d.last_code, d.outcome, d.triggers)
        for summary in summaries
        for d in summary.devices
        if d.version != new
    ]
    if behind or timed_out:
        raise LeftBehind(left_behind_message(behind, new, devices))
    ends = []
    for (group, _ids), summary in zip(parts, summaries, strict=True):
        if summary.last_on_target_seconds is None:
            raise LeftBehind(f"group {group.id}: no device reported {new} after the trigger")
        ends.append(starts[group.id] + summary.last_on_target_seconds)
    simulator = sum(s.cpu_seconds or 0.0 for s in summaries)
    return Rollout(max(ends) - posted, devices, rollout_seconds, used, idle, simulator)


async def _until(condition, tasks, *, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        for task in tasks:
            if task.done():
                task.result()
                raise RuntimeError("a simulated fleet ended before the deploy")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the simulated devices were not all online within {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def _rollout_complete(client: httpx.AsyncClient, rollout_id: str, posted: float) -> float | None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = await client.get(f"/v1/rollouts/{rollout_id}", params={"devices": "false"})
        state = answer.json().get("state") if answer.status_code == 200 else None
        if state == "complete":
            return time.monotonic() - posted
        if state in ("halted", "aborted"):
            raise RuntimeError(f"the rollout ended {state}: {answer.json().get('reason')}")
        await asyncio.sleep(0.1)
    return None
