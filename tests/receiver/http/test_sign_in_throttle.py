"""The slowing down of failed sign-ins: pure rules, and the per-key state."""

from __future__ import annotations

import pytest

from otaship.receiver.http.sign_in_throttle import (
    FORGET_AFTER,
    FREE_FAILURES,
    MAX_WAIT,
    Failures,
    SignInThrottle,
    after_failure,
    remaining_wait,
    wait_after,
)


@pytest.mark.parametrize(
    ("failures", "wait"),
    [
        (0, 0.0),
        (1, 0.0),
        (2, 0.0),
        (3, 1.0),
        (4, 2.0),
        (5, 4.0),
        (10, 128.0),
        (11, 256.0),
        (12, MAX_WAIT),
        (99, MAX_WAIT),
    ],
)
def test_the_wait_doubles_after_the_free_failures_up_to_a_cap(failures: int, wait: float) -> None:
    assert FREE_FAILURES == 3
    assert wait_after(failures) == wait


def test_remaining_wait_counts_from_the_last_failure_and_forgets() -> None:
    assert remaining_wait(None, 100.0) == 0.0
    assert remaining_wait(Failures(4, 100.0), 100.5) == 1.5
    assert remaining_wait(Failures(4, 100.0), 102.0) == 0.0
    assert remaining_wait(Failures(20, 100.0), 100.0 + FORGET_AFTER) == 0.0


def test_a_failure_counts_on_or_starts_over_once_forgotten() -> None:
    assert after_failure(None, 5.0) == Failures(1, 5.0)
    assert after_failure(Failures(3, 5.0), 6.0) == Failures(4, 6.0)
    assert after_failure(Failures(3, 5.0), 5.0 + FORGET_AFTER) == Failures(1, 5.0 + FORGET_AFTER)


def test_the_throttle_keys_on_the_email_and_the_address() -> None:
    throttle = SignInThrottle()
    for _ in range(4):
        throttle.failed("A@example.com", "10.0.0.1", 100.0)
    # The same email from elsewhere, and the same address for another email, wait too.
    assert throttle.retry_after("a@example.com ", "10.0.0.9", 100.0) == 2
    assert throttle.retry_after("b@example.com", "10.0.0.1", 100.0) == 2
    assert throttle.retry_after("b@example.com", "10.0.0.9", 100.0) == 0
    assert throttle.retry_after("a@example.com", "10.0.0.9", 102.0) == 0
    throttle.succeeded("a@example.com")
    assert throttle.retry_after("a@example.com", "10.0.0.9", 100.0) == 0
