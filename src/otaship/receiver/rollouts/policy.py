"""Rollout decisions, as pure functions: no I/O, no clock of their own.

A rollout deploys to the canary subgroup, watches what its devices report,
and then either promotes the same image to the whole group or halts. Every
decision here takes the facts (counts, stored timestamps, `now`) and returns
what to do, so a restarted receiver, or another replica, reaches the same
answer from the same database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from otaship.protocol import ResponseCode
from otaship.receiver.db.enums import Outcome, Stage, State

ACTIVE_STATES = (State.CANARY, State.FLEET)


@dataclass(frozen=True)
class Policy:
    success_threshold: float = 1.0
    error_threshold: int = 0
    canary_timeout: int = 1800
    soak: int = 0
    auto_promote: bool = True


class PolicyError(ValueError):
    """A rollout parameter is out of range; the message names it."""


def validate_policy(policy: Policy) -> Policy:
    if not (0 < policy.success_threshold <= 1):
        raise PolicyError("success_threshold must be a fraction in (0, 1]")
    if policy.error_threshold < 0:
        raise PolicyError("error_threshold must be 0 or more")
    if policy.canary_timeout <= 0:
        raise PolicyError("canary_timeout must be a positive number of seconds")
    if policy.soak < 0:
        raise PolicyError("soak must be 0 or more seconds")
    return policy


# --- devices ------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceProgress:
    outcome: Outcome = Outcome.PENDING
    started_update: bool = False
    uptime_at_start: float | None = None
    fw_version: str | None = None
    code: int | None = None


def initial_progress(running: str | None, deployed: str) -> DeviceProgress:
    """A device already on the deployed version has succeeded at once."""
    return DeviceProgress(
        outcome=Outcome.SUCCEEDED if running == deployed else Outcome.PENDING, fw_version=running
    )


def after_status(
    progress: DeviceProgress, *, fw_version: str, uptime: float | None, deployed: str
) -> DeviceProgress:
    """A status report: success on the deployed version; failure when the device
    comes back (rebooted) on another version after announcing its update."""
    if progress.outcome in (Outcome.SUCCEEDED, Outcome.TIMED_OUT, Outcome.STOPPED):
        return replace(progress, fw_version=fw_version)
    if fw_version == deployed:
        return replace(progress, outcome=Outcome.SUCCEEDED, fw_version=fw_version)
    if not progress.started_update or progress.outcome in (Outcome.FAILED, Outcome.RETRYING):
        return replace(progress, fw_version=fw_version)
    if uptime is not None and progress.uptime_at_start is None:
        # We did not see its uptime before the 201 (say, the receiver restarted):
        # this report becomes the baseline a reboot is measured against.
        return replace(progress, fw_version=fw_version, uptime_at_start=uptime)
    # Status keeps flowing while the image downloads, so another version only
    # means failure once the device has rebooted (its uptime went back down).
    rebooted = uptime is None or (progress.uptime_at_start is not None and uptime < progress.uptime_at_start)
    if rebooted:
        return replace(progress, outcome=Outcome.FAILED, fw_version=fw_version)
    return replace(progress, fw_version=fw_version)


def after_response(progress: DeviceProgress, *, code: int, last_uptime: float | None) -> DeviceProgress:
    if progress.outcome in (Outcome.SUCCEEDED, Outcome.TIMED_OUT, Outcome.STOPPED):
        return replace(progress, code=code)
    if code == ResponseCode.ERROR:
        # One awaiting its retry stays so: the retry is already planned.
        outcome = Outcome.RETRYING if progress.outcome == Outcome.RETRYING else Outcome.FAILED
        return replace(progress, outcome=outcome, code=code)
    if code == ResponseCode.UPDATE_STARTING and progress.outcome == Outcome.PENDING:
        return replace(progress, started_update=True, uptime_at_start=last_uptime, code=code)
    return replace(progress, code=code)


def at_stage_end(progress: DeviceProgress, *, time_ran_out: bool) -> DeviceProgress:
    """A device that had not finished when its stage ended: it timed out only if
    the stage's time really ran out; otherwise it was stopped. One still
    awaiting a retry failed: its last code says how."""
    if progress.outcome == Outcome.RETRYING:
        return replace(progress, outcome=Outcome.FAILED)
    if progress.outcome != Outcome.PENDING:
        return progress
    return replace(progress, outcome=Outcome.TIMED_OUT if time_ran_out else Outcome.STOPPED)


def after_stage_closed(
    progress: DeviceProgress, *, fw_version: str | None = None, code: int | None = None
) -> DeviceProgress:
    """A report for a device whose stage has ended: its outcome stays what the
    stage decided, but what it runs (and last answered) is still recorded, so
    the rollout shows where the fleet really stands after a halt or abort."""
    if fw_version is not None:
        progress = replace(progress, fw_version=fw_version)
    if code is not None:
        progress = replace(progress, code=code)
    return progress


def stage_is_open(state: State, stage: Stage) -> bool:
    """Whether a rollout in `state` is still deciding the outcomes of `stage`
    (its stages are named after the states that run them)."""
    return state.value == stage.value


def stage_time_ran_out(policy: Policy, *, started_at: datetime, now: datetime) -> bool:
    """Each stage has `canary_timeout` seconds."""
    return now >= started_at + timedelta(seconds=policy.canary_timeout)


# --- retries ------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How a device that failed is reached again: its group's trigger is
    published again, up to `attempts` times, `backoff` seconds after the
    failure and twice as long before each next one (at most `MAX_BACKOFF`).
    A device that announced its update (201) and reported nothing decisive
    for `dark_after` seconds counts as failed."""

    attempts: int = 3
    backoff: float = 60.0
    dark_after: float = 600.0


