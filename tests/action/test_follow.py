"""Following a rollout: the pure parts, and the loop against a scripted clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from otaship.action.follow import (
    FollowResult,
    failed_devices,
    failure_message,
    follow_rollout,
    progress_line,
    unfinished_devices,
)
from tests.action_fixtures import stage_json


def rollout(
    state: str,
    canary: tuple[int, int, int, int] = (2, 0, 0, 2),
    fleet: tuple[int, int, int, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    stages = [stage_json("canary", "canary-g", canary, "running" if state == "canary" else "done")]
    if fleet is not None:
        stages.append(stage_json("fleet", "fleet-g", fleet, "running"))
    return {
        "id": "r1",
        "group": "g",
        "canary": "c",
        "version": "1.0.0",
        "state": state,
        "reason": None,
        "stages": stages,
        "devices": [],
        **extra,
    }


def test_progress_line_names_state_stage_and_counts() -> None:
    assert (
        progress_line(rollout("canary", (4, 1, 1, 2)))
        == "rollout r1: canary, canary stage 1/4 succeeded, 1 failed, 2 pending"
    )
    assert (
        progress_line(rollout("fleet", (4, 4, 0, 0), (10, 3, 0, 7)))
        == "rollout r1: fleet, fleet stage 3/10 succeeded, 0 failed, 7 pending"
    )
    # Once ended, the last stage that ran is shown.
    assert progress_line(rollout("complete", (4, 4, 0, 0), (10, 10, 0, 0))).endswith(
        "fleet stage 10/10 succeeded, 0 failed, 0 pending"
    )
    assert progress_line(rollout("halted", (4, 1, 3, 0))).startswith("rollout r1: halted, canary stage 1/4")
    assert progress_line({"id": "x", "state": "canary"}) == "rollout x: canary"


def test_failure_message_names_the_failed_devices() -> None:
    devices = [
        {"id": "d1", "name": "kitchen", "outcome": "failed", "fw_version": "0.9.0", "code": 203},
        {"id": "d2", "name": None, "outcome": "timed_out", "fw_version": None, "code": None},
        {"id": "d3", "name": "ok", "outcome": "succeeded", "fw_version": "1.0.0", "code": 201},
    ]
    halted = FollowResult(
        rollout("halted", (3, 1, 2, 0), devices=devices, reason="2 canary devices failed"), timed_out=False
    )
    message = failure_message(halted, 60)
    assert message == (
        "rollout r1 halted: 2 canary devices failed. Failed devices: kitchen (failed, running 0.9.0, code 203), "
        "d2 (timed_out)"
    )
    timed_out = FollowResult(rollout("canary", (3, 1, 0, 2)), timed_out=True)
    assert timed_out.state == "timeout"
    assert "was still canary after 60s" in (failure_message(timed_out, 60) or "")
    assert failure_message(FollowResult(rollout("complete"), timed_out=False), 60) is None


def test_devices_that_did_not_finish_are_not_named_as_failed() -> None:
    """A halt on one failure stops the devices that were still updating: they
    are named apart, as not finished, not as failures."""
    devices = [
        {"id": "d1", "name": "kitchen", "outcome": "failed", "fw_version": "0.9.0", "code": 203},
        {"id": "d2", "name": "hall", "outcome": "stopped", "fw_version": "0.9.0", "code": 201},
        {"id": "d3", "name": "attic", "outcome": "pending", "fw_version": None, "code": None},
    ]
    halted = rollout("halted", (3, 0, 1, 0), devices=devices, reason="1 canary device(s) failed")
    halted["stages"][0]["stopped"] = 2
    message = failure_message(FollowResult(halted, timed_out=False), 60)
    assert message == (
        "rollout r1 halted: 1 canary device(s) failed. Failed devices: kitchen (failed, running 0.9.0, code 203). "
        "Not finished (the rollout ended first; not failures): hall (stopped, running 0.9.0, code 201), "
        "attic (pending)"
    )
    assert progress_line(halted) == (
        "rollout r1: halted, canary stage 0/3 succeeded, 1 failed, 0 pending, 2 stopped before finishing"
    )


def test_a_device_waiting_for_its_retry_is_not_finished_and_not_failed() -> None:
    """The receiver retries a device that failed an attempt (`retrying`); only
    when it runs out of attempts does it say `failed`."""
    devices = [
        {"id": "d1", "name": "kitchen", "outcome": "retrying", "fw_version": "0.9.0", "code": 203},
        {"id": "d2", "name": "hall", "outcome": "succeeded", "fw_version": "1.0.0", "code": 202},
    ]
    running = rollout("canary", (2, 1, 0, 0), devices=devices)
    running["stages"][0]["retrying"] = 1
    assert progress_line(running) == (
        "rollout r1: canary, canary stage 1/2 succeeded, 0 failed, 0 pending, 1 retrying"
    )
    assert [d["id"] for d in unfinished_devices(running)] == ["d1"]
    assert failed_devices(running) == []


def test_many_failed_devices_are_cut_short_in_the_message() -> None:
    devices = [{"id": f"d{i}", "name": f"n{i}", "outcome": "failed"} for i in range(25)]
    message = failure_message(FollowResult(rollout("aborted", devices=devices), timed_out=False), 1) or ""
    assert "n9 (failed)" in message and "n10" not in message and "and 15 more" in message


class Script:
    """A rollout that moves on each poll, and a clock that moves on each sleep."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states
        self.polls = 0
        self.now = 0.0
        self.sleeps: list[float] = []

    def fetch(self) -> dict[str, Any]:
        state = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        return state

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def follow(self, timeout: float, report: Callable[[str], None] = lambda line: None) -> FollowResult:
        """Follow this rollout every 5 s on this clock."""
        return follow_rollout(
            self.fetch, timeout=timeout, interval=5, report=report, clock=lambda: self.now, sleep=self.sleep
        )


def test_following_prints_one_line_per_change_and_ends_on_complete() -> None:
    script = Script(
        [
            rollout("canary", (2, 0, 0, 2)),
            rollout("canary", (2, 0, 0, 2)),
            rollout("canary", (2, 1, 0, 1)),
            rollout("fleet", (2, 2, 0, 0), (5, 2, 0, 3)),
            rollout("complete", (2, 2, 0, 0), (5, 5, 0, 0)),
        ]
    )
    lines: list[str] = []
    result = script.follow(100, lines.append)
    assert not result.timed_out and result.state == "complete"
    assert len(lines) == 4  # the repeated first state printed once
    assert script.polls == 5 and script.sleeps == [5, 5, 5, 5]


def test_following_stops_at_the_timeout() -> None:
    script = Script([rollout("canary", (2, 0, 0, 2))])
    result = script.follow(12)
    assert result.timed_out and result.state == "timeout"
    assert script.sleeps == [5, 5, 2]  # never sleeps past the deadline


def test_a_halt_ends_following_at_once() -> None:
    script = Script([rollout("halted", (2, 0, 2, 0))])
    result = script.follow(100)
    assert result.state == "halted" and script.sleeps == []
