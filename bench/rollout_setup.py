"""What the rollout benchmarks (bench/fleet_rollout.py, bench/waves_rollout.py) set up
alike: an owner whose groups hold devices on a first version, and `otaship serve`
with its own defaults on a private Mosquitto, which the simulated fleet joins.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from bench import servers
from bench.context import Context
from bench.fleet import GroupRef, Owner, create_owner, insert_devices


@dataclass(frozen=True)
class GroupSpec:
    name: str
    parent: int | None  # the index of an earlier group, or None
    device_ids: Sequence[str] = ()


@dataclass(frozen=True)
class Tenant:
    env: dict[str, str]  # the receiver's environment, its data in the benchmark's folder
    owner: Owner
    groups: list[GroupRef]  # in the order of the specs


@dataclass(frozen=True)
class Running:
    receiver: servers.Server
    broker_port: int
    mqtt_url: str  # the broker's, with the owner's credentials, for the simulated devices


def tenant(ctx: Context, name: str, specs: Sequence[GroupSpec], version: str) -> Tenant:
    """The owner and its groups (`otaship user create`, `otaship group create`), each
    group's devices inserted on `version`."""
    env = servers.receiver_env(ctx.folder(name) / "data")
    owner, groups = create_owner(env, [(spec.name, spec.parent) for spec in specs])
    for spec, group in zip(specs, groups, strict=True):
        if spec.device_ids:
            insert_devices(env, owner, group, list(spec.device_ids), version)
    return Tenant(env, owner, groups)


def defaults(env: dict[str, str]) -> dict[str, str]:
    """The receiver's own defaults for its log level and its workers."""
    return {k: v for k, v in env.items() if k not in ("OTASHIP_LOG_LEVEL", "OTASHIP_WORKERS")}


@contextmanager
def receiver_on_broker(ctx: Context, tenant: Tenant) -> Iterator[Running]:
    """A private Mosquitto, and the receiver with its defaults on it."""
    with servers.mosquitto(ctx.log_dir) as broker:
        assert broker.port is not None
        rx_env = defaults({**tenant.env, "OTASHIP_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}"})
        with servers.receiver(rx_env, ctx.log_dir) as receiver:
            owner = tenant.owner
            mqtt_url = f"mqtt://{owner.mqtt_user}:{owner.mqtt_password}@127.0.0.1:{broker.port}"
            yield Running(receiver, broker.port, mqtt_url)
