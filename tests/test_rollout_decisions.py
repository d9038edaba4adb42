"""The pure rollout decisions, over every combination that matters."""
from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from receiver.rollout import (
    AWAIT_PROMOTION,
    FAILED,
    FINISH,
    HALT,
    PENDING,
    PROMOTE,
    SUCCEEDED,
    TIMED_OUT,
    WAIT,
    Counts,
    DeviceProgress,
    Policy,
    PolicyError,
    after_response,
    after_status,
    at_stage_end,
    decide_canary,
    decide_fleet,
    initial_progress,
    required_successes,
    validate_policy,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("targeted", "threshold", "needed"),
    [(0, 1.0, 0), (1, 1.0, 1), (10, 1.0, 10), (10, 0.3, 3), (10, 0.31, 4), (3, 0.5, 2), (7, 0.01, 1),
     (100, 0.9, 90), (1, 0.01, 1)],
)
def test_required_successes(targeted: int, threshold: float, needed: int) -> None:
    assert required_successes(targeted, threshold) == needed


@pytest.mark.parametrize("bad", [
    Policy(success_threshold=0), Policy(success_threshold=1.5), Policy(error_threshold=-1),
    Policy(canary_timeout=0), Policy(soak=-1),
])
def test_invalid_policies(bad: Policy) -> None:
    with pytest.raises(PolicyError):
        validate_policy(bad)


def brute_canary(policy: Policy, counts: Counts, now: datetime, healthy_at: datetime | None) -> str:
    """A second, deliberately plain statement of the canary rules."""
    needed = required_successes(counts.targeted, policy.success_threshold)
    if counts.failed + counts.timed_out > policy.error_threshold:
        return HALT
    if counts.targeted and counts.succeeded >= needed:
        since = healthy_at or now
        if (now - since).total_seconds() < policy.soak:
            return WAIT
        return PROMOTE if policy.auto_promote else AWAIT_PROMOTION
    if counts.succeeded + counts.pending < needed:
        return HALT
    if (now - T0).total_seconds() >= policy.canary_timeout:
        return HALT
    return WAIT


@pytest.mark.parametrize(
    ("threshold", "errors", "soak", "auto"),
    list(itertools.product([1.0, 0.5], [0, 1], [0, 30], [True, False])),
)
def test_canary_decisions_match_the_rules_for_every_count(
    threshold: float, errors: int, soak: int, auto: bool
) -> None:
    policy = Policy(success_threshold=threshold, error_threshold=errors, canary_timeout=60, soak=soak, auto_promote=auto)
    targeted = 4
    for succeeded, failed, timed_out in itertools.product(range(5), range(5), range(2)):
        if succeeded + failed + timed_out > targeted:
            continue
        counts = Counts(targeted, succeeded, failed, timed_out)
        for now_s, healthy_s in itertools.product([0, 10, 45, 59, 60, 120], [None, 0, 40]):
            healthy_at = None if healthy_s is None else later(healthy_s)
            if healthy_at is not None and healthy_at > later(now_s):
                continue
            decision = decide_canary(policy, counts, now=later(now_s), started_at=T0, healthy_at=healthy_at)
            assert decision.action == brute_canary(policy, counts, later(now_s), healthy_at), (counts, now_s, healthy_s)
            if decision.action in (PROMOTE, AWAIT_PROMOTION) or (decision.action == WAIT and healthy_at):
                assert decision.healthy_at is not None


def test_the_soak_starts_when_the_canary_first_becomes_healthy() -> None:
    policy = Policy(soak=30)
    counts = Counts(2, 2, 0, 0)
    first = decide_canary(policy, counts, now=later(5), started_at=T0, healthy_at=None)
    assert (first.action, first.healthy_at) == (WAIT, later(5))
    assert decide_canary(policy, counts, now=later(34), started_at=T0, healthy_at=first.healthy_at).action == WAIT
    assert decide_canary(policy, counts, now=later(35), started_at=T0, healthy_at=first.healthy_at).action == PROMOTE


def test_a_failure_during_the_soak_still_halts() -> None:
    decision = decide_canary(Policy(soak=30), Counts(2, 1, 1, 0), now=later(10), started_at=T0, healthy_at=later(5))
    assert decision.action == HALT
    assert decision.reason == "1 canary device(s) failed; error_threshold tolerates 0"


