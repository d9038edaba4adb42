from __future__ import annotations

from otaship.action.summary import (
    MAX_DEVICE_ROWS,
    DeployReport,
    build_outputs,
    cell,
    deploy_outputs,
    render_summary,
)


def report(**changes: object) -> DeployReport:
    base = DeployReport(
        version="1.4.0",
        group="a" * 24,
        commit="c0ffee",
        environment="esp32dev",
        firmware_path="/w/.pio/build/esp32dev/firmware.bin",
        size=123456,
        sha256="ab" * 32,
        chip="esp32",
    )
    for key, value in changes.items():
        setattr(base, key, value)
    return base


ROLLOUT = {
    "id": "r" * 24,
    "state": "halted",
    "reason": "canary failed",
    "stages": [
        {
            "name": "canary",
            "group": "c" * 24,
            "state": "halted",
            "targeted": 3,
            "succeeded": 1,
            "failed": 2,
            "pending": 0,
        }
    ],
    "devices": [
        {
            "id": "d1",
            "name": "ok-dev",
            "stage": "canary",
            "outcome": "succeeded",
            "fw_version": "1.4.0",
            "code": 201,
        },
        {
            "id": "d2",
            "name": "bad|dev",
            "stage": "canary",
            "outcome": "failed",
            "fw_version": "1.3.0",
            "code": 203,
        },
        {
            "id": "d3",
            "name": None,
            "stage": "canary",
            "outcome": "timed_out",
            "fw_version": None,
            "code": None,
        },
    ],
}


def test_outputs() -> None:
    assert build_outputs(report()) == {
        "version": "1.4.0",
        "firmware-path": "/w/.pio/build/esp32dev/firmware.bin",
        "sha256": "ab" * 32,
        "size": "123456",
    }
    assert deploy_outputs(report())["rollout-id"] == "" and deploy_outputs(report())["rollout-state"] == ""
    outputs = deploy_outputs(report(rollout=ROLLOUT, rollout_state="halted"))
    assert outputs["rollout-id"] == "r" * 24 and outputs["rollout-state"] == "halted"
    assert build_outputs(DeployReport())["size"] == ""


def test_a_successful_deploy_summary_lists_what_was_deployed() -> None:
    text = render_summary(report(deployed=True, ota={"_id": "o" * 24, "__v": 3}))
    assert text.startswith("## ✅ otaship: `1.4.0` deployed\n")
    for expected in (
        "| Version | 1.4.0 |",
        "| Size | 123,456 bytes |",
        f"| SHA-256 | `{'ab' * 32}` |",
        f"| Group | {'a' * 24} |",
        "| PlatformIO env | esp32dev |",
        f"| OTA record | {'o' * 24} (revision 3) |",
        "| Deployed | yes |",
    ):
        assert expected in text
    assert "Rollout" not in text


def test_a_failed_rollout_summary_has_stages_and_failed_devices_first() -> None:
    text = render_summary(
        report(
            deployed=True, rollout=ROLLOUT, rollout_state="halted", failure="rollout halted: canary failed"
        )
    )
    assert text.startswith("## ❌ otaship: `1.4.0` failed")
    assert "**What failed:** rollout halted: canary failed" in text
    assert f"### Rollout `{'r' * 24}`: halted" in text and "Reason: canary failed" in text
    assert f"| canary | {'c' * 24} | halted | 3 | 1 | 2 | 0 | 0 | 0 |" in text.splitlines()
    assert "#### Device outcomes (3 devices, 2 failed)" in text
    rows = [line for line in text.splitlines() if line.startswith(("| ok-dev", "| bad", "| d3"))]
    assert rows == [
        "| bad\\|dev | canary | failed | 1.3.0 | 203 |",
        "| d3 | canary | timed_out |  |  |",
        "| ok-dev | canary | succeeded | 1.4.0 | 201 |",
    ]


def test_a_failure_before_anything_was_built_still_renders() -> None:
    text = render_summary(DeployReport(failure="tag 'x' is not a semantic version"))
    assert text.startswith("## ❌ otaship: firmware failed")
    assert "tag 'x'" in text


