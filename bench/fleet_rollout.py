"""6. Tag to fleet: from the POST of a new version until every device reports running it.

1,000 simulated IoTaaP OS devices (`otaship.simulator.fleet.simulate()`, in this
process) against Mosquitto and the receiver: 990 in the fleet group and 10 in
its canary subgroup. Without a canary the POST goes to the fleet group and
reaches the subgroup too; with one, the canary updates first and the receiver
promotes the rollout to the whole group once all 10 succeeded. Reported next
to the anchor: AWS IoT Jobs rolls out at most 1,000 devices a minute.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import httpx

from bench import servers
from bench.context import Context, image, mib
from bench.fleet import GroupRef, Owner, create_owner, insert_devices
from bench.results import Figure, Row
from bench.system import cpu_seconds

NAME = "fleet"
ANCHOR_PER_MINUTE = 1000.0  # AWS IoT Jobs: at most 1,000 devices a minute
START_VERSION = "5.0.0"


@dataclass(frozen=True)
class Rollout:
    seconds: float  # POST sent -> the last device reported the new version
    devices: int
    rollout_seconds: float | None = None  # POST -> GET /v1/rollouts/<id> says complete
    receiver_cpu: float = 0.0  # CPU-seconds the receiver used over `seconds`
    simulator_cpu: float = 0.0  # and this process, the simulated fleet

    @property
    def per_minute(self) -> float:
        return self.devices / self.seconds * 60


@dataclass(frozen=True)
class Fleet:
    owner: Owner
    group: GroupRef
    canary: GroupRef
    group_devices: list[str]
    canary_devices: list[str]


def run(ctx: Context) -> list[Row]:
    scale = ctx.scale
    folder = ctx.folder("fleet")
    env = servers.receiver_env(folder / "data")
    owner, (group, canary) = create_owner(env, [("fleet", None), ("canary", 0)])
    fleet = Fleet(
        owner,
        group,
        canary,
        [f"fl-{n:05d}" for n in range(scale.fleet_devices - scale.canary_devices)],
        [f"ca-{n:05d}" for n in range(scale.canary_devices)],
    )
    insert_devices(env, owner, group, fleet.group_devices, START_VERSION)
    insert_devices(env, owner, canary, fleet.canary_devices, START_VERSION)

    plain: list[Rollout] = []
    staged: list[Rollout] = []
    with servers.mosquitto(ctx.log_dir) as broker:
        rx_env = {**env, "OTASHIP_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}"}
        with servers.receiver(rx_env, ctx.log_dir) as receiver:
            mqtt_url = f"mqtt://{owner.mqtt_user}:{owner.mqtt_password}@127.0.0.1:{broker.port}"
            current = START_VERSION
            for rep in range(ctx.repetitions):
                for with_canary in (False, True):
                    new = f"5.0.{2 * rep + int(with_canary) + 1}"
                    result = asyncio.run(
                        _rollout(
                            ctx,
                            receiver.url,
                            mqtt_url,
                            fleet,
                            current,
                            new,
                            with_canary,
                            seed=rep,
                            receiver_pid=receiver.pid,
                        )
                    )
                    (staged if with_canary else plain).append(result)
                    current = new

    devices = scale.fleet_devices
    anchor = Figure.constant(ANCHOR_PER_MINUTE, "devices/min")
    common = (
        f"{devices} simulated devices ({scale.canary_devices} in the canary subgroup), "
        f"image {mib(scale.fleet_image)}, private Mosquitto, status every 5 s"
    )

    def seconds(results: list[Rollout]) -> str:
        values = sorted(r.seconds for r in results)
        busy = max(results, key=lambda r: r.seconds)
        return (
            f"POST → all {devices} on the new version: {values[len(values) // 2]:.1f} s median "
            f"({', '.join(f'{v:.1f}' for v in values)} s); in the slowest, the receiver used "
            f"{busy.receiver_cpu / busy.seconds:.0%} of a core and the simulated fleet "
            f"{busy.simulator_cpu / busy.seconds:.0%}"
        )

    rollout_done = [r.rollout_seconds for r in staged if r.rollout_seconds is not None]
    return [
        Row(
            NAME,
            "6. tag to fleet, no canary (devices/min)",
            Figure.of([r.per_minute for r in plain], "devices/min"),
            anchor,
            "AWS IoT Jobs anchor (not measured)",
            None,
            [common, seconds(plain)],
        ),
        Row(
            NAME,
            f"6. tag to fleet, canary of {scale.canary_devices} (devices/min)",
            Figure.of([r.per_minute for r in staged], "devices/min"),
            anchor,
            "AWS IoT Jobs anchor (not measured)",
            None,
            [common, seconds(staged)]
            + ([f"rollout state complete after {max(rollout_done):.1f} s at most"] if rollout_done else []),
        ),
    ]


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
    from otaship.simulator.fleet import FleetProgress, simulate

    parts = [(fleet.group, fleet.group_devices), (fleet.canary, fleet.canary_devices)]
    starts: dict[str, float] = {}
    online: dict[str, bool] = {}

    def watcher(group_id: str, count: int):  # type: ignore[no-untyped-def]
        def on_progress(progress: FleetProgress) -> None:
            starts[group_id] = time.monotonic() - progress.elapsed
            online[group_id] = progress.online == count

        return on_progress

    stop = asyncio.Event()
    tasks = []
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
            status_interval=5.0,
            seed=seed,
            http_connections=64,
        )
        tasks.append(
            asyncio.create_task(simulate(config, stop=stop, on_progress=watcher(group.id, len(ids))))
        )
    try:
        await _until(lambda: len(online) == len(parts) and all(online.values()), tasks, timeout=180)
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
            cpu = (cpu_seconds(receiver_pid), cpu_seconds(os.getpid()))
            answer = await client.post(
                "/v1/ota/group",
                data=fields,
                files={"firmware": ("firmware.bin", firmware, "application/octet-stream")},
            )
            if answer.status_code != 201:
                raise RuntimeError(f"deploy of {new} answered {answer.status_code}: {answer.text[:300]}")
            rollout_id = (answer.json().get("rollout") or {}).get("id")
            summaries = await asyncio.wait_for(asyncio.gather(*tasks), timeout=600)
            used = (cpu_seconds(receiver_pid) - cpu[0], cpu_seconds(os.getpid()) - cpu[1])
            rollout_seconds = None
            if rollout_id:
                rollout_seconds = await _rollout_complete(client, rollout_id, posted)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    ends = []
    for (group, ids), summary in zip(parts, summaries, strict=False):
        if not summary.reached_until_version or summary.last_on_target_seconds is None:
            raise RuntimeError(f"only {summary.on_target} of {len(ids)} devices reached {new}")
        ends.append(starts[group.id] + summary.last_on_target_seconds)
    return Rollout(max(ends) - posted, sum(len(ids) for _, ids in parts), rollout_seconds, *used)


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