def test_the_timeout_halts_short_of_the_threshold() -> None:
    decision = decide_canary(Policy(canary_timeout=60), Counts(3, 2, 0, 0), now=later(60), started_at=T0, healthy_at=None)
    assert decision.action == HALT
    assert decision.reason == "canary timed out after 60 s: 2 of 3 succeeded, 3 needed"


def test_a_canary_that_cannot_reach_its_threshold_halts_at_once() -> None:
    policy = Policy(success_threshold=1.0, error_threshold=5)
    decision = decide_canary(policy, Counts(3, 1, 1, 0), now=later(1), started_at=T0, healthy_at=None)
    assert decision.action == HALT
    assert "can no longer reach" in (decision.reason or "")


@pytest.mark.parametrize(
    ("counts", "now", "action"),
    [
        (Counts(3, 3, 0, 0), 1, FINISH),
        (Counts(3, 1, 2, 0), 1, FINISH),  # failures in the fleet stage end it too: nothing pending
        (Counts(3, 2, 0, 0), 1, WAIT),
        (Counts(3, 2, 0, 0), 60, FINISH),
        (Counts(0, 0, 0, 0), 0, FINISH),
    ],
)
def test_fleet_decisions(counts: Counts, now: int, action: str) -> None:
    assert decide_fleet(Policy(canary_timeout=60), counts, now=later(now), started_at=T0).action == action


def test_a_device_already_on_the_version_has_succeeded() -> None:
    assert initial_progress("1.1.0", "1.1.0").outcome == SUCCEEDED
    assert initial_progress("1.0.0", "1.1.0").outcome == PENDING
    assert initial_progress(None, "1.1.0").outcome == PENDING


def test_device_story_success() -> None:
    p = initial_progress("1.0.0", "1.1.0")
    p = after_status(p, fw_version="1.0.0", uptime=100, deployed="1.1.0")
    p = after_response(p, code=200, last_uptime=100)
    p = after_response(p, code=201, last_uptime=100)
    assert (p.outcome, p.started_update, p.uptime_at_start) == (PENDING, True, 100)
    # Still downloading: status keeps coming with the old version and growing uptime.
    p = after_status(p, fw_version="1.0.0", uptime=105, deployed="1.1.0")
    assert p.outcome == PENDING
    p = after_status(p, fw_version="1.1.0", uptime=2, deployed="1.1.0")
    assert p.outcome == SUCCEEDED


def test_device_story_boot_loop_back_to_the_old_version() -> None:
    p = after_response(initial_progress("1.0.0", "1.1.0"), code=201, last_uptime=100)
    p = after_status(p, fw_version="1.0.0", uptime=3, deployed="1.1.0")
    assert p.outcome == FAILED


def test_device_story_error_code() -> None:
    assert after_response(initial_progress("1.0.0", "1.1.0"), code=203, last_uptime=None).outcome == FAILED


def test_an_unknown_uptime_before_the_201_becomes_the_baseline() -> None:
    p = after_response(initial_progress("1.0.0", "1.1.0"), code=201, last_uptime=None)
    p = after_status(p, fw_version="1.0.0", uptime=50, deployed="1.1.0")
    assert (p.outcome, p.uptime_at_start) == (PENDING, 50)
    p = after_status(p, fw_version="1.0.0", uptime=1, deployed="1.1.0")
    assert p.outcome == FAILED


def test_a_device_without_uptime_fails_on_another_version_after_its_201() -> None:
    p = after_response(initial_progress("1.0.0", "1.1.0"), code=201, last_uptime=None)
    assert after_status(p, fw_version="1.0.0", uptime=None, deployed="1.1.0").outcome == FAILED


def test_success_is_final_and_a_late_success_counts() -> None:
    done = DeviceProgress(outcome=SUCCEEDED)
    assert after_response(done, code=203, last_uptime=None).outcome == SUCCEEDED
    assert after_status(done, fw_version="0.9.0", uptime=1, deployed="1.1.0").outcome == SUCCEEDED
    failed = DeviceProgress(outcome=FAILED, started_update=True)
    assert after_status(failed, fw_version="1.1.0", uptime=1, deployed="1.1.0").outcome == SUCCEEDED


def test_pending_devices_time_out_at_the_end_of_a_stage() -> None:
    assert at_stage_end(DeviceProgress(outcome=PENDING)).outcome == TIMED_OUT
    for outcome in (SUCCEEDED, FAILED, TIMED_OUT):
        assert at_stage_end(DeviceProgress(outcome=outcome)).outcome == outcome
