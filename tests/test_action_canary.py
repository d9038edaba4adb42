"""`otaship-deploy` following a real canary rollout to its end.

A real receiver with its embedded broker, simulated IoTaaP OS devices, and the
action's own `main` in this process: the job succeeds when the fleet is
updated and fails with exit code 3 when the canary halts.
"""
from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from otaship.action import exit_codes
from otaship.action.__main__ import main
from otaship.simulator.fleet import FleetSummary
from tests.esp_image import write_image
from tests.test_fleet_mqtt import Tenant, embedded, with_fleets  # noqa: F401  (the fixture)

COMMIT = "3333333333333333333333333333333333333333"


def parse_outputs(text: str) -> dict[str, str]:
    """$GITHUB_OUTPUT's heredoc entries, as the runner reads them."""
    outputs: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        name, _, delimiter = line.partition("<<")
        value: list[str] = []
        for inner in lines:
            if inner == delimiter:
                break
            value.append(inner)
        outputs[name] = "\n".join(value)
    return outputs


def run_job(t: Tenant, tmp_path: Path, group: dict[str, Any], canary: dict[str, Any], **extra: str) -> tuple[int, str, str, str]:
    out = io.StringIO()
    output_file, summary_file = tmp_path / "output", tmp_path / "summary"
    output_file.write_text("")
    summary_file.write_text("")
    environ = {
        "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output_file), "GITHUB_STEP_SUMMARY": str(summary_file),
        "GITHUB_SHA": COMMIT, "GITHUB_REF_TYPE": "tag", "GITHUB_REF_NAME": "v1.1.0",
        "OTASHIP_RECEIVER_URL": t.receiver.url, "OTASHIP_API_KEY": t.api_key,
        "OTASHIP_GROUP": group["id"], "OTASHIP_GROUP_TOKEN": group["token"], "OTASHIP_POLL_INTERVAL": "0.5",
    }
    image = write_image(tmp_path / "firmware.bin", "1.1.0")
    args = ["deploy", "--firmware", str(image), "--canary", canary["id"], "--timeout", "90"]
    for name, value in extra.items():
        args += [f"--{name.replace('_', '-')}", value]
    code = main(args, environ, out)
    return code, out.getvalue(), output_file.read_text(), summary_file.read_text()


async def with_devices(t: Tenant, configs: list[Any], job: Any) -> tuple[Any, list[FleetSummary]]:
    return await with_fleets(t, configs, lambda: asyncio.to_thread(job))


def test_the_job_follows_a_healthy_canary_to_complete(embedded: Tenant, tmp_path: Path) -> None:  # noqa: F811
    t = embedded
    fleet = t.group("fleet")
    canary = t.group("canary", parent=fleet)
    canary_ids = t.devices(canary, 2, "1.0.0", "canary")
    fleet_ids = t.devices(fleet, 3, "1.0.0", "fleet")
    configs = [t.sim(canary, canary_ids, "1.0.0"), t.sim(fleet, fleet_ids, "1.0.0")]
    (code, log, outputs, summary), _ = asyncio.run(with_devices(t, configs, lambda: run_job(t, tmp_path, fleet, canary)))
    assert code == exit_codes.OK, log
    values = parse_outputs(outputs)
    assert (values["version"], values["rollout-state"]) == ("1.1.0", "complete")
    assert len(values["rollout-id"]) == 24 and len(values["sha256"]) == 64
    assert "canary" in summary and "fleet" in summary
    versions = t.versions()
    assert {versions[i] for i in canary_ids + fleet_ids} == {"1.1.0"}


def test_a_halted_canary_fails_the_job(embedded: Tenant, tmp_path: Path) -> None:  # noqa: F811
    t = embedded
    fleet = t.group("fleet")
    canary = t.group("canary", parent=fleet)
    canary_ids = t.devices(canary, 2, "1.0.0", "canary")
    fleet_ids = t.devices(fleet, 2, "1.0.0", "fleet")
    configs = [t.sim(canary, canary_ids, "1.0.0", fail_rate=1.0), t.sim(fleet, fleet_ids, "1.0.0")]
    (code, log, outputs, summary), (_, fleet_run) = asyncio.run(
        with_devices(t, configs, lambda: run_job(t, tmp_path, fleet, canary, canary_timeout="60"))
    )
    assert code == exit_codes.ROLLOUT_FAILED, log
    assert parse_outputs(outputs)["rollout-state"] == "halted"
    assert "::error" in log
    for device_id in canary_ids:
        assert device_id in summary  # the failed devices are named
    assert [d.triggers for d in fleet_run.devices] == [0, 0]
    versions = t.versions()
    assert {versions[i] for i in fleet_ids} == {"1.0.0"}
