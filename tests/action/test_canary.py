"""`otaship-deploy` following a real canary rollout to its end.

A real receiver with its embedded broker, simulated IoTaaP OS devices, and the
action's own `main` in this process: the job succeeds when the fleet is
updated and fails with exit code 3 when the canary halts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otaship.action import exit_codes
from otaship.simulator.fleet import FleetSummary
from tests.action_fixtures import DeployStep, StepRun, Tenant, receiver_env
from tests.esp_image import write_image
from tests.receiver.mqtt.test_fleet import with_fleets

COMMIT = "3333333333333333333333333333333333333333"


@dataclass
class Fleet:
    """A group with a canary subgroup, and devices on 1.0.0 in both."""

    group: dict[str, Any]
    canary: dict[str, Any]
    canary_ids: list[str]
    fleet_ids: list[str]


def fleet_with_canary(t: Tenant, *, canary_devices: int, fleet_devices: int) -> Fleet:
    group = t.group("fleet")
    canary = t.group("canary", parent=group)
    return Fleet(
        group,
        canary,
        t.devices(canary, canary_devices, "1.0.0", "canary"),
        t.devices(group, fleet_devices, "1.0.0", "fleet"),
    )


def run_job(t: Tenant, deploy_step: DeployStep, tmp_path: Path, fleet: Fleet, **extra: str) -> StepRun:
    env = {
        "GITHUB_SHA": COMMIT,
        "GITHUB_REF_TYPE": "tag",
        "GITHUB_REF_NAME": "v1.1.0",
        **receiver_env(t.receiver.url, t.api_key, fleet.group["id"], fleet.group["token"]),
        "OTASHIP_POLL_INTERVAL": "0.5",
    }
    image = write_image(tmp_path / "firmware.bin", "1.1.0")
    args = ["deploy", "--firmware", str(image), "--canary", fleet.canary["id"], "--timeout", "90"]
    for name, value in extra.items():
        args += [f"--{name.replace('_', '-')}", value]
    return deploy_step(*args, env=env)


async def with_devices(t: Tenant, configs: list[Any], job: Any) -> tuple[Any, list[FleetSummary]]:
    return await with_fleets(t, configs, lambda: asyncio.to_thread(job))


def test_the_job_follows_a_healthy_canary_to_complete(
    embedded: Tenant, deploy_step: DeployStep, tmp_path: Path
) -> None:
    t = embedded
    f = fleet_with_canary(t, canary_devices=2, fleet_devices=3)
    configs = [t.sim(f.canary, f.canary_ids, "1.0.0"), t.sim(f.group, f.fleet_ids, "1.0.0")]
    run, _ = asyncio.run(with_devices(t, configs, lambda: run_job(t, deploy_step, tmp_path, f)))
    code, log, values, summary = run.code, run.log, run.outputs, run.summary
    assert code == exit_codes.OK, log
    assert (values["version"], values["rollout-state"]) == ("1.1.0", "complete")
    assert len(values["rollout-id"]) == 24 and len(values["sha256"]) == 64
    assert "canary" in summary and "fleet" in summary
    versions = t.versions()
    assert {versions[i] for i in f.canary_ids + f.fleet_ids} == {"1.1.0"}


def test_a_halted_canary_fails_the_job(embedded: Tenant, deploy_step: DeployStep, tmp_path: Path) -> None:
    t = embedded
    f = fleet_with_canary(t, canary_devices=2, fleet_devices=2)
    configs = [t.sim(f.canary, f.canary_ids, "1.0.0", fail_rate=1.0), t.sim(f.group, f.fleet_ids, "1.0.0")]
    run, (_, fleet_run) = asyncio.run(
        with_devices(t, configs, lambda: run_job(t, deploy_step, tmp_path, f, canary_timeout="60"))
    )
    code, log, outputs, summary = run.code, run.log, run.outputs, run.summary
    assert code == exit_codes.ROLLOUT_FAILED, log
    assert outputs["rollout-state"] == "halted"
    assert "::error" in log
    for device_id in f.canary_ids:
        assert device_id in summary  # the failed devices are named
    assert [d.triggers for d in fleet_run.devices] == [0, 0]
    versions = t.versions()
    assert {versions[i] for i in f.fleet_ids} == {"1.0.0"}
