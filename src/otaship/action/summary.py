"""The job summary and the step outputs, rendered from what a run did.

Rendered on failure too, so the summary says what was deployed and what failed
without anyone opening the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from otaship.action.follow import FAILED_OUTCOMES, TERMINAL_STATES, UNFINISHED_OUTCOMES

# A fleet can have thousands of devices; the summary shows the interesting ones.
MAX_DEVICE_ROWS = 50
# Failures first, then the devices that did not finish, then the rest.
OUTCOME_ORDER = {"failed": 0, "timed_out": 1, "retrying": 2, "stopped": 3, "pending": 4, "succeeded": 5}


@dataclass
class DeployReport:
    """Everything the summary and the outputs are made from; filled as the run goes."""

    version: str = ""
    group: str = ""
    commit: str = ""
    environment: str = ""
    firmware_path: str = ""
    size: int | None = None
    sha256: str = ""
    chip: str = ""
    ota: Mapping[str, Any] | None = None
    deployed: bool | None = None
    rollout: Mapping[str, Any] | None = None
    rollout_state: str = ""
    failure: str = ""
    notes: list[str] = field(default_factory=list)
    # The key digest of each valid signature block of the image.
    signed_by: list[str] = field(default_factory=list)

    @property
    def rollout_id(self) -> str:
        return str(self.rollout.get("id", "")) if self.rollout else ""


def build_outputs(report: DeployReport) -> dict[str, str]:
    return {
        "version": report.version,
        "firmware-path": report.firmware_path,
        "sha256": report.sha256,
        "size": "" if report.size is None else str(report.size),
    }


def deploy_outputs(report: DeployReport) -> dict[str, str]:
    return {**build_outputs(report), "rollout-id": report.rollout_id, "rollout-state": report.rollout_state}


def cell(value: object) -> str:
    """A value made safe for one Markdown table cell."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines


def headline(report: DeployReport) -> str:
    what = f"`{report.version}`" if report.version else "firmware"
    if report.failure:
        return f"## ❌ otaship: {what} failed"
    if report.rollout_state == "complete":
        return f"## ✅ otaship: {what} rolled out"
    if report.deployed is False:
        return f"## ✅ otaship: {what} already deployed"
    if report.deployed:
        return f"## ✅ otaship: {what} deployed"
    return f"## ✅ otaship: {what} built"


def render_summary(report: DeployReport) -> str:
    lines = [headline(report), ""]
    if report.failure:
        lines += ["**What failed:** " + cell(report.failure), ""]
    lines += [f"> ⚠️ {cell(note)}" for note in report.notes]
    if report.notes:
        lines.append("")
    facts: list[list[object]] = []
    for label, value in (
        ("Version", report.version),
        ("Group", report.group),
        ("Commit", report.commit),
        ("PlatformIO env", report.environment),
        ("Image", report.firmware_path),
        ("Chip", report.chip),
        ("Size", f"{report.size:,} bytes" if report.size is not None else ""),
        ("SHA-256", f"`{report.sha256}`" if report.sha256 else ""),
        ("Signed by", ", ".join(f"key `{digest}`" for digest in report.signed_by)),
    ):
        if value:
            facts.append([label, value])
    if report.ota and report.ota.get("signed_by"):
        facts.append(["Receiver verified", f"key `{report.ota['signed_by']}`"])
    if report.ota:
        facts.append(["OTA record", f"{report.ota.get('_id', '')} (revision {report.ota.get('__v', '')})"])
    if report.deployed is not None:
        facts.append(["Deployed", "yes" if report.deployed else "no, this version was already deployed"])
    lines += table(["", ""], facts)
    if report.rollout:
        lines += ["", *render_rollout(report.rollout, report.rollout_state)]
    return "\n".join(lines) + "\n"


