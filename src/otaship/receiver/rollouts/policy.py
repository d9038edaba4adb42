"""Rollout decisions, as pure functions: no I/O, no clock of their own.

A rollout deploys to its first wave (the canary subgroup), watches what its
devices report, and then either promotes the same image to the next wave (and
after the last, to the whole group) or halts. Every
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
from otaship.receiver.settings import DEFAULT_REBOOT_LOOP_BOOTS

ACTIVE_STATES = (State.CANARY, State.FLEET)


@dataclass(frozen=True)
class Policy:
    success_threshold: float = 1.0
    error_threshold: int = 0
    canary_timeout: int = 1800
    soak: int = 0
    auto_promote: bool = True
    # AWS IoT Jobs' abort criterion: halt a wave once at least `min_devices`
    # of its devices finished and the failed share of those exceeds the rate.
    max_failure_rate: float | None = None
    min_devices: int = 1


# What a wave may set for itself; the rest is the rollout's.
WAVE_FIELDS = ("success_threshold", "error_threshold", "canary_timeout", "soak")


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
    if policy.max_failure_rate is not None and not (0 <= policy.max_failure_rate < 1):
        raise PolicyError("max_failure_rate must be a fraction in [0, 1)")
    if policy.min_devices < 1:
        raise PolicyError("min_devices must be 1 or more")
    return policy


def wave_label(position: int) -> str:
    """How messages name a wave: the first is the canary."""
    return "canary" if position == 0 else f"wave {position + 1}"


# --- devices ------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceProgress:
    outcome: Outcome = Outcome.PENDING
    started_update: bool = False
    uptime_at_start: float | None = None
    fw_version: str | None = None
    code: int | None = None
    # Which signal failed it (one of REASONS); kept while it awaits a retry.
    reason: str | None = None
    # When it last booted before its 201 (report time minus uptime).
    boot_at_start: datetime | None = None
    # On the new version: its latest boot seen, and the boots after the first.
    booted_at: datetime | None = None
    reboots: int = 0


# Why a device failed: its update-response code (203), back on another
# version after a reboot, silent after its 201, rebooting over and over on the
# new version, or still unfinished when its stage's time ran out.
CODE = "code"
REVERTED = "reverted"
DARK = "dark"
REBOOT_LOOP = "reboot-loop"
TIMEOUT = "timeout"
REASONS = (CODE, REVERTED, DARK, REBOOT_LOOP, TIMEOUT)


# Two boot times closer than this are one boot: uptimes and report times are
# whole seconds, and a report takes a moment to arrive.
BOOT_JITTER = timedelta(seconds=5)


def boot_time(at: datetime | None, uptime: float | None) -> datetime | None:
    """When the device booted, from a report's time and its uptime."""
    if at is None or uptime is None:
        return None
    return at - timedelta(seconds=uptime)


def booted_since(boot: datetime, before: datetime) -> bool:
    return boot > before + BOOT_JITTER


def initial_progress(running: str | None, deployed: str) -> DeviceProgress:
    """A device already on the deployed version has succeeded at once."""
    return DeviceProgress(
        outcome=Outcome.SUCCEEDED if running == deployed else Outcome.PENDING, fw_version=running
    )


def after_status(
    progress: DeviceProgress,
    *,
    fw_version: str,
    uptime: float | None,
    deployed: str,
    at: datetime | None = None,
    reboot_loop_boots: int = DEFAULT_REBOOT_LOOP_BOOTS,
) -> DeviceProgress:
    """A status report, received `at`: success on the deployed version; failure
    when the device comes back (rebooted) on another version after announcing
    its update, or when it boots again more than `reboot_loop_boots` times on
    the deployed version (OTASHIP_REBOOT_LOOP_BOOTS)."""
    boot = boot_time(at, uptime)
    if progress.outcome == Outcome.FAILED and progress.reason == REBOOT_LOOP:
        # It reports the version between two crashes: that is no recovery, and
        # it is never retried, so nothing else would fail it again.
        return replace(progress, fw_version=fw_version)
    if progress.outcome == Outcome.SUCCEEDED and fw_version == deployed and boot is not None:
        return _counted_boot(replace(progress, fw_version=fw_version), boot, reboot_loop_boots)
    if progress.outcome in (Outcome.SUCCEEDED, Outcome.TIMED_OUT, Outcome.STOPPED):
        return replace(progress, fw_version=fw_version)
    if fw_version == deployed:
        return replace(
            progress, outcome=Outcome.SUCCEEDED, fw_version=fw_version, reason=None, booted_at=boot
        )
    if not progress.started_update or progress.outcome in (Outcome.FAILED, Outcome.RETRYING):
        return replace(progress, fw_version=fw_version)
    if uptime is not None and progress.uptime_at_start is None and progress.boot_at_start is None:
        # We did not see its uptime before the 201 (say, the receiver restarted):
        # this report becomes the baseline a reboot is measured against.
        return replace(progress, fw_version=fw_version, uptime_at_start=uptime, boot_at_start=boot)
    # Status keeps flowing while the image downloads, so another version only
    # means failure once the device has rebooted: it booted after the boot
    # before its 201 (a device that reported uptime 0 just before its 201 has
    # rebooted when it boots again, which its uptime alone cannot show); with
    # no boot time to compare, its uptime went back down.
    if boot is not None and progress.boot_at_start is not None:
        rebooted = booted_since(boot, progress.boot_at_start)
    else:
        rebooted = uptime is None or (
            progress.uptime_at_start is not None and uptime < progress.uptime_at_start
        )
    if rebooted:
        return replace(progress, outcome=Outcome.FAILED, fw_version=fw_version, reason=REVERTED)
    return replace(progress, fw_version=fw_version)


