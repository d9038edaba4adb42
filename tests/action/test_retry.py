from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from otaship.action.retry import RetryPolicy, is_retryable_status, parse_retry_after


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 599])
def test_5xx_and_429_are_retried(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [200, 201, 301, 400, 401, 403, 404, 409, 413, 422, 428, 430, 600])
def test_other_statuses_are_not_retried(status: int) -> None:
    assert not is_retryable_status(status)


def test_attempts_bound_the_retries() -> None:
    policy = RetryPolicy(attempts=3)
    assert [policy.should_retry(attempt) for attempt in (1, 2, 3, 4)] == [True, True, False, False]
    assert not RetryPolicy(attempts=1).should_retry(1)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_delays_are_jittered_under_an_exponential_capped_ceiling() -> None:
    policy = RetryPolicy(attempts=10, base_delay=1.0, max_delay=8.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (9, 8.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(300)]
        assert all(0 <= delay <= ceiling for delay in delays)
        # Jitter: not one fixed value, and spread over most of the range.
        assert max(delays) - min(delays) > ceiling * 0.8


def test_retry_after_is_a_floor_but_still_capped() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=30.0)
    rng = random.Random(1)
    assert policy.delay(1, rng, retry_after=5.0) >= 5.0
    assert policy.delay(1, rng, retry_after=3600.0) == 30.0


def test_retry_after_parses_seconds_and_dates() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