def test_a_big_fleet_is_cut_to_the_interesting_rows() -> None:
    devices = [{"id": f"d{i:04}", "stage": "fleet", "outcome": "succeeded"} for i in range(200)]
    devices.append({"id": "zz-bad", "stage": "fleet", "outcome": "failed"})
    text = render_summary(
        report(
            rollout={"id": "r", "state": "complete", "stages": [], "devices": devices},
            rollout_state="complete",
        )
    )
    assert "| zz-bad | fleet | failed |" in text  # failures sort first, so they are never cut
    assert sum(1 for line in text.splitlines() if "| fleet |" in line) == MAX_DEVICE_ROWS
    assert f"…and {201 - MAX_DEVICE_ROWS} more" in text
    assert text.startswith("## ✅ otaship: `1.4.0` rolled out")


def test_cells_cannot_break_the_table() -> None:
    assert cell("a|b\nc") == "a\\|b c"
    assert cell(None) == ""


def test_devices_that_did_not_finish_are_counted_and_listed_apart_from_failures() -> None:
    rollout = {
        **ROLLOUT,
        "stages": [
            {
                "name": "canary",
                "group": "c" * 24,
                "state": "failed",
                "targeted": 4,
                "succeeded": 1,
                "failed": 1,
                "timed_out": 0,
                "stopped": 2,
                "pending": 0,
            }
        ],
        "devices": [
            {"id": "d1", "stage": "canary", "outcome": "succeeded", "fw_version": "1.4.0", "code": 201},
            {"id": "d2", "stage": "canary", "outcome": "stopped", "fw_version": "1.3.0", "code": 201},
            {"id": "d3", "stage": "canary", "outcome": "failed", "fw_version": "1.3.0", "code": 203},
            {"id": "d4", "stage": "canary", "outcome": "stopped", "fw_version": "1.4.0", "code": 201},
        ],
    }
    text = render_summary(report(rollout=rollout, rollout_state="halted", failure="rollout halted"))
    lines = text.splitlines()
    assert (
        "| Stage | Group | State | Targeted | Succeeded | Failed | Timed out | Stopped | Pending |" in lines
    )
    assert f"| canary | {'c' * 24} | failed | 4 | 1 | 1 | 0 | 2 | 0 |" in lines
    assert "#### Device outcomes (4 devices, 1 failed, 2 not finished)" in lines
    rows = [line for line in lines if line.startswith("| d")]
    assert rows == [
        "| d3 | canary | failed | 1.3.0 | 203 |",
        "| d2 | canary | stopped | 1.3.0 | 201 |",
        "| d4 | canary | stopped | 1.4.0 | 201 |",
        "| d1 | canary | succeeded | 1.4.0 | 201 |",
    ]


def test_a_rollout_in_waves_has_a_row_per_wave_with_its_failures_by_reason() -> None:
    stage = {"targeted": 2, "succeeded": 2, "failed": 0, "timed_out": 0, "stopped": 0, "pending": 0}
    waves = {
        "id": "r" * 24,
        "state": "halted",
        "reason": "wave 2: 2 of 2 finished device(s) failed",
        "stages": [
            {**stage, "name": "canary", "wave": 1, "group": "1" * 24, "state": "passed"},
            {
                **stage,
                "name": "wave",
                "wave": 2,
                "group": "2" * 24,
                "state": "failed",
                "succeeded": 0,
                "failed": 2,
                "failed_by_reason": {"dark": 1, "reboot-loop": 1},
            },
            {**stage, "name": "wave", "wave": 3, "group": "3" * 24, "state": "skipped", "targeted": 0},
            {**stage, "name": "fleet", "wave": None, "group": "g" * 24, "state": "skipped", "targeted": 0},
        ],
    }
    lines = render_summary(report(deployed=True, rollout=waves, rollout_state="halted")).splitlines()
    assert [line for line in lines if line.startswith(("| canary", "| wave", "| fleet"))] == [
        f"| canary | {'1' * 24} | passed | 2 | 2 | 0 | 0 | 0 | 0 |",
        f"| wave 2 | {'2' * 24} | failed | 2 | 0 | 2 (dark 1, reboot-loop 1) | 0 | 0 | 0 |",
        f"| wave 3 | {'3' * 24} | skipped | 0 | 2 | 0 | 0 | 0 | 0 |",
        f"| fleet | {'g' * 24} | skipped | 0 | 2 | 0 | 0 | 0 | 0 |",
    ]