def _counted_boot(progress: DeviceProgress, boot: datetime, limit: int) -> DeviceProgress:
    """A succeeded device's boot: the first is its boot into the new version;
    more than `limit` after it fail it as a reboot loop."""
    if progress.booted_at is None:
        return replace(progress, booted_at=boot)
    if not booted_since(boot, progress.booted_at):
        return progress
    reboots = progress.reboots + 1
    if reboots > limit:
        return replace(progress, booted_at=boot, reboots=reboots, outcome=Outcome.FAILED, reason=REBOOT_LOOP)
    return replace(progress, booted_at=boot, reboots=reboots)


def boot_before_update(last_boot: datetime | None, at: datetime | None) -> datetime | None:
    """The boot a device announced its update (201, received `at`) from: what
    a later boot is measured against.

    Its last known boot, when that came before the 201. But the worker that
    takes a 201 may know no boot of the device, or only an older one, or one
    after the 201: a shared subscription hands the device's statuses to other
    workers too, and one of them can be stored before the 201 it followed. A
    device that boots after its 201 has rebooted, whatever came before, so the
    baseline is never earlier than the 201's own time less the jitter."""
    if at is None:
        return last_boot
    floor = at - BOOT_JITTER
    if last_boot is None or last_boot > at:
        return floor
    return max(last_boot, floor)


def after_response(
    progress: DeviceProgress,
    *,
    code: int,
    last_uptime: float | None,
    last_boot: datetime | None = None,
    at: datetime | None = None,
) -> DeviceProgress:
    if progress.outcome in (Outcome.SUCCEEDED, Outcome.TIMED_OUT, Outcome.STOPPED):
        return replace(progress, code=code)
    if code == ResponseCode.ERROR:
        # One awaiting its retry stays so: the retry is already planned.
        if progress.outcome == Outcome.RETRYING:
            return replace(progress, code=code)
        return replace(progress, outcome=Outcome.FAILED, code=code, reason=CODE)
    if code == ResponseCode.UPDATE_STARTING and progress.outcome == Outcome.PENDING:
        return replace(
            progress,
            started_update=True,
            uptime_at_start=last_uptime,
            boot_at_start=boot_before_update(last_boot, at),
            code=code,
        )
    return replace(progress, code=code)


def at_stage_end(progress: DeviceProgress, *, time_ran_out: bool) -> DeviceProgress:
    """A device that had not finished when its stage ended: it timed out only if
    the stage's time really ran out; otherwise it was stopped. One still
    awaiting a retry failed: its last code says how."""
    if progress.outcome == Outcome.RETRYING:
        return replace(progress, outcome=Outcome.FAILED)
    if progress.outcome != Outcome.PENDING:
        return progress
    if time_ran_out:
        return replace(progress, outcome=Outcome.TIMED_OUT, reason=TIMEOUT)
    return replace(progress, outcome=Outcome.STOPPED)


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


