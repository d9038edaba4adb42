"""The wave rules as pure functions, checked against a second, plain statement
of each: the failure rate with its minimum sample, which wave's devices are
still judged, the clock after a pause, and how messages name a wave."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from otaship.receiver.db.enums import Stage, State
from otaship.receiver.rollouts.policy import (
    HALT,
    PROMOTE,
    WAIT,
    Counts,
    Policy,
    PolicyError,
    decide_canary,
    failure_rate_exceeded,
    resumed,
    stage_is_open,
    validate_policy,
    wave_label,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def plain_rate_halts(rate: float | None, min_devices: int, succeeded: int, failed: int) -> bool:
    """AWS's abort criterion, said plainly: with at least `min_devices`
    finished, halt when failed / finished > rate."""
    if rate is None:
        return False
    finished = succeeded + failed
    return finished >= min_devices and finished > 0 and failed / finished > rate


@pytest.mark.parametrize(
    ("rate", "min_devices"), list(itertools.product([None, 0.0, 0.1, 0.25, 0.5, 0.99], [1, 2, 5, 10]))
)
def test_the_failure_rate_halts_only_past_its_minimum_sample(rate: float | None, min_devices: int) -> None:
    policy = Policy(max_failure_rate=rate, min_devices=min_devices)
    for succeeded, failed, timed_out, retrying in itertools.product(range(8), range(6), range(2), range(2)):
        counts = Counts(20, succeeded, failed, timed_out, 0, retrying)
        failures = failed + timed_out + retrying
        expected = plain_rate_halts(rate, min_devices, succeeded, failures)
        assert (failure_rate_exceeded(policy, counts) is not None) is expected, counts


def test_the_failure_rate_message_gives_the_share_and_the_sample() -> None:
    policy = Policy(max_failure_rate=0.2, min_devices=4)
    assert failure_rate_exceeded(policy, Counts(10, 3, 1)) == (
        "1 of 4 finished device(s) failed, over max_failure_rate 0.2 (min_devices 4)"
    )


def test_a_wave_halts_on_its_failure_rate_even_when_its_errors_are_tolerated() -> None:
    policy = Policy(error_threshold=10, success_threshold=0.5, max_failure_rate=0.3, min_devices=3)
    # Two of three finished failed: 0.67 > 0.3, with 3 finished.
    decision = decide_canary(
        policy, Counts(10, 1, 2), now=later(1), started_at=T0, healthy_at=None, label="wave 2"
    )
    assert (decision.action, decision.reason) == (
        HALT,
        "wave 2: 2 of 3 finished device(s) failed, over max_failure_rate 0.3 (min_devices 3)",
    )
    # One of two: the sample is too small yet.
    assert (
        decide_canary(policy, Counts(10, 1, 1), now=later(1), started_at=T0, healthy_at=None).action == WAIT
    )
    # One of five: 0.2 is within the rate; enough succeeded, so the wave passes.
    decision = decide_canary(policy, Counts(10, 5, 1), now=later(1), started_at=T0, healthy_at=None)
    assert decision.action == PROMOTE


def test_messages_name_the_wave() -> None:
    assert [wave_label(p) for p in range(3)] == ["canary", "wave 2", "wave 3"]
    policy = Policy()
    halt = decide_canary(
        policy, Counts(2, 0, 1), now=later(1), started_at=T0, healthy_at=None, label="wave 3"
    )
    assert halt.reason == "1 wave 3 device(s) failed; error_threshold tolerates 0"
    passed = decide_canary(policy, Counts(2, 2), now=later(1), started_at=T0, healthy_at=None, label="wave 3")
    assert passed.reason == "wave 3 healthy: 2/2 succeeded"


def plain_is_open(state: State, stage: Stage, wave: int | None, current: int) -> bool:
    """Only the stage that runs, and in the canary stage only the wave that runs."""
    if state == State.CANARY:
        return stage == Stage.CANARY and (wave is None or wave == current)
    if state == State.FLEET:
        return stage == Stage.FLEET
    return False


def test_only_the_running_wave_of_the_canary_stage_is_open() -> None:
    for state, stage, wave, current in itertools.product(
        State, (Stage.CANARY, Stage.FLEET), (None, 0, 1, 2), (0, 1, 2)
    ):
        assert stage_is_open(state, stage, wave=wave, current_wave=current) is plain_is_open(
            state, stage, wave, current
        ), (state, stage, wave, current)


@pytest.mark.parametrize("pause", [0, 1, 59, 3600])
def test_a_pause_moves_the_clock_on_by_its_length(pause: float) -> None:
    policy_timeout = 60
    started, healthy = later(0), later(10)
    paused_at, now = later(20), later(20 + pause)
    assert resumed(started, paused_at=paused_at, now=now) == later(pause)
    assert resumed(healthy, paused_at=paused_at, now=now) == later(10 + pause)
    assert resumed(None, paused_at=paused_at, now=now) is None
    # The stage had 40 s left when paused, and has them again when it resumes.
    new_start = resumed(started, paused_at=paused_at, now=now)
    assert new_start is not None
    assert new_start + timedelta(seconds=policy_timeout) - now == timedelta(seconds=40)


def test_a_clock_that_went_backwards_does_not_move_a_stored_time_back() -> None:
    assert resumed(later(5), paused_at=later(20), now=later(10)) == later(5)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (Policy(max_failure_rate=1.0), "max_failure_rate must be a fraction in [0, 1)"),
        (Policy(max_failure_rate=-0.1), "max_failure_rate must be a fraction in [0, 1)"),
        (Policy(min_devices=0), "min_devices must be 1 or more"),
    ],
)
def test_the_failure_rate_settings_are_checked(policy: Policy, message: str) -> None:
    with pytest.raises(
        PolicyError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        validate_policy(policy)
