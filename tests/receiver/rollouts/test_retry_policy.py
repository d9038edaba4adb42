"""The pure retry decisions: when a failed device's group trigger goes out again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from otaship.receiver.db.enums import Outcome
from otaship.receiver.rollouts.policy import (
    CODE,
    DARK,
    FINISH,
    HALT,
    MAX_BACKOFF,
    REBOOT_LOOP,
    RETRIGGER,
    REVERTED,
    SCHEDULE,
    WAIT,
    Counts,
    DeviceProgress,
    Policy,
    RetryFacts,
    RetryPolicy,
    after_response,
    after_status,
    at_stage_end,
    decide_canary,
    decide_fleet,
    retry_delay,
    retry_step,
)
from otaship.receiver.settings import Settings, SettingsError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(attempts=3, backoff=10, dark_after=300)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def facts(
    outcome: str,
    *,
    retries: int = 0,
    started: bool = False,
    retry_at: datetime | None = None,
    reason: str | None = None,
) -> RetryFacts:
    return RetryFacts(Outcome(outcome), started, T0, retries, retry_at, reason)


def test_the_backoff_doubles_and_is_capped() -> None:
    assert [retry_delay(POLICY, n).total_seconds() for n in range(4)] == [10, 20, 40, 80]
    assert retry_delay(POLICY, 30) == MAX_BACKOFF


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_a_failed_device_with_attempts_left_is_scheduled_after_its_backoff(retries: int) -> None:
    now = later(5)
    assert retry_step(facts(Outcome.FAILED, retries=retries), POLICY, now) == (
        SCHEDULE,
        now + timedelta(seconds=10 * 2**retries),
    )


def test_a_device_that_failed_its_last_attempt_stays_failed() -> None:
    assert retry_step(facts(Outcome.FAILED, retries=3), POLICY, later(5)) is None
    assert retry_step(facts(Outcome.FAILED), RetryPolicy(attempts=0), later(5)) is None


@pytest.mark.parametrize("reason", [None, CODE, REVERTED, DARK, REBOOT_LOOP])
def test_every_failure_but_a_reboot_loop_is_retried(reason: str | None) -> None:
    """A device in a reboot loop runs the version already: a retry would only
    see it report the version between two crashes, and call that a success."""
    step = retry_step(facts(Outcome.FAILED, reason=reason), POLICY, later(5))
    assert step == (None if reason == REBOOT_LOOP else (SCHEDULE, later(15)))


@pytest.mark.parametrize("rollback", [False, True])
@pytest.mark.parametrize("reason", [None, CODE, REVERTED, DARK])
@pytest.mark.parametrize("retries", [0, 1, 2])
def test_a_rollback_device_that_missed_its_trigger_while_flashing_is_retried_at_once(
    rollback: bool, reason: str | None, retries: int
) -> None:
    """In a rollback, `reverted` means the device booted into the version rolled
    back from: it was flashing it when its wave's trigger came. Idle now, its
    first retry goes out at once; every other failure waits its backoff."""
    failed = RetryFacts(Outcome.FAILED, False, T0, retries, None, reason, rollback=rollback)
    at_once = rollback and reason == REVERTED and retries == 0
    expected = later(5) if at_once else later(5) + timedelta(seconds=10 * 2**retries)
    assert retry_step(failed, POLICY, later(5)) == (SCHEDULE, expected)


def test_a_retry_is_due_at_its_time_and_not_before() -> None:
    waiting = facts(Outcome.RETRYING, retry_at=later(10))
    assert retry_step(waiting, POLICY, later(9.999)) is None
    assert retry_step(waiting, POLICY, later(10)) == (RETRIGGER, None)
    assert retry_step(facts(Outcome.RETRYING, retry_at=None), POLICY, T0) == (RETRIGGER, None)


def test_a_device_silent_after_its_201_counts_as_failed_once_dark_after_passed() -> None:
    started = facts(Outcome.PENDING, started=True)
    assert retry_step(started, POLICY, later(299)) is None
    assert retry_step(started, POLICY, later(300)) == (SCHEDULE, later(310))
    # Only after a 201: a device that has not answered yet is just pending.
    assert retry_step(facts(Outcome.PENDING), POLICY, later(3600)) is None
    # Dark on its last attempt: pending until the stage's time runs out.
    assert retry_step(facts(Outcome.PENDING, started=True, retries=3), POLICY, later(3600)) is None


def test_the_dark_window_allows_for_the_image_download_at_the_slowest_rate() -> None:
    policy = RetryPolicy(dark_after=15, download_rate=16 * 1024)
    assert policy.dark_window == timedelta(seconds=15)
    # 1.5 MiB at 16 KiB/s: 96 s of download before the 15 s of silence.
    sized = policy.for_image(1536 * 1024)
    assert sized.dark_window == timedelta(seconds=111)
    # Set, not added: a policy made for one image and then another has the second's.
    assert sized.for_image(16 * 1024).dark_window == timedelta(seconds=16)
    started = facts(Outcome.PENDING, started=True)
    assert retry_step(started, sized, later(110.9)) is None
    assert retry_step(started, sized, later(111)) == (SCHEDULE, later(111 + 60))
    assert retry_step(started, policy, later(15)) == (SCHEDULE, later(15 + 60))


@pytest.mark.parametrize("outcome", [Outcome.SUCCEEDED, Outcome.TIMED_OUT, Outcome.STOPPED])
def test_finished_devices_are_never_retried(outcome: str) -> None:
    assert retry_step(facts(outcome, started=True), POLICY, later(3600)) is None


def test_reports_while_waiting_for_a_retry() -> None:
    waiting = DeviceProgress(Outcome.RETRYING, True, 50.0, "1.0.0", 203)
    # Another 203 changes nothing but the code; the retry is already planned.
    assert after_response(waiting, code=203, last_uptime=60) == waiting
    assert after_response(waiting, code=201, last_uptime=60).outcome == Outcome.RETRYING
    # Another version is no new failure; the deployed one is a success.
    assert after_status(waiting, fw_version="1.0.0", uptime=1, deployed="1.1.0") == waiting
    assert after_status(waiting, fw_version="1.1.0", uptime=1, deployed="1.1.0").outcome == Outcome.SUCCEEDED


@pytest.mark.parametrize("time_ran_out", [False, True])
def test_a_device_still_waiting_for_its_retry_at_the_stage_end_failed(time_ran_out: bool) -> None:
    waiting = DeviceProgress(Outcome.RETRYING, False, None, "1.0.0", 203)
    assert at_stage_end(waiting, time_ran_out=time_ran_out) == DeviceProgress(
        Outcome.FAILED, False, None, "1.0.0", 203
    )


def test_the_canary_counts_a_device_waiting_for_a_retry_as_a_failure() -> None:
    policy = Policy(error_threshold=0)
    counts = Counts(targeted=2, succeeded=1, retrying=1)
    assert counts.pending == 0
    assert decide_canary(policy, counts, now=later(1), started_at=T0, healthy_at=None).action == HALT
    # Tolerated, it can still reach a threshold of 1: it is retried.
    tolerant = Policy(error_threshold=1)
    assert decide_canary(tolerant, counts, now=later(1), started_at=T0, healthy_at=None).action == WAIT


def test_the_fleet_stage_waits_for_its_retries() -> None:
    policy = Policy(canary_timeout=60)
    counts = Counts(targeted=3, succeeded=2, retrying=1)
    assert decide_fleet(policy, counts, now=later(1), started_at=T0).action == WAIT
    timed_out = decide_fleet(policy, counts, now=later(60), started_at=T0)
    assert timed_out.action == FINISH
    assert timed_out.reason == "fleet stage timed out with 1 device(s) pending"
    assert Counts.of([Outcome.SUCCEEDED, Outcome.RETRYING, Outcome.FAILED]) == Counts(
        targeted=3, succeeded=1, failed=1, retrying=1
    )


def test_the_retry_settings_default_and_bounds() -> None:
    defaults = Settings.from_env({})
    assert (
        defaults.trigger_retries,
        defaults.trigger_retry_backoff,
        defaults.trigger_dark_after,
        defaults.trigger_download_rate,
    ) == (3, 60, 15, 16384)
    custom = Settings.from_env(
        {
            "OTASHIP_TRIGGER_RETRIES": "10",
            "OTASHIP_TRIGGER_RETRY_BACKOFF": "5",
            "OTASHIP_TRIGGER_DARK_AFTER": "90",
            "OTASHIP_TRIGGER_DOWNLOAD_RATE": "100000",
        }
    )
    assert (
        custom.trigger_retries,
        custom.trigger_retry_backoff,
        custom.trigger_dark_after,
        custom.trigger_download_rate,
    ) == (10, 5, 90, 100000)
    assert Settings.from_env({"OTASHIP_TRIGGER_RETRIES": "0"}).trigger_retries == 0
    for name, value, says in (
        ("OTASHIP_TRIGGER_RETRIES", "11", "OTASHIP_TRIGGER_RETRIES must be at most 10, not 11"),
        ("OTASHIP_TRIGGER_RETRIES", "-1", "OTASHIP_TRIGGER_RETRIES must be at least 0, not -1"),
        ("OTASHIP_TRIGGER_RETRY_BACKOFF", "0", "OTASHIP_TRIGGER_RETRY_BACKOFF must be at least 1, not 0"),
        (
            "OTASHIP_TRIGGER_DARK_AFTER",
            "soon",
            "OTASHIP_TRIGGER_DARK_AFTER must be a whole number, not 'soon'",
        ),
        ("OTASHIP_TRIGGER_DOWNLOAD_RATE", "0", "OTASHIP_TRIGGER_DOWNLOAD_RATE must be at least 1, not 0"),
    ):
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({name: value})
        assert str(refused.value) == says


def test_the_reboot_loop_setting_defaults_to_3_and_is_bounded() -> None:
    assert Settings.from_env({}).reboot_loop_boots == 3
    assert Settings.from_env({"OTASHIP_REBOOT_LOOP_BOOTS": " "}).reboot_loop_boots == 3
    for value in ("1", "10", "1000"):
        assert Settings.from_env({"OTASHIP_REBOOT_LOOP_BOOTS": value}).reboot_loop_boots == int(value)
    for value, says in (
        ("0", "OTASHIP_REBOOT_LOOP_BOOTS must be at least 1, not 0"),
        ("1001", "OTASHIP_REBOOT_LOOP_BOOTS must be at most 1000, not 1001"),
        ("three", "OTASHIP_REBOOT_LOOP_BOOTS must be a whole number, not 'three'"),
    ):
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({"OTASHIP_REBOOT_LOOP_BOOTS": value})
        assert str(refused.value) == says