def stage_is_open(state: State, stage: Stage, *, wave: int | None = None, current_wave: int = 0) -> bool:
    """Whether a rollout in `state`, running its wave `current_wave`, is still
    deciding the outcomes of a device of `stage` (in `wave`, for the canary
    stage). Stages are named after the states that run them; the waves all
    belong to the canary stage, and only the one running is open."""
    if stage == Stage.ROLLBACK:
        # A rollback's devices are followed until they report, or time out.
        return state == State.ROLLED_BACK
    if state.value != stage.value:
        return False
    return stage != Stage.CANARY or wave is None or wave == current_wave


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
    for `dark_window` counts as failed: `dark_after` seconds of silence (a few
    status intervals, for the reboot and reconnection), plus the image's
    download at `download_rate` bytes a second, since an IoTaaP OS device
    publishes nothing while it downloads. `image_size` is set per stage with
    `for_image`."""

    attempts: int = 3
    backoff: float = 60.0
    dark_after: float = 15.0
    download_rate: float = 16 * 1024
    image_size: int = 0

    @property
    def dark_window(self) -> timedelta:
        return timedelta(seconds=self.dark_after + self.image_size / self.download_rate)

    def for_image(self, size: int) -> RetryPolicy:
        """The policy for a stage that deploys an image of `size` bytes."""
        return replace(self, image_size=size)


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
    # Why it failed, where its stage records it (rollout devices do).
    reason: str | None = None
    # A row of a rollback: the device goes back to its wave's version.
    rollback: bool = False


def retry_delay(policy: RetryPolicy, retries: int) -> timedelta:
    """The wait before retry number `retries + 1`: `backoff`, doubled each time."""
    return min(timedelta(seconds=policy.backoff * 2 ** min(retries, 20)), MAX_BACKOFF)


def went_dark(facts: RetryFacts, policy: RetryPolicy, now: datetime) -> bool:
    return (
        facts.outcome == Outcome.PENDING
        and facts.started_update
        and now - facts.updated_at >= policy.dark_window
    )


def retry_step(facts: RetryFacts, policy: RetryPolicy, now: datetime) -> tuple[str, datetime | None] | None:
    """What to do with one device: SCHEDULE a retry (with its time) for one
    that failed or went dark and has attempts left, RETRIGGER one whose retry
    is due, or None. A device that fails its last attempt stays failed, with
    its last code; one that goes dark on its last stays pending until the
    stage's time runs out. A device in a reboot loop is never retried: it
    runs the version already, and its next report on it would read as a
    success."""
    if facts.outcome == Outcome.RETRYING:
        if facts.retry_at is None or facts.retry_at <= now:
            return (RETRIGGER, None)
        return None
    failed = facts.outcome == Outcome.FAILED or went_dark(facts, policy, now)
    if failed and facts.reason != REBOOT_LOOP and facts.retries < policy.attempts:
        return (SCHEDULE, now + first_retry_now_or(retry_delay(policy, facts.retries), facts))
    return None


def first_retry_now_or(delay: timedelta, facts: RetryFacts) -> timedelta:
    """`delay`, or none for a rollback's device that booted into the version
    rolled back from: it was flashing that version when its wave's trigger
    came, and missed it, as a device does while it updates. Just booted, it is
    idle and takes the trigger at once; waiting out the backoff would only
    leave it on the failing version. Its later retries wait as any do."""
    missed_while_flashing = facts.rollback and facts.reason == REVERTED and facts.retries == 0
    return timedelta(0) if missed_while_flashing else delay


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


def failure_rate_exceeded(policy: Policy, counts: Counts) -> str | None:
    """Why the failed share halts the wave, or None: only once `min_devices`
    have finished (succeeded or failed), so that one early failure among many
    devices does not halt it; failures awaiting a retry count as failed."""
    if policy.max_failure_rate is None:
        return None
    failures = counts.failed + counts.timed_out + counts.retrying
    finished = counts.succeeded + failures
    if finished < policy.min_devices or failures <= policy.max_failure_rate * finished:
        return None
    return (
        f"{failures} of {finished} finished device(s) failed, over max_failure_rate "
        f"{policy.max_failure_rate:g} (min_devices {policy.min_devices})"
    )


def decide_canary(
    policy: Policy,
    counts: Counts,
    *,
    now: datetime,
    started_at: datetime,
    healthy_at: datetime | None,
    label: str = "canary",
) -> Decision:
    """The decision on a wave (the canary, or the wave `label` names)."""
    needed = required_successes(counts.targeted, policy.success_threshold)
    # A wave judges the image: a failure counts at once, retried or not.
    failures = counts.failed + counts.timed_out + counts.retrying
    if failures > policy.error_threshold:
        return Decision(
            HALT,
            f"{failures} {label} device(s) failed; error_threshold tolerates {policy.error_threshold}",
            healthy_at,
        )
    rate = failure_rate_exceeded(policy, counts)
    if rate is not None:
        return Decision(HALT, f"{label}: {rate}", healthy_at)
    if counts.succeeded >= needed and counts.targeted > 0:
        healthy_at = healthy_at or now
        if now < healthy_at + timedelta(seconds=policy.soak):
            return Decision(WAIT, None, healthy_at)
        if policy.auto_promote:
            return Decision(
                PROMOTE, f"{label} healthy: {counts.succeeded}/{counts.targeted} succeeded", healthy_at
            )
        return Decision(AWAIT_PROMOTION, f"{label} healthy; waiting for a promote", healthy_at)
    if counts.succeeded + counts.pending + counts.retrying < needed:
        return Decision(
            HALT,
            f"{label} can no longer reach its threshold: {counts.succeeded} succeeded, "
            f"{failures} failed, {needed} of {counts.targeted} needed",
            healthy_at,
        )
    if stage_time_ran_out(policy, started_at=started_at, now=now):
        return Decision(
            HALT,
            f"{label} timed out after {policy.canary_timeout} s: {counts.succeeded} of "
            f"{counts.targeted} succeeded, {needed} needed",
            healthy_at,
        )
    return Decision(WAIT, None, healthy_at)


def resumed(stored: datetime | None, *, paused_at: datetime, now: datetime) -> datetime | None:
    """A stored time of the clock after a pause from `paused_at` to `now`: it
    moves on by the pause, so that timeouts and soaks do not count it."""
    return None if stored is None else stored + max(now - paused_at, timedelta(0))


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
