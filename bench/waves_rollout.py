"""7. Waves: a rollout in three waves and then the fleet, and the same halted in
wave 2 and rolled back.

1,000 simulated IoTaaP OS devices (`otaship simulate`'s fleet) against a
private Mosquitto and `otaship serve` with its defaults (SQLite, local storage,
granian, a worker a core with an external broker): three wave subgroups of the
fleet group (50, 150 and 300 devices) and the rest of the group (500). One
receiver, three deploys in a row, each to devices on the version before:

1. a plain deploy to the group, the baseline: POST → every device on it;
2. the next version in waves (`waves=w1,w2,w3`, every device must succeed, no
   soak): the time of each wave, from its trigger to its last device on the
   version, and from the POST to the rollout `complete`;
3. the next one again with `rollback=true`, where a tenth of wave 2 comes back
   on its old version after the reboot: the time from that first failure
   (the first such device's status) to every device of waves 1 and 2 back on
   the version they ran before, next to the time the same devices took to
   update forward in deploy 2. A device still flashing the new version when
   its wave's rollback trigger comes misses it, as a device does while it
   updates; the receiver publishes that trigger again for it (its retries,
   with their default backoff), and the figure waits for it.

Times are read from the devices' own MQTT messages, taken by one subscriber
of the owner's topics, so that they are the devices' view; the rollout's
states from GET /v1/rollouts/<id>.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.context import Context, image, mib
from bench.fleet import GroupRef, Owner
from bench.results import Figure, Row
from bench.rollout_setup import GroupSpec, receiver_on_broker, tenant

NAME = "waves"
VERSIONS = ("6.0.0", "6.0.1", "6.0.2", "6.0.3")
SUBGROUPS = ("wave1", "wave2", "wave3", "rest")
# Of wave 2's devices in the failing rollout: they come back on their old version.
FAIL_RATE = 0.1


def timeout(devices: int) -> float:
    """Seconds a deploy gets before the benchmark fails it."""
    return 120.0 + devices * 0.1


# -- the devices' messages, as one subscriber sees them -------------------------------------


@dataclass
class DeviceSeen:
    version: str | None = None
    uptime: float | None = None
    # When it first reported each version, after its last change.
    changed: dict[str, float] = field(default_factory=dict)
    answered_201: float | None = None
    # When it came back on the version it ran, after a 201 and a reboot.
    reverted: float | None = None


class Observer:
    """The owner's triggers and device reports on the broker, with their arrival times."""

    def __init__(self, owner: Owner, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from otaship.protocol import report_filters, trigger_topic

        self.lock = threading.Lock()
        self.devices: dict[str, DeviceSeen] = {}
        self.triggers: dict[tuple[str, str], float] = {}  # (group, version) -> first seen
        self._subscribed = threading.Event()
        self.port = port
        filters = [*report_filters(mqtt_user=owner.mqtt_user), trigger_topic(owner.mqtt_user, "+")]
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-waves-observer")
        self.client.username_pw_set(owner.mqtt_user, owner.mqtt_password)
        self.client.on_connect = lambda client, *_: client.subscribe([(f, 1) for f in filters])
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def __enter__(self) -> Observer:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the observer could not subscribe")
        return self

    def __exit__(self, *_: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        from otaship.protocol import STATUS, parse_report_topic, parse_trigger_topic

        at = time.monotonic()
        payload = json.loads(message.payload)
        with self.lock:
            report = parse_report_topic(message.topic)
            if report is None:
                trigger = parse_trigger_topic(message.topic)
                if trigger is not None:
                    self.triggers.setdefault((trigger.group_id, payload.get("version", "")), at)
                return
            seen = self.devices.setdefault(report.device_id, DeviceSeen())
            if report.kind != STATUS:
                if payload.get("code") == 201:
                    seen.answered_201, seen.reverted = at, None
                return
            version, uptime = payload.get("fw_version"), payload.get("uptime")
            rebooted = uptime is not None and seen.uptime is not None and uptime < seen.uptime
            if version != seen.version:
                seen.changed[version] = at
            elif rebooted and seen.answered_201 is not None and seen.reverted is None:
                seen.reverted = at
            seen.version, seen.uptime = version, uptime

    def on(self, ids: list[str], version: str) -> bool:
        with self.lock:
            return all((d := self.devices.get(i)) is not None and d.version == version for i in ids)

    def last_on(self, ids: list[str], version: str) -> float:
        """When the last of `ids` reported `version` (the time it changed to it)."""
        with self.lock:
            return max(self.devices[i].changed[version] for i in ids)

    def reset(self) -> None:
        with self.lock:
            for seen in self.devices.values():
                seen.answered_201 = seen.reverted = None
            self.triggers.clear()


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    owner: Owner
    group: GroupRef
    subgroups: list[GroupRef]
    ids: list[list[str]]


def sizes(devices: int) -> list[int]:
    """Waves of 5 %, 15 % and 30 % of the fleet, the rest for the fleet stage."""
    first, second, third = (max(1, devices * share // 100) for share in (5, 15, 30))
    return [first, second, third, devices - first - second - third]


async def _deploy(
    ctx: Context,
    server: str,
    mqtt_url: str,
    layout: Layout,
    observer: Observer,
    current: str,
    new: str,
    fields: dict[str, str],
    done: Any,
    failing: list[str] | None = None,
) -> tuple[float, str | None]:
    """Bring the fleets up on `current`, POST `new` with `fields`, and wait for `done()`;
    the time of the POST and the rollout's id."""
    from otaship.simulator.config import SimulationConfig
    from otaship.simulator.processes import run_fleet

    stop = asyncio.Event()
    online: dict[int, bool] = {}
    tasks = []
    for index, (group, ids) in enumerate(zip(layout.subgroups, layout.ids, strict=True)):
        config = SimulationConfig(
            server=server,
            mqtt_url=mqtt_url,
            group_id=group.id,
            token=group.token,
            devices=len(ids),
            device_ids=ids,
            version=current,
            status_interval=ctx.scale.fleet_status_interval,
            http_connections=64,
            fail_rate=1.0 if failing and index == 1 else 0.0,
            failing_ids=failing if index == 1 else None,
            processes=ctx.scale.fleet_processes if len(ids) > 200 else 1,
        )

        def note(progress: Any, index: int = index) -> None:
            online[index] = progress.online == progress.devices

        tasks.append(asyncio.create_task(run_fleet(config, stop=stop, on_progress=note)))
    try:
        everyone = [i for ids in layout.ids for i in ids]
        await _until(
            lambda: len(online) == len(tasks) and all(online.values()), tasks, 60 + 0.05 * len(everyone)
        )
        # The receiver tells a reboot by the uptime going down: every device has reported once.
        await _until(lambda: observer.on(everyone, current), tasks, 60)
        observer.reset()
        async with httpx.AsyncClient(base_url=server, headers=layout.owner.headers, timeout=120) as client:
            posted = time.monotonic()
            answer = await client.post(
                "/v1/ota/group",
                data={"group": layout.group.id, "token": layout.group.token, "version": new, **fields},
                files={
                    "firmware": (
                        "firmware.bin",
                        image(new, ctx.scale.fleet_image),
                        "application/octet-stream",
                    )
                },
            )
            if answer.status_code != 201:
                raise RuntimeError(f"deploy of {new} answered {answer.status_code}: {answer.text[:300]}")
            rollout_id = (answer.json().get("rollout") or {}).get("id")
            await _until(lambda: done(rollout_id), tasks, timeout(len(everyone)))
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=120)
    for task in tasks:
        task.result()  # a fleet's failure is the benchmark's
    return posted, rollout_id


async def _until(condition: Any, tasks: list[Any], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(condition):
        for task in tasks:
            if task.done():
                task.result()
                raise RuntimeError("a simulated fleet ended early")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not done within {seconds:.0f} s")
        await asyncio.sleep(0.1)


def _rollout(server: str, owner: Owner, rollout_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{server}/v1/rollouts/{rollout_id}", headers=owner.headers, timeout=30)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def run(ctx: Context) -> list[Row]:
    devices = ctx.scale.waves_devices
    ids = [
        [f"{name[0]}{name[-1]}-{n:05d}" for n in range(size)]
        for name, size in zip(SUBGROUPS, sizes(devices), strict=True)
    ]
    specs = [
        GroupSpec("fleet", None),
        *(GroupSpec(name, 0, wave_ids) for name, wave_ids in zip(SUBGROUPS, ids, strict=True)),
    ]
    setup = tenant(ctx, NAME, specs, VERSIONS[0])
    owner, (group, *subgroups) = setup.owner, setup.groups
    layout = Layout(owner, group, subgroups, ids)
    everyone = [i for wave_ids in ids for i in wave_ids]
    back = ids[0] + ids[1]
    start, plain, healthy, failing = VERSIONS
    failing_ids = ids[1][: max(1, round(len(ids[1]) * FAIL_RATE))]
    waves = ",".join(g.id for g in subgroups[:3])

    with receiver_on_broker(ctx, setup) as running, Observer(owner, running.broker_port) as observer:
        url, mqtt_url = running.receiver.url, running.mqtt_url

        def deploy(
            current: str, new: str, fields: dict[str, str], done: Any, **extra: Any
        ) -> tuple[float, str | None]:
            return asyncio.run(
                _deploy(ctx, url, mqtt_url, layout, observer, current, new, fields, done, **extra)
            )

        # 1. The baseline: a plain deploy of the whole group.
        posted, _ = deploy(start, plain, {}, lambda _: observer.on(everyone, plain))
        plain_seconds = observer.last_on(everyone, plain) - posted

        # 2. Three waves and the fleet.
        ended: dict[str, dict[str, Any]] = {}

        def complete(rollout_id: str) -> bool:
            ended["state"] = _rollout(url, owner, rollout_id)
            return ended["state"]["state"] in ("complete", "halted", "rolled_back", "aborted")

        policy = {
            "waves": waves,
            "success_threshold": "1",
            "error_threshold": "0",
            "canary_timeout": "600",
        }
        posted, _ = deploy(plain, healthy, policy, complete)
        if ended["state"]["state"] != "complete":
            raise RuntimeError(
                f"the rollout in waves ended {ended['state']['state']}: {ended['state']['reason']}"
            )
        complete_seconds = time.monotonic() - posted  # at most one poll late
        per_wave = []
        for subgroup, wave_ids in zip(subgroups, ids, strict=True):
            triggered = observer.triggers[(subgroup.id, healthy)]
            per_wave.append((triggered - posted, observer.last_on(wave_ids, healthy) - triggered))
        all_on = observer.last_on(everyone, healthy) - posted
        forward = observer.last_on(back, healthy) - observer.triggers[(subgroups[0].id, healthy)]

        # 3. Wave 2 fails, the rollout halts and rolls waves 1 and 2 back.
        def back_again(rollout_id: str) -> bool:
            """Rolled back, and every device of waves 1 and 2 back on `healthy`:
            those that missed their wave's rollback trigger while flashing
            too, once the receiver has published it again (its retry)."""
            return complete(rollout_id) and observer.on(back, healthy)

        posted, rollout_id = deploy(
            healthy, failing, {**policy, "rollback": "true"}, back_again, failing=failing_ids
        )
        assert rollout_id is not None
        state = _rollout(url, owner, rollout_id)
        if state["state"] != "rolled_back":
            raise RuntimeError(f"the failing rollout ended {state['state']}: {state['reason']}")
        with observer.lock:
            first_failure = min(t for i in failing_ids if (t := observer.devices[i].reverted) is not None)
            returned: dict[str, float] = {}
            missed: set[str] = set()
            for index, wave_ids in enumerate(ids[:2]):
                trigger = observer.triggers[(subgroups[index].id, healthy)]
                for i in wave_ids:
                    seen = observer.devices[i]
                    at = seen.reverted if i in failing_ids else seen.changed[healthy]
                    assert at is not None
                    returned[i] = at
                    # Booted into `failing` after its wave's rollback trigger: it was
                    # flashing when the trigger came, and missed it.
                    if failing in seen.changed and seen.changed[failing] > trigger:
                        missed.add(i)
            untouched = all(failing not in observer.devices[i].changed for i in ids[2] + ids[3])
        if not untouched:
            raise RuntimeError("a device of wave 3 or the rest changed version in the failing rollout")
        rollback_seconds = max(returned.values()) - first_failure
        first_pass = max((t for i, t in returned.items() if i not in missed), default=first_failure)
        first_pass_seconds = first_pass - first_failure
        rows = [d for d in state["devices"] if d["stage"] == "rollback"]
        outcomes = {
            o: sum(1 for d in rows if d["outcome"] == o) for o in sorted({d["outcome"] for d in rows})
        }
        retries = sum(d.get("retries", 0) for d in rows)

    common = (
        f"{devices:,} simulated devices in three waves of {', '.join(str(len(i)) for i in ids[:3])} and "
        f"{len(ids[3])} in the rest of the group, image {mib(ctx.scale.fleet_image)}, private Mosquitto, "
        f"status every {ctx.scale.fleet_status_interval:g} s; the receiver with its defaults (SQLite, local "
        "storage, granian, a worker a core); each wave must have every device succeed, no soak"
    )
    waves_note = "; ".join(
        f"{label}: triggered {start_at:.1f} s after the POST, its last device on the version {took:.1f} s later"
        for label, (start_at, took) in zip(("wave 1", "wave 2", "wave 3", "fleet"), per_wave, strict=True)
    )
    return [
        Row(
            NAME,
            f"7. waves: {devices:,} devices in three waves and the fleet, POST → complete (s)",
            Figure.constant(complete_seconds, "s"),
            Figure.constant(plain_seconds, "s"),
            "a plain deploy of the same devices, POST → all on it",
            None,
            [common, waves_note, f"POST → the last device on the version: {all_on:.1f} s"],
            {"per_wave": [{"triggered_after": s, "seconds": t} for s, t in per_wave], "all_on": all_on},
        ),
        Row(
            NAME,
            f"7. waves: rollback of waves 1 and 2 ({len(back):,} devices), first failure → the last one back (s)",
            Figure.constant(rollback_seconds, "s"),
            Figure.constant(forward, "s"),
            "the same devices' forward update in the rollout in waves, wave 1's trigger → last on it",
            None,
            [
                common,
                f"{len(failing_ids)} of wave 2's {len(ids[1])} devices come back on their old version after the "
                f"reboot; the rollout halts on the clock's next pass after the first, and ends rolled_back ({state['reason']}); wave 3 and the "
                "rest never changed version",
                f"{len(back) - len(missed)} of the {len(back)} devices went back on the rollback's trigger, "
                f"the last {first_pass_seconds:.1f} s after the first failure; {len(missed)} (still flashing the "
                "new version when it came) missed it, booted into the new version, and went back when the "
                f"receiver published their wave's trigger again ({retries} device retries, "
                "OTASHIP_TRIGGER_RETRY_BACKOFF at its default); the receiver's rollback rows: "
                + ", ".join(f"{n} {o}" for o, n in outcomes.items()),
            ],
            {
                "first_pass": first_pass_seconds,
                "missed_the_trigger": len(missed),
                "rollback_rows": outcomes,
                "retries": retries,
            },
        ),
    ]