# AWS IoT Jobs allows up to 10 retries of a job execution.
MAX_RETRIES = 10
MAX_BACKOFF = timedelta(hours=1)

# What the retry step does with one device.
SCHEDULE = "schedule"
RETRIGGER = "retrigger"


@dataclass(frozen=True)
class RetryFacts:
    """One device in a stage that is running, as the retry step sees it."""

    outcome: Outcome
    started_update: bool
    updated_at: datetime
    retries: int
    retry_at: datetime | None


def retry_delay(policy: RetryPolicy, retries: int) -> timedelta:
    """The wait before retry number `retries + 1`: `backoff`, doubled each time."""
    return min(timedelta(seconds=policy.backoff * 2 ** min(retries, 20)), MAX_BACKOFF)


def went_dark(facts: RetryFacts, policy: RetryPolicy, now: datetime) -> bool:
    return (
        facts.outcome == Outcome.PENDING
        and facts.started_update
        and now - facts.updated_at >= timedelta(seconds=policy.dark_after)
    )


def retry_step(facts: RetryFacts, policy: RetryPolicy, now: datetime) -> tuple[str, datetime | None] | None:
    """What to do with one device: SCHEDULE a retry (with its time) for one
    that failed or went dark and has attempts left, RETRIGGER one whose retry
    is due, or None. A device that fails its last attempt stays failed, with
    its last code; one that goes dark on its last stays pending until the
    stage's time runs out."""
    if facts.outcome == Outcome.RETRYING:
        if facts.retry_at is None or facts.retry_at <= now:
            return (RETRIGGER, None)
        return None
    failed = facts.outcome == Outcome.FAILED or went_dark(facts, policy, now)
    if failed and facts.retries < policy.attempts:
        return (SCHEDULE, now + retry_delay(policy, facts.retries))
    return None


# --- stages -------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    targeted: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    stopped: int = 0
    # Failed, and waiting for their group's trigger to be published again.
    retrying: int = 0

    @property
    def pending(self) -> int:
        return self.targeted - self.succeeded - self.failed - self.timed_out - self.stopped - self.retrying

    @classmethod
    def of(cls, outcomes: list[Outcome]) -> Counts:
        return cls(
            targeted=len(outcomes),
            succeeded=outcomes.count(Outcome.SUCCEEDED),
            failed=outcomes.count(Outcome.FAILED),
            timed_out=outcomes.count(Outcome.TIMED_OUT),
            stopped=outcomes.count(Outcome.STOPPED),
            retrying=outcomes.count(Outcome.RETRYING),
        )


def required_successes(targeted: int, threshold: float) -> int:
    # The small epsilon keeps 0.3 * 10 from becoming 4 through float error.
    return max(1, math.ceil(threshold * targeted - 1e-9)) if targeted else 0


