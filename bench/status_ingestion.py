"""4. Status ingestion: devices' status reports through Mosquitto into the receiver.

N devices each publish M IoTaaP OS status reports (round-robin, QoS 1, from a
second process); each device's last report carries a new firmware version. The
receiver's figure runs from the first publish until every device's new version
is in its database; the baseline, a bare paho subscriber on the same topics,
until it counted every message. Goal: at least half the baseline's rate.

Each repetition gets a fresh private broker (bench/servers.py says why), so
no persistent session or queued message of one run reaches the next.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass

from sqlalchemy import text

from bench import servers
from bench.context import Context
from bench.fleet import GroupRef, Owner, create_owner, engine_for, insert_devices
from bench.mqtt_load import device_ids, publish, status_messages
from bench.results import Figure, Goal, Row
from bench.system import cpu_seconds

NAME = "status"
PREFIX = "st"
STATUS_INTERVAL = 5.0  # seconds between a real device's status reports


@dataclass(frozen=True)
class Intake:
    messages: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def rate_per_cpu_second(self) -> float:
        return self.messages / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")


def _publisher(
    port: int, user: str, devices: int, messages: int, version: str, final: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.mqtt_load",
            "publish",
            "--port",
            str(port),
            "--user",
            user,
            "--prefix",
            PREFIX,
            "--devices",
            str(devices),
            "--messages",
            str(messages),
            "--version",
            version,
            "--final",
            final,
        ],
        cwd=servers.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _publisher_result(process: subprocess.Popen[str], timeout: float) -> dict[str, float]:
    out, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"the publisher failed: {err.strip()[-500:]}")
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def run(ctx: Context) -> list[Row]:
    scale = ctx.scale
    devices, per_device = scale.status_devices, scale.status_messages
    total = devices * per_device
    timeout = max(60.0, total / 500)
    folder = ctx.folder("status")
    env = servers.receiver_env(folder / "data")
    owner, (group,) = create_owner(env, [("fleet", None)])
    insert_devices(env, owner, group, device_ids(PREFIX, devices), "0.0.0")

    ours: list[Intake] = []
    theirs: list[Intake] = []
    for rep in range(ctx.repetitions):
        ours.append(_receiver_rep(ctx, env, owner, group, rep, devices, per_device, timeout))
        theirs.append(_baseline_rep(ctx, owner, rep, devices, per_device, timeout))

    notes = [
        f"{devices} devices × {per_device} reports = {total:,} messages per repetition, QoS 1, "
        f"published from a second process (at most 10,000 unacknowledged)",
        "otaship: until every device's new version is in the database; baseline: until the last message is counted",
    ]
    return [
        Row(
            NAME,
            "4. status ingestion (msg/s)",
            Figure.of([i.rate for i in ours], "msg/s"),
            Figure.of([i.rate for i in theirs], "msg/s"),
            "bare paho subscriber",
            Goal(">=", 0.5),
            notes,
            paired=True,
        ),
        Row(
            NAME,
            "4. devices one core sustains (1 status / 5 s)",
            Figure.of([i.rate_per_cpu_second * STATUS_INTERVAL for i in ours], "devices"),
            Figure.of([i.rate_per_cpu_second * STATUS_INTERVAL for i in theirs], "devices"),
            "bare paho subscriber",
            None,
            ["messages per CPU-second of the subscribing process (from /proc/<pid>/stat) × 5 s"],
            paired=True,
        ),
    ]


def _receiver_rep(
    ctx: Context,
    env: dict[str, str],
    owner: Owner,
    group: GroupRef,
    rep: int,
    devices: int,
    per_device: int,
    timeout: float,
) -> Intake:
    version, final = f"1.{rep}.0", f"2.{rep}.0"
    with servers.mosquitto(ctx.log_dir) as broker:
        rx_env = {**env, "OTASHIP_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}"}
        with servers.receiver(rx_env, ctx.log_dir) as receiver:
            engine = engine_for(env)
            try:
                _wait_subscribed(engine, broker.port, owner, rep, timeout=30)
                cpu_before = cpu_seconds(receiver.pid)
                publisher = _publisher(broker.port, owner.mqtt_user, devices, per_device, version, final)
                done_at = _wait_stored(engine, final, devices, timeout, publisher)
                cpu = cpu_seconds(receiver.pid) - cpu_before
                sent = _publisher_result(publisher, timeout)
            finally:
                engine.dispose()
    return Intake(devices * per_device, done_at - sent["started"], cpu)


def _wait_subscribed(engine: object, port: int, owner: Owner, rep: int, *, timeout: float) -> None:
    """Publish a marker report until the receiver stored it: its subscription is live."""
    marker = f"0.0.{rep}-ready"
    first = device_ids(PREFIX, 1)[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publish("127.0.0.1", port, status_messages(owner.mqtt_user, [first], 1, marker, marker))
        stop = time.monotonic() + 1.0
        while time.monotonic() < stop:
            if _count(engine, marker) == 1:
                return
            time.sleep(0.05)
    raise RuntimeError(f"the receiver took in no status report within {timeout:.0f} s")


def _count(engine: object, version: str) -> int:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        value = conn.execute(
            text("SELECT count(*) FROM devices WHERE firmware_version = :v"), {"v": version}
        ).scalar()
    return int(value or 0)


def _wait_stored(
    engine: object, final: str, devices: int, timeout: float, publisher: subprocess.Popen[str]
) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _count(engine, final) >= devices:
            return time.monotonic()
        if publisher.poll() not in (None, 0):
            _publisher_result(publisher, 10)
        time.sleep(0.01)
    raise RuntimeError(
        f"after {timeout:.0f} s only {_count(engine, final)} of {devices} devices' new version were stored"
    )


def _baseline_rep(
    ctx: Context, owner: Owner, rep: int, devices: int, per_device: int, timeout: float
) -> Intake:
    total = devices * per_device
    with servers.mosquitto(ctx.log_dir) as broker:
        counter = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.mqtt_load",
                "count",
                "--port",
                str(broker.port),
                "--user",
                owner.mqtt_user,
                "--expect",
                str(total),
                "--timeout",
                str(timeout),
            ],
            cwd=servers.ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert counter.stdout is not None
            if counter.stdout.readline().strip() != "ready":
                raise RuntimeError(
                    f"the paho subscriber did not start: {counter.stderr.read() if counter.stderr else ''}"
                )
            publisher = _publisher(
                broker.port, owner.mqtt_user, devices, per_device, f"1.{rep}.0", f"2.{rep}.0"
            )
            sent = _publisher_result(publisher, timeout)
            out, _err = counter.communicate(timeout=timeout + 10)
        finally:
            if counter.poll() is None:
                counter.kill()
                counter.wait()
    counted = json.loads(out.strip().splitlines()[-1])
    if counted["count"] < total:
        raise RuntimeError(f"the paho subscriber counted {counted['count']} of {total} messages")
    return Intake(total, counted["last"] - sent["started"], counted["cpu"])
