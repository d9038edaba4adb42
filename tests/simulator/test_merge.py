"""Merging the progress and summaries of a fleet's processes into the fleet's own."""

from __future__ import annotations

import dataclasses

import pytest

from otaship.simulator.fleet import DeviceSummary, FleetProgress, FleetSummary
from otaship.simulator.merge import common_target, merge_progress, merge_summaries


def progress(**values: object) -> FleetProgress:
    base: dict[str, object] = {
        "elapsed": 1.0,
        "devices": 4,
        "online": 4,
        "triggered": 0,
        "updating": 0,
        "updated": 0,
        "failed": 0,
        "already_current": 0,
        "errors": 0,
        "target_version": None,
        "on_target": 0,
    }
    return FleetProgress(**{**base, **values})  # type: ignore[arg-type]


def device(
    device_id: str, outcome: str | None, version: str, update_seconds: float | None = None
) -> DeviceSummary:
    return DeviceSummary(
        id=device_id,
        initial_version="1.0.0",
        version=version,
        outcome=outcome,
        last_code={"updated": 201, "failed": 201, "error": 203, "already_current": 202}.get(outcome or ""),
        triggers=0 if outcome is None else 1,
        updates=1 if outcome == "updated" else 0,
        rollbacks=1 if outcome == "failed" else 0,
        errors=1 if outcome == "error" else 0,
        reconnects=0,
        update_seconds=update_seconds,
    )


def summary(devices: list[DeviceSummary], **values: object) -> FleetSummary:
    base: dict[str, object] = {
        "devices": devices,
        "updated": 0,
        "failed": 0,
        "already_current": 0,
        "errors": 0,
        "not_triggered": 0,
        "versions": {},
        "target_version": "2.0.0",
        "on_target": 0,
        "until_version": "2.0.0",
        "reached_until_version": True,
        "duration_seconds": 9.0,
        "all_online_seconds": 1.0,
        "first_trigger_seconds": 2.0,
        "last_on_target_seconds": 5.0,
        "update_seconds_p50": None,
        "update_seconds_p95": None,
        "update_seconds_max": None,
        "started": 100.0,
        "cpu_seconds": 1.5,
    }
    return FleetSummary(**{**base, **values})  # type: ignore[arg-type]


def test_the_target_is_until_version_or_the_version_most_devices_saw() -> None:
    assert common_target([("1.0.0", 3), ("2.0.0", 1)], "9.9.9") == "9.9.9"
    assert common_target([("1.0.0", 3), ("2.0.0", 1)], None) == "1.0.0"
    assert common_target([("1.0.0", 1), ("2.0.0", 1), ("2.0.0", 1)], None) == "2.0.0"
    assert common_target([("1.0.0", 2), ("2.0.0", 2)], None) == "1.0.0"  # a tie: the first part's
    assert common_target([(None, 5), ("2.0.0", 1)], None) == "2.0.0"
    assert common_target([(None, 5)], None) is None
    assert common_target([], None) is None


def test_progress_adds_up_and_counts_on_target_only_where_the_target_is_the_same() -> None:
    parts = [
        progress(online=4, triggered=4, updating=1, updated=2, failed=1, target_version="2.0.0", on_target=2),
        progress(devices=3, online=2, triggered=3, errors=2, already_current=1, target_version="2.0.0"),
        progress(devices=1, online=1, target_version="1.5.0", on_target=1, dark=1, reboot_loop=1),
    ]
    merged = merge_progress(parts, devices=10, elapsed=7.5, until_version=None)
    assert merged == FleetProgress(
        elapsed=7.5,
        devices=10,  # the whole fleet, with a process that has not reported yet
        online=7,
        triggered=7,
        updating=1,
        updated=2,
        failed=1,
        already_current=1,
        errors=2,
        target_version="2.0.0",
        on_target=2,
        dark=1,
        reboot_loop=1,
    )
    assert merge_progress(parts, devices=8, elapsed=1, until_version="1.5.0").on_target == 1
    assert merge_progress([], devices=8, elapsed=0, until_version=None) == progress(
        elapsed=0, devices=8, online=0
    )