# Decision actions.
WAIT = "wait"
PROMOTE = "promote"
AWAIT_PROMOTION = "await_promotion"
HALT = "halt"
FINISH = "complete"


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str | None = None
    # When the canary first met its threshold (to be stored); None if not yet.
    healthy_at: datetime | None = None


def decide_canary(
    policy: Policy, counts: Counts, *, now: datetime, started_at: datetime, healthy_at: datetime | None
) -> Decision:
    needed = required_successes(counts.targeted, policy.success_threshold)
    # The canary judges the image: a failure counts at once, retried or not.
    failures = counts.failed + counts.timed_out + counts.retrying
    if failures > policy.error_threshold:
        return Decision(
            HALT,
            f"{failures} canary device(s) failed; error_threshold tolerates {policy.error_threshold}",
            healthy_at,
        )
    if counts.succeeded >= needed and counts.targeted > 0:
        healthy_at = healthy_at or now
        if now < healthy_at + timedelta(seconds=policy.soak):
            return Decision(WAIT, None, healthy_at)
        if policy.auto_promote:
            return Decision(
                PROMOTE, f"canary healthy: {counts.succeeded}/{counts.targeted} succeeded", healthy_at
            )
        return Decision(AWAIT_PROMOTION, "canary healthy; waiting for a promote", healthy_at)
    if counts.succeeded + counts.pending + counts.retrying < needed:
        return Decision(
            HALT,
            f"canary can no longer reach its threshold: {counts.succeeded} succeeded, "
            f"{failures} failed, {needed} of {counts.targeted} needed",
            healthy_at,
        )
    if stage_time_ran_out(policy, started_at=started_at, now=now):
        return Decision(
            HALT,
            f"canary timed out after {policy.canary_timeout} s: {counts.succeeded} of "
            f"{counts.targeted} succeeded, {needed} needed",
            healthy_at,
        )
    return Decision(WAIT, None, healthy_at)


def decide_fleet(policy: Policy, counts: Counts, *, now: datetime, started_at: datetime) -> Decision:
    if counts.pending == 0 and counts.retrying == 0:
        return Decision(FINISH, f"all {counts.targeted} device(s) reported")
    if stage_time_ran_out(policy, started_at=started_at, now=now):
        return Decision(
            FINISH, f"fleet stage timed out with {counts.pending + counts.retrying} device(s) pending"
        )
    return Decision(WAIT)


# --- supersede and the promotion check ---------------------------------------


def supersedes(rollout_group: str, changed: Iterable[str], parents: Mapping[str, str | None]) -> bool:
    """Whether a deploy that changed the effective firmware of the `changed`
    groups supersedes a rollout of `rollout_group`.

    The rollout's stages cover its group and every group below it (the canary
    is one of those), so it is superseded when a changed group is its group or
    lies below it. `parents` maps each group to its parent, as far up as needed.
    """
    for group in changed:
        seen: set[str] = set()
        current: str | None = group
        while current is not None and current not in seen:
            if current == rollout_group:
                return True
            seen.add(current)
            current = parents.get(current)
    return False


def superseded_reason(deployment_id: str, version: str, group_id: str, rollout_id: str | None) -> str:
    reason = f"superseded by deployment {deployment_id} of {version} to group {group_id}"
    return reason + (f" (rollout {rollout_id})" if rollout_id else "")


@dataclass(frozen=True)
class Running:
    """A group's effective firmware: the deploy it came from, and its bytes.

    `deployment_id` is None when no deploy record matches (the OTA was written
    some other way); `version` is for messages only."""

    deployment_id: str | None
    sha256: str
    version: str

    @property
    def identity(self) -> tuple[str | None, str]:
        return (self.deployment_id, self.sha256)


def promotion_refusal(started_over: Running | None, now_running: Running | None) -> str | None:
    """Why a promotion must not deploy, or None when the group still runs what
    it ran when the rollout started: a promotion never overwrites a newer OTA."""
    before = started_over.identity if started_over is not None else None
    after = now_running.identity if now_running is not None else None
    if before == after:
        return None
    was = (
        "no firmware"
        if started_over is None
        else f"deployment {started_over.deployment_id} of {started_over.version}"
    )
    runs = "has no firmware" if now_running is None else f"runs {now_running.version}"
    return (
        f"the group no longer runs what it ran when the rollout started ({was}); "
        f"it now {runs}: not promoting over it"
    )
