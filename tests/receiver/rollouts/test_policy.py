"""The pure rollout decisions, over every combination that matters."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from otaship.protocol import RESPONSE_CODES
from otaship.receiver.db.enums import Outcome, Stage, State
from otaship.receiver.rollouts.policy import (
    AWAIT_PROMOTION,
    FINISH,
    HALT,
    PROMOTE,
    WAIT,
    Counts,
    DeviceProgress,
    Policy,
    PolicyError,
    Running,
    after_response,
    after_stage_closed,
    after_status,
    at_stage_end,
    decide_canary,
    decide_fleet,
    initial_progress,
    promotion_refusal,
    required_successes,
    stage_is_open,
    stage_time_ran_out,
    superseded_reason,
    supersedes,
    validate_policy,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("targeted", "threshold", "needed"),
    [
        (0, 1.0, 0),
        (1, 1.0, 1),
        (10, 1.0, 10),
        (10, 0.3, 3),
        (10, 0.31, 4),
        (3, 0.5, 2),
        (7, 0.01, 1),
        (100, 0.9, 90),
        (1, 0.01, 1),
    ],
)
def test_required_successes(targeted: int, threshold: float, needed: int) -> None:
    assert required_successes(targeted, threshold) == needed


@pytest.mark.parametrize(
    "bad",
    [
        Policy(success_threshold=0),
        Policy(success_threshold=1.5),
        Policy(error_threshold=-1),
        Policy(canary_timeout=0),
        Policy(soak=-1),
    ],
)
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
    policy = Policy(
        success_threshold=threshold, error_threshold=errors, canary_timeout=60, soak=soak, auto_promote=auto
    )
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
            assert decision.action == brute_canary(policy, counts, later(now_s), healthy_at), (
                counts,
                now_s,
                healthy_s,
            )
            if decision.action in (PROMOTE, AWAIT_PROMOTION) or (decision.action == WAIT and healthy_at):
                assert decision.healthy_at is not None


def test_the_soak_starts_when_the_canary_first_becomes_healthy() -> None:
    policy = Policy(soak=30)
    counts = Counts(2, 2, 0, 0)
    first = decide_canary(policy, counts, now=later(5), started_at=T0, healthy_at=None)
    assert (first.action, first.healthy_at) == (WAIT, later(5))
    assert (
        decide_canary(policy, counts, now=later(34), started_at=T0, healthy_at=first.healthy_at).action
        == WAIT
    )
    assert (
        decide_canary(policy, counts, now=later(35), started_at=T0, healthy_at=first.healthy_at).action
        == PROMOTE
    )


def test_a_failure_during_the_soak_still_halts() -> None:
    decision = decide_canary(
        Policy(soak=30), Counts(2, 1, 1, 0), now=later(10), started_at=T0, healthy_at=later(5)
    )
    assert decision.action == HALT
    assert decision.reason == "1 canary device(s) failed; error_threshold tolerates 0"


def test_the_timeout_halts_short_of_the_threshold() -> None:
    decision = decide_canary(
        Policy(canary_timeout=60), Counts(3, 2, 0, 0), now=later(60), started_at=T0, healthy_at=None
    )
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
    assert initial_progress("1.1.0", "1.1.0").outcome == Outcome.SUCCEEDED
    assert initial_progress("1.0.0", "1.1.0").outcome == Outcome.PENDING
    assert initial_progress(None, "1.1.0").outcome == Outcome.PENDING


def test_device_story_success() -> None:
    p = initial_progress("1.0.0", "1.1.0")
    p = after_status(p, fw_version="1.0.0", uptime=100, deployed="1.1.0")
    p = after_response(p, code=200, last_uptime=100)
    p = after_response(p, code=201, last_uptime=100)
    assert (p.outcome, p.started_update, p.uptime_at_start) == (Outcome.PENDING, True, 100)
    # Still downloading: status keeps coming with the old version and growing uptime.
    p = after_status(p, fw_version="1.0.0", uptime=105, deployed="1.1.0")
    assert p.outcome == Outcome.PENDING
    p = after_status(p, fw_version="1.1.0", uptime=2, deployed="1.1.0")
    assert p.outcome == Outcome.SUCCEEDED


def test_device_story_boot_loop_back_to_the_old_version() -> None:
    p = after_response(initial_progress("1.0.0", "1.1.0"), code=201, last_uptime=100)
    p = after_status(p, fw_version="1.0.0", uptime=3, deployed="1.1.0")
    assert p.outcome == Outcome.FAILED


def test_device_story_error_code() -> None:
    assert (
        after_response(initial_progress("1.0.0", "1.1.0"), code=203, last_uptime=None).outcome
        == Outcome.FAILED
    )


def test_an_unknown_uptime_before_the_201_becomes_the_baseline() -> None:
    p = after_response(initial_progress("1.0.0", "1.1.0"), code=201, last_uptime=None)
    p = after_status(p, fw_version="1.0.0", uptime=50, deployed="1.1.0")
    assert (p.outcome, p.uptime_at_start) == (Outcome.PENDING, 50)
    p = after_status(p, fw_version="1.0.0", uptime=1, deployed="1.1.0")
    assert p.outcome == Outcome.FAILED


def test_a_device_without_uptime_fails_on_another_version_after_its_201() -> None:
    p = after_response(initial_progress("1.0.0", "1.1.0"), code=201, last_uptime=None)
    assert after_status(p, fw_version="1.0.0", uptime=None, deployed="1.1.0").outcome == Outcome.FAILED


def test_success_is_final_and_a_late_success_counts() -> None:
    done = DeviceProgress(outcome=Outcome.SUCCEEDED)
    assert after_response(done, code=203, last_uptime=None).outcome == Outcome.SUCCEEDED
    assert after_status(done, fw_version="0.9.0", uptime=1, deployed="1.1.0").outcome == Outcome.SUCCEEDED
    failed = DeviceProgress(outcome=Outcome.FAILED, started_update=True)
    assert after_status(failed, fw_version="1.1.0", uptime=1, deployed="1.1.0").outcome == Outcome.SUCCEEDED


def test_pending_devices_time_out_only_when_the_stage_ran_out_of_time() -> None:
    assert (
        at_stage_end(DeviceProgress(outcome=Outcome.PENDING), time_ran_out=True).outcome == Outcome.TIMED_OUT
    )
    assert (
        at_stage_end(DeviceProgress(outcome=Outcome.PENDING), time_ran_out=False).outcome == Outcome.STOPPED
    )
    for outcome, ran_out in itertools.product(
        (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.TIMED_OUT, Outcome.STOPPED), (True, False)
    ):
        assert at_stage_end(DeviceProgress(outcome=outcome), time_ran_out=ran_out).outcome == outcome


def test_stopped_is_final_while_the_stage_runs() -> None:
    stopped = DeviceProgress(outcome=Outcome.STOPPED, fw_version="1.0.0")
    assert after_status(stopped, fw_version="1.1.0", uptime=1, deployed="1.1.0") == replace(
        stopped, fw_version="1.1.0"
    )
    assert after_response(stopped, code=203, last_uptime=None) == replace(stopped, code=203)


@pytest.mark.parametrize("outcome", Outcome)
def test_a_closed_stage_only_records_what_its_devices_run(outcome: Outcome) -> None:
    """After a halt, an abort or a promotion, every report still says where the
    device is, and no report changes the outcome the stage ended with."""
    for started, uptime_at_start in itertools.product((False, True), (None, 50.0)):
        before = DeviceProgress(outcome, started, uptime_at_start, "1.0.0", 200)
        for version in ("1.0.0", "1.1.0", "0.9.0"):
            after = after_stage_closed(before, fw_version=version)
            assert after == replace(before, fw_version=version)
        for code in RESPONSE_CODES:
            assert after_stage_closed(before, code=code) == replace(before, code=code)


def test_a_stage_is_open_only_while_its_state_runs() -> None:
    open_pairs = {(state, stage) for state in State for stage in Stage if stage_is_open(state, stage)}
    # A rollback's devices are followed once the rollout rolled back (until
    # they report, or its follow time closes them: rollouts/rollback.py).
    assert open_pairs == {
        ("canary", Stage.CANARY),
        ("fleet", Stage.FLEET),
        ("rolled_back", Stage.ROLLBACK),
    }


@pytest.mark.parametrize(
    ("seconds", "ran_out"), [(0, False), (1, False), (119.999, False), (120, True), (500, True)]
)
def test_a_stage_runs_out_of_time_at_its_timeout(seconds: float, ran_out: bool) -> None:
    assert stage_time_ran_out(Policy(canary_timeout=120), started_at=T0, now=later(seconds)) is ran_out


def test_counts_keep_stopped_apart_from_failures_and_pending() -> None:
    counts = Counts.of(
        [
            Outcome.SUCCEEDED,
            Outcome.FAILED,
            Outcome.TIMED_OUT,
            Outcome.STOPPED,
            Outcome.STOPPED,
            Outcome.PENDING,
        ]
    )
    assert (
        counts.targeted,
        counts.succeeded,
        counts.failed,
        counts.timed_out,
        counts.stopped,
        counts.pending,
    ) == (6, 1, 1, 1, 2, 1)


def test_a_halt_before_the_timeout_stops_the_unfinished_canary_devices() -> None:
    """The issue's halt: canary_timeout=120, one failure after 1 s; the others
    still had 119 s and must not count as timed out."""
    policy = Policy(canary_timeout=120)
    decision = decide_canary(policy, Counts(5, 0, 1, 0), now=later(1), started_at=T0, healthy_at=None)
    assert decision.action == HALT
    ran_out = stage_time_ran_out(policy, started_at=T0, now=later(1))
    outcomes = [
        at_stage_end(DeviceProgress(outcome=o), time_ran_out=ran_out).outcome
        for o in [Outcome.FAILED] + [Outcome.PENDING] * 4
    ]
    assert Counts.of(outcomes) == Counts(targeted=5, failed=1, stopped=4)


# A forest of groups, as group -> parent: two trees and a lone group.
FOREST: dict[str, str | None] = {
    "root": None,
    "fleet": "root",
    "canary": "fleet",
    "bench": "canary",
    "rest": "fleet",
    "sibling": "root",
    "cousin": "sibling",
    "other": None,
    "lone": None,
}


def below_or_is(group: str, top: str) -> bool:
    """A second, plain statement: walk up from `group` looking for `top`."""
    chain = [group]
    while (parent := FOREST[chain[-1]]) is not None:
        chain.append(parent)
    return top in chain


def test_supersedes_exactly_the_rollouts_whose_groups_a_deploy_changed() -> None:
    groups = sorted(FOREST)
    for rollout_group in groups:
        for size in range(3):
            for changed in itertools.combinations(groups, size):
                expected = any(below_or_is(group, rollout_group) for group in changed)
                assert supersedes(rollout_group, changed, FOREST) is expected, (rollout_group, changed)


def test_supersedes_survives_a_cycle_and_an_unknown_parent() -> None:
    assert supersedes("b", ["a"], {"a": "b", "b": "a"}) is True
    assert supersedes("c", ["a"], {"a": "b", "b": "a"}) is False
    assert supersedes("x", ["a"], {"a": "missing"}) is False


def test_the_supersede_reason_names_the_deploy() -> None:
    assert superseded_reason("d1", "1.7.0", "g1", None) == "superseded by deployment d1 of 1.7.0 to group g1"
    assert superseded_reason("d2", "1.9.0", "c1", "r1") == (
        "superseded by deployment d2 of 1.9.0 to group c1 (rollout r1)"
    )


@pytest.mark.parametrize(
    ("started_over", "now_running", "reason"),
    [
        (None, None, None),
        (Running("d1", "a" * 64, "1.6.0"), Running("d1", "a" * 64, "1.6.0"), None),
        # The version is for messages only: the deploy and the bytes decide.
        (Running("d1", "a" * 64, "1.6.0"), Running("d1", "a" * 64, "?"), None),
        (
            Running("d1", "a" * 64, "1.6.0"),
            Running("d2", "b" * 64, "1.7.0"),
            "the group no longer runs what it ran when the rollout started (deployment d1 of 1.6.0); "
            "it now runs 1.7.0: not promoting over it",
        ),
        (
            Running("d1", "a" * 64, "1.6.0"),
            Running("d1", "b" * 64, "1.6.0"),
            "the group no longer runs what it ran when the rollout started (deployment d1 of 1.6.0); "
            "it now runs 1.6.0: not promoting over it",
        ),
        (
            Running("d1", "a" * 64, "1.6.0"),
            Running(None, "a" * 64, "1.6.0"),
            "the group no longer runs what it ran when the rollout started (deployment d1 of 1.6.0); "
            "it now runs 1.6.0: not promoting over it",
        ),
        (
            None,
            Running("d2", "b" * 64, "1.7.0"),
            "the group no longer runs what it ran when the rollout started (no firmware); "
            "it now runs 1.7.0: not promoting over it",
        ),
        (
            Running("d1", "a" * 64, "1.6.0"),
            None,
            "the group no longer runs what it ran when the rollout started (deployment d1 of 1.6.0); "
            "it now has no firmware: not promoting over it",
        ),
    ],
)
def test_a_promotion_is_refused_when_the_group_runs_something_else(
    started_over: Running | None, now_running: Running | None, reason: str | None
) -> None:
    assert promotion_refusal(started_over, now_running) == reason