def test_summaries_line_up_on_the_fleets_clock() -> None:
    first = summary(
        [device("a-1", "updated", "2.0.0", 3.0), device("a-2", "failed", "1.0.0")],
        updated=1,
        failed=1,
        reached_until_version=False,
        started=100.0,
        all_online_seconds=1.0,
        first_trigger_seconds=2.0,
        last_on_target_seconds=5.0,
        cpu_seconds=1.5,
    )
    second = summary(
        [
            device("b-1", "updated", "2.0.0", 1.0),
            device("b-2", "updated", "2.0.0", 2.0),
            device("b-3", None, "1.0.0"),
        ],
        updated=2,
        not_triggered=1,
        reached_until_version=True,
        started=100.5,
        all_online_seconds=2.0,
        first_trigger_seconds=1.0,
        last_on_target_seconds=6.0,
        cpu_seconds=2.0,
    )
    merged = merge_summaries(
        [first, second], started=99.0, ended=110.0, until_version="2.0.0", cpu_seconds=0.25
    )
    assert [d.id for d in merged.devices] == ["a-1", "a-2", "b-1", "b-2", "b-3"]
    assert (merged.updated, merged.failed, merged.errors, merged.already_current, merged.not_triggered) == (
        3,
        1,
        0,
        0,
        1,
    )
    assert merged.versions == {"2.0.0": 3, "1.0.0": 2}
    assert (merged.target_version, merged.on_target, merged.until_version) == ("2.0.0", 3, "2.0.0")
    assert not merged.reached_until_version  # one part did not get there
    assert merged.duration_seconds == 11.0
    # Each part's times, moved from its own start (100, 100.5) to the fleet's (99).
    assert merged.all_online_seconds == 3.5  # the last part to be all online
    assert merged.first_trigger_seconds == 2.5  # the first trigger of any part
    assert merged.last_on_target_seconds == 7.5
    assert merged.trigger_to_last_on_target == 5.0
    # Update times are recomputed over every device, not averaged over parts.
    assert (merged.update_seconds_p50, merged.update_seconds_p95, merged.update_seconds_max) == (
        2.0,
        3.0,
        3.0,
    )
    assert merged.started == 99.0
    assert merged.cpu_seconds == pytest.approx(3.75)
    assert (
        merge_summaries([first], started=99.0, ended=100.0, until_version="2.0.0").reached_until_version
        is False
    )
    assert merge_summaries([second], started=99.0, ended=100.0, until_version="2.0.0").reached_until_version


def test_a_part_heading_elsewhere_or_not_all_online_gives_no_time() -> None:
    on_2 = summary([device("a", "updated", "2.0.0", 1.0)], until_version=None, target_version="2.0.0")
    elsewhere = summary(
        [device("b", "already_current", "1.5.0")],
        until_version=None,
        target_version="1.5.0",
        first_trigger_seconds=0.0,
        last_on_target_seconds=50.0,
        all_online_seconds=None,
        cpu_seconds=None,
    )
    merged = merge_summaries(
        [on_2, elsewhere, dataclasses.replace(on_2)], started=100.0, ended=101.0, until_version=None
    )
    assert merged.target_version == "2.0.0"
    assert (merged.first_trigger_seconds, merged.last_on_target_seconds) == (2.0, 5.0)
    assert merged.on_target == 2
    assert merged.all_online_seconds is None  # one part never had all its devices online
    assert merged.cpu_seconds is None  # one part did not say
    assert not merged.reached_until_version  # no --until-version
    nothing = merge_summaries(
        [summary([device("c", None, "1.0.0")], until_version=None, target_version=None)],
        started=100.0,
        ended=100.0,
        until_version=None,
    )
    assert (nothing.target_version, nothing.on_target, nothing.update_seconds_p50) == (None, 0, None)
    assert nothing.first_trigger_seconds == 2.0  # no target: any trigger counts, as in one process


def test_dark_and_looping_devices_are_counted_over_the_parts() -> None:
    looping = dataclasses.replace(device("c", "reboot_loop", "2.0.0"), reboots=4)
    parts = [
        summary([device("a", "dark", "1.0.0"), device("b", "updated", "2.0.0", 1.0)]),
        summary([looping, device("d", "dark", "1.0.0")]),
    ]
    merged = merge_summaries(parts, started=100.0, ended=110.0, until_version=None)
    assert (merged.dark, merged.reboot_loop, merged.updated, merged.failed) == (2, 1, 1, 0)
    assert merged.to_json()["device_details"][2]["reboots"] == 4
    assert "in a reboot loop                1" in merged.table()
    # A fleet without those fail modes keeps its progress line as it was.
    assert "dark" not in progress().line()
    assert progress(dark=2, reboot_loop=1).line().endswith("errors 0 | dark 2 | reboot-loop 1")