def stage_label(stage: Mapping[str, Any]) -> object:
    """`canary` and `fleet` as they are; a later wave by its number."""
    if stage.get("name") == "wave" and stage.get("wave"):
        return f"wave {stage['wave']}"
    return stage.get("name")


def failed_cell(stage: Mapping[str, Any]) -> object:
    """The failed count, and by which signal when the receiver says."""
    reasons = stage.get("failed_by_reason")
    if not isinstance(reasons, Mapping) or not reasons:
        return stage.get("failed")
    return f"{stage.get('failed')} ({', '.join(f'{k} {v}' for k, v in reasons.items())})"


def render_rollout(rollout: Mapping[str, Any], state: str) -> list[str]:
    shown_state = state or str(rollout.get("state", ""))
    lines = [f"### Rollout `{cell(rollout.get('id', ''))}`: {cell(shown_state)}", ""]
    if rollout.get("reason"):
        lines += [f"Reason: {cell(rollout['reason'])}", ""]
    stages = [stage for stage in rollout.get("stages") or [] if isinstance(stage, Mapping)]
    if stages:
        lines += table(
            ["Stage", "Group", "State", "Targeted", "Succeeded", "Failed", "Timed out", "Stopped", "Pending"],
            [
                [
                    stage_label(s),
                    s.get("group"),
                    s.get("state"),
                    s.get("targeted"),
                    s.get("succeeded"),
                    failed_cell(s),
                    # A receiver older than these counts sends neither.
                    s.get("timed_out", 0),
                    s.get("stopped", 0),
                    s.get("pending"),
                ]
                for s in stages
            ],
        )
        lines.append("")
    lines += render_rollback(rollout)
    devices = [device for device in rollout.get("devices") or [] if isinstance(device, Mapping)]
    if devices:
        ordered = sorted(
            devices,
            key=lambda d: (OUTCOME_ORDER.get(str(d.get("outcome")), 9), str(d.get("name") or d.get("id"))),
        )
        failed = sum(1 for device in devices if device.get("outcome") in FAILED_OUTCOMES)
        heading = f"{len(devices)} devices, {failed} failed"
        if rollout.get("state") in TERMINAL_STATES:
            # Listed apart from the failures: the rollout ended before they finished.
            unfinished = sum(1 for device in devices if device.get("outcome") in UNFINISHED_OUTCOMES)
            if unfinished:
                heading += f", {unfinished} not finished"
        lines += [f"#### Device outcomes ({heading})", ""]
        lines += table(
            ["Device", "Stage", "Outcome", "Firmware", "Code"],
            [
                [
                    d.get("name") or d.get("id"),
                    d.get("stage"),
                    d.get("outcome"),
                    d.get("fw_version"),
                    d.get("code"),
                ]
                for d in ordered[:MAX_DEVICE_ROWS]
            ],
        )
        if len(ordered) > MAX_DEVICE_ROWS:
            lines += [
                "",
                f"…and {len(ordered) - MAX_DEVICE_ROWS} more (see GET /v1/rollouts/{cell(rollout.get('id', ''))}).",
            ]
    return lines


def render_rollback(rollout: Mapping[str, Any]) -> list[str]:
    """What the automatic rollback did with each wave, and how far its devices
    went back when the job last looked; nothing without a rollback."""
    waves = [wave for wave in rollout.get("rollback") or [] if isinstance(wave, Mapping)]
    if not waves:
        return []
    lines = ["#### Rollback", ""]
    lines += table(
        ["Wave", "Group", "Result", "Targeted", "Went back", "Did not", "Unreachable", "Pending", "Retrying"],
        [
            [
                w.get("wave"),
                w.get("group"),
                w.get("result"),
                w.get("targeted"),
                w.get("went_back"),
                w.get("did_not"),
                w.get("unreachable"),
                w.get("pending"),
                # A receiver from before rollbacks were retried has no such count.
                w.get("retrying", 0),
            ]
            for w in waves
        ],
    )
    return [*lines, ""]
