"""Health after the reboot, as pure rules: a reboot is a later boot time (so
that a report of uptime 0 just before the 201 does not hide it), and a device
that keeps rebooting on the new version fails as a reboot loop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from otaship.receiver.db.enums import Outcome
from otaship.receiver.rollouts.policy import (
    DeviceProgress,
    after_response,
    after_status,
    at_stage_end,
    boot_time,
    initial_progress,
)
from otaship.receiver.settings import DEFAULT_REBOOT_LOOP_BOOTS

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def started(last_uptime: float, last_seen: float) -> DeviceProgress:
    """A device on 1.0.0 whose last status (uptime `last_uptime`, at `last_seen`)
    came before its 201."""
    return after_response(
        initial_progress("1.0.0", "1.1.0"),
        code=201,
        last_uptime=last_uptime,
        last_boot=boot_time(at(last_seen), last_uptime),
    )


def status(p: DeviceProgress, version: str, uptime: float, when: float) -> DeviceProgress:
    return after_status(p, fw_version=version, uptime=uptime, deployed="1.1.0", at=at(when))


def test_a_device_that_reported_uptime_0_just_before_its_201_is_seen_to_reboot() -> None:
    """The old rule compared uptimes: nothing is below 0, so the revert was never seen."""
    p = started(last_uptime=0, last_seen=100)
    p = status(p, "1.0.0", 4, 104)  # downloading: the same boot
    assert p.outcome == Outcome.PENDING
    p = status(p, "1.0.0", 1, 140)  # booted at 139: back on the old version
    assert (p.outcome, p.reason) == (Outcome.FAILED, "reverted")


def test_the_same_boot_seen_with_some_jitter_is_not_a_reboot() -> None:
    p = started(last_uptime=500, last_seen=1000)  # booted at 500
    for uptime, when in ((503, 1004), (520, 1019), (530, 1033)):
        p = status(p, "1.0.0", uptime, when)
        assert p.outcome == Outcome.PENDING, (uptime, when)


def test_without_report_times_the_uptime_rule_still_holds() -> None:
    p = after_response(initial_progress("1.0.0", "1.1.0"), code=201, last_uptime=100)
    p = after_status(p, fw_version="1.0.0", uptime=105, deployed="1.1.0")
    assert p.outcome == Outcome.PENDING
    p = after_status(p, fw_version="1.0.0", uptime=3, deployed="1.1.0")
    assert (p.outcome, p.reason) == (Outcome.FAILED, "reverted")


def test_a_receiver_that_missed_the_baseline_takes_the_first_status_after_the_201() -> None:
    p = after_response(initial_progress("1.0.0", "1.1.0"), code=201, last_uptime=None)
    p = status(p, "1.0.0", 50, 60)  # booted at 10: the baseline
    assert (p.outcome, p.boot_at_start) == (Outcome.PENDING, at(10))
    p = status(p, "1.0.0", 2, 90)
    assert (p.outcome, p.reason) == (Outcome.FAILED, "reverted")


def announced(last_boot: float | None, when: float) -> DeviceProgress:
    """A device on 1.0.0 whose 201 came `when`, taken by a worker that knew
    `last_boot` (None: no status of it) as its last boot."""
    return after_response(
        initial_progress("1.0.0", "1.1.0"),
        code=201,
        last_uptime=None,
        last_boot=None if last_boot is None else at(last_boot),
        at=at(when),
    )


def test_a_worker_that_knew_no_boot_still_sees_the_device_come_back_on_the_old_version() -> None:
    """Before, the first status after the 201 became the baseline: when that
    was the reverted boot's, the device was never failed, and its wave waited
    for its timeout instead of halting (and rolling back)."""
    p = announced(None, 100)
    p = status(p, "1.0.0", 1, 103)  # booted at 102, after its 201: reverted
    assert (p.outcome, p.reason) == (Outcome.FAILED, "reverted")


def test_a_boot_older_than_the_device_s_last_one_does_not_make_a_reboot_of_it() -> None:
    """This worker saw the boot at 10; another worker saw the device boot again
    at 50, long before its 201. That boot is no revert."""
    p = announced(10, 100)
    p = status(p, "1.0.0", 54, 104)  # booted at 50: the boot it announced from
    assert p.outcome == Outcome.PENDING
    p = status(p, "1.0.0", 2, 130)  # booted at 128: reverted
    assert (p.outcome, p.reason) == (Outcome.FAILED, "reverted")


def test_a_status_stored_before_the_201_it_followed_is_not_the_baseline() -> None:
    p = announced(102, 100)  # the reverted boot's status overtook the 201
    p = status(p, "1.0.0", 3, 105)
    assert (p.outcome, p.reason) == (Outcome.FAILED, "reverted")


@pytest.mark.parametrize("known", [None, 0, 60, 97, 120])
@pytest.mark.parametrize("boot", [40, 96, 99, 101, 103, 130])
def test_the_baseline_against_the_rule_stated_plainly(known: float | None, boot: float) -> None:
    """The 201 comes at 100. The baseline is the boot this worker knew from
    before it, but never earlier than 95 (the 201 less the jitter); a boot
    known from after the 201 is none. A reboot is a boot more than the jitter
    (5 s) after the baseline."""
    p = status(announced(known, 100), "1.0.0", 2, boot + 2)
    baseline = 95 if known is None or known > 100 else max(known, 95)
    assert p.outcome == (Outcome.FAILED if boot > baseline + 5 else Outcome.PENDING), (known, boot)
    # The same, said as what it means: a boot before the 201 is never a
    # reboot; one after it is, unless it is within the jitter of the known boot.
    known_before = known is not None and known <= 100
    if boot <= 100:
        assert p.outcome == Outcome.PENDING
    elif not known_before or boot > known + 5:  # type: ignore[operator]
        assert p.outcome == Outcome.FAILED


def looping(limit: int | None) -> list[DeviceProgress]:
    """A device that boots into 1.1.0, then boots again every 20 s: its
    progress after each of those boots, judged with `limit` (None: the default)."""
    chosen = {} if limit is None else {"reboot_loop_boots": limit}
    p = started(last_uptime=10, last_seen=10)
    p = after_status(p, fw_version="1.1.0", uptime=1, deployed="1.1.0", at=at(30), **chosen)
    assert (p.outcome, p.reboots) == (Outcome.SUCCEEDED, 0)  # its boot into the new version
    p = after_status(p, fw_version="1.1.0", uptime=6, deployed="1.1.0", at=at(35), **chosen)
    assert p.reboots == 0  # the same boot
    seen = []
    for boot in range(1, 12):
        p = after_status(p, fw_version="1.1.0", uptime=1, deployed="1.1.0", at=at(35 + 20 * boot), **chosen)
        seen.append(p)
    return seen


@pytest.mark.parametrize("limit", [None, 1, 3, 10])
def test_more_than_k_boots_on_the_new_version_is_a_reboot_loop(limit: int | None) -> None:
    k = DEFAULT_REBOOT_LOOP_BOOTS if limit is None else limit
    seen = looping(limit)
    for boots, p in enumerate(seen[:k], start=1):
        assert (p.outcome, p.reason, p.reboots) == (Outcome.SUCCEEDED, None, boots)
    # Boot k + 1 fails it; later boots leave it failed, counted no further.
    for p in seen[k:]:
        assert (p.outcome, p.reason, p.reboots) == (Outcome.FAILED, "reboot-loop", k + 1)


def test_the_default_is_three() -> None:
    assert DEFAULT_REBOOT_LOOP_BOOTS == 3


def test_each_failure_records_its_signal() -> None:
    assert after_response(initial_progress("1.0.0", "1.1.0"), code=203, last_uptime=None).reason == "code"
    ran_out = at_stage_end(DeviceProgress(outcome=Outcome.PENDING), time_ran_out=True)
    assert (ran_out.outcome, ran_out.reason) == (Outcome.TIMED_OUT, "timeout")
    stopped = at_stage_end(DeviceProgress(outcome=Outcome.PENDING), time_ran_out=False)
    assert (stopped.outcome, stopped.reason) == (Outcome.STOPPED, None)
    # Success later clears the reason of a failure.
    failed = DeviceProgress(outcome=Outcome.FAILED, reason="code", started_update=True)
    assert after_status(failed, fw_version="1.1.0", uptime=1, deployed="1.1.0").reason is None
