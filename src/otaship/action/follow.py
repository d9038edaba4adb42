"""Following a rollout until it ends: polling, progress lines, and the verdict.

The receiver decides promotion and halting; the action only watches, so a job
that is cancelled mid-way changes nothing about the rollout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

TERMINAL_STATES = frozenset({"complete", "halted", "aborted", "rolled_back"})
FAILED_STATES = frozenset({"halted", "aborted", "rolled_back"})
FAILED_OUTCOMES = frozenset({"failed", "timed_out"})
# A device whose stage ended before it finished (a halt on other devices'
# failures, an abort) was stopped, or is still pending: it did not fail. One
# `retrying` failed an attempt and waits for its group's trigger again: not
# finished either, until the receiver runs out of attempts and says `failed`.
UNFINISHED_OUTCOMES = frozenset({"stopped", "pending", "retrying"})
# How many devices of each kind an error annotation names; the summary has them all.
DEVICES_IN_MESSAGE = 10

Rollout = Mapping[str, Any]


@dataclass(frozen=True)
class FollowResult:
    rollout: Rollout
    timed_out: bool

    @property
    def state(self) -> str:
        return "timeout" if self.timed_out else str(self.rollout.get("state", ""))


def current_stage(rollout: Rollout) -> Mapping[str, Any] | None:
    """The stage the rollout is in, or the last one that ran once it has ended."""
    stages = [stage for stage in rollout.get("stages") or [] if isinstance(stage, Mapping)]
    for stage in stages:
        if stage.get("name") == rollout.get("state"):
            return stage
    started = [stage for stage in stages if stage.get("started_at")]
    return started[-1] if started else (stages[0] if stages else None)


def progress_line(rollout: Rollout) -> str:
    state = rollout.get("state", "?")
    stage = current_stage(rollout)
    if stage is None:
        return f"rollout {rollout.get('id', '?')}: {state}"
    line = (
        f"rollout {rollout.get('id', '?')}: {state}, {stage.get('name')} stage "
        f"{stage.get('succeeded', 0)}/{stage.get('targeted', 0)} succeeded, "
        f"{stage.get('failed', 0)} failed, {stage.get('pending', 0)} pending"
    )
    for key, label in (
        ("retrying", "retrying"),
        ("timed_out", "timed out"),
        ("stopped", "stopped before finishing"),
    ):
        if stage.get(key):
            line += f", {stage[key]} {label}"
    return line


def devices_with(rollout: Rollout, outcomes: frozenset[str]) -> list[Mapping[str, Any]]:
    return [
        device
        for device in rollout.get("devices") or []
        if isinstance(device, Mapping) and device.get("outcome") in outcomes
    ]


def failed_devices(rollout: Rollout) -> list[Mapping[str, Any]]:
    return devices_with(rollout, FAILED_OUTCOMES)


def unfinished_devices(rollout: Rollout) -> list[Mapping[str, Any]]:
    return devices_with(rollout, UNFINISHED_OUTCOMES)


def name_devices(devices: list[Mapping[str, Any]]) -> str:
    named = ", ".join(describe_device(device) for device in devices[:DEVICES_IN_MESSAGE])
    more = len(devices) - DEVICES_IN_MESSAGE
    return named + (f" and {more} more" if more > 0 else "")


def describe_device(device: Mapping[str, Any]) -> str:
    name = device.get("name") or device.get("id") or "?"
    details = [str(device.get("outcome"))]
    if device.get("fw_version"):
        details.append(f"running {device['fw_version']}")
    if device.get("code") is not None:
        details.append(f"code {device['code']}")
    return f"{name} ({', '.join(details)})"


def failure_message(result: FollowResult, timeout: float) -> str | None:
    """What went wrong, for the error annotation; None when the rollout completed."""
    rollout = result.rollout
    rollout_id = rollout.get("id", "?")
    if result.timed_out:
        head = (
            f"rollout {rollout_id} was still {rollout.get('state', '?')} after {timeout:g}s of following; "
            "it goes on without the job, see GET /v1/rollouts/" + str(rollout_id)
        )
    elif rollout.get("state") in FAILED_STATES:
        reason = rollout.get("reason")
        head = f"rollout {rollout_id} {rollout.get('state')}" + (f": {reason}" if reason else "")
    else:
        return None
    failed = failed_devices(rollout)
    if failed:
        head += f". Failed devices: {name_devices(failed)}"
    unfinished = unfinished_devices(rollout) if not result.timed_out else []
    if unfinished:
        head += f". Not finished (the rollout ended first; not failures): {name_devices(unfinished)}"
    return head


def follow_rollout(
    fetch: Callable[[], Rollout],
    *,
    timeout: float,
    interval: float,
    report: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    first: Rollout | None = None,
) -> FollowResult:
    """Poll until the rollout ends or `timeout` seconds pass; one line per change."""
    deadline = clock() + timeout
    rollout = first if first is not None else fetch()
    last_line = ""
    while True:
        line = progress_line(rollout)
        if line != last_line:
            report(line)
            last_line = line
        if rollout.get("state") in TERMINAL_STATES:
            return FollowResult(rollout, timed_out=False)
        remaining = deadline - clock()
        if remaining <= 0:
            return FollowResult(rollout, timed_out=True)
        sleep(min(interval, remaining))
        rollout = fetch()
