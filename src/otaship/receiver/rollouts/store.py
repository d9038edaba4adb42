"""Rollouts in the database: start, evaluate, promote, halt, abort.

The decisions themselves are the pure functions in `otaship.receiver.rollouts.policy`; this
module loads the facts, applies the decision and stores the result, always
under a lock on the rollout row (taken after its tree's lock, see
`otaship.receiver.db.groups.lock_tree`), so two replicas never promote one rollout twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func
from sqlmodel import Session, col, select

from otaship.receiver.db.enums import Stage, State
from otaship.receiver.db.groups import ancestors, descendants, lock_tree
from otaship.receiver.db.images import record_image
from otaship.receiver.db.models import (
    Deployment,
    Device,
    FirmwareImage,
    Group,
    Rollout,
    RolloutControl,
    RolloutDevice,
    RolloutWave,
)
from otaship.receiver.db.signing_keys import NotSignedForGroup
from otaship.receiver.rollouts.deploy import (
    DeployResult,
    StoredFirmware,
    VersionConflict,
    current_ota,
    deploy_firmware,
    running_firmware,
    runs_own_ota,
)
from otaship.receiver.rollouts.end import NEW, close_stage, end_rollout, log_transition, stage_counts
from otaship.receiver.rollouts.policy import (
    ACTIVE_STATES,
    AWAIT_PROMOTION,
    FINISH,
    HALT,
    PROMOTE,
    Policy,
    Running,
    decide_canary,
    decide_fleet,
    initial_progress,
    promotion_refusal,
    required_successes,
    resumed,
    stage_time_ran_out,
    wave_label,
)
from otaship.receiver.rollouts.rollback import halt


class RolloutError(ValueError):
    """The request cannot be carried out; the message says why (a 400 or 409)."""


def policy_of(rollout: Rollout) -> Policy:
    return Policy(
        success_threshold=rollout.success_threshold,
        error_threshold=rollout.error_threshold,
        canary_timeout=rollout.canary_timeout,
        soak=rollout.soak,
        auto_promote=rollout.auto_promote,
        max_failure_rate=rollout.max_failure_rate,
        min_devices=rollout.min_devices,
    )


def wave_policy(rollout: Rollout, wave: RolloutWave) -> Policy:
    """The rollout's policy with what the wave sets for itself."""
    return replace(
        policy_of(rollout),
        success_threshold=wave.success_threshold,
        error_threshold=wave.error_threshold,
        canary_timeout=wave.canary_timeout,
        soak=wave.soak,
    )


def current_wave(session: Session, rollout: Rollout) -> RolloutWave:
    wave = session.get(RolloutWave, (rollout.id, rollout.wave))
    assert wave is not None  # written with the rollout, and by migration 0006
    return wave


def firmware_of(session: Session, rollout: Rollout) -> StoredFirmware:
    image = session.get(FirmwareImage, rollout.sha256)
    assert image is not None  # a foreign key
    return StoredFirmware.of(image)


def validate_canary(*, session: Session, group: Group, canary_id: str) -> Group:
    """The canary must be a subgroup (at any depth) of `group`, of the same owner,
    with registered devices."""
    return validate_waves(session=session, group=group, wave_ids=[canary_id])[0]


def validate_waves(*, session: Session, group: Group, wave_ids: list[str]) -> list[Group]:
    """Each wave must be a subgroup (at any depth) of `group`, of the same
    owner, with registered devices, and no wave may lie within another: each
    deploy to a wave changes its subtree only. The message names the wave."""
    waves: list[Group] = []
    subtrees: list[set[str]] = []
    for position, wave_id in enumerate(wave_ids):
        label = wave_label(position)
        name = "canary" if len(wave_ids) == 1 else f"{label} ({wave_id})"
        wave = session.get(Group, wave_id)
        if wave is None or wave.owner_id != group.owner_id or wave.id == group.id:
            raise RolloutError(f"{name} must be a subgroup of the group")
        if group.id not in {g.id for g in ancestors(session=session, group=wave)}:
            raise RolloutError(f"{name} must be a subgroup of the group")
        subtree = [wave, *descendants(session=session, group=wave)]
        if not _devices_in(session, subtree):
            what = "the canary subgroup" if len(wave_ids) == 1 else name
            raise RolloutError(f"{what} has no registered devices")
        ids = {g.id for g in subtree}
        for earlier, other in enumerate(subtrees):
            if ids & other:
                raise RolloutError(
                    f"{name} overlaps {wave_label(earlier)} ({wave_ids[earlier]}): waves must be "
                    "disjoint subtrees"
                )
        waves.append(wave)
        subtrees.append(ids)
    return waves


def _devices_in(session: Session, groups: list[Group]) -> list[Device]:
    ids = [g.id for g in groups]
    return list(session.exec(select(Device).where(col(Device.group_id).in_(ids)).order_by(col(Device.id))))


def _target(
    session: Session,
    rollout: Rollout,
    stage: Stage,
    groups: list[Group],
    now: datetime,
    wave: int | None = None,
) -> None:
    for device in _devices_in(session, groups):
        progress = initial_progress(device.firmware_version, rollout.version)
        session.add(
            RolloutDevice(
                rollout_id=rollout.id,
                stage=stage,
                device_id=device.id,
                group_id=device.group_id,
                outcome=progress.outcome,
                fw_version=device.firmware_version,
                updated_at=now,
                wave=wave,
            )
        )


def supersede(*, session: Session, group_ids: list[str], reason: str, keep: str, now: datetime) -> list[str]:
    """End every rollout in progress on these groups (as fleet or canary), but
    `keep`, as aborted."""
    rows = session.exec(
        select(Rollout)
        .where(
            col(Rollout.state).in_(ACTIVE_STATES),
            col(Rollout.id) != keep,
            (col(Rollout.group_id).in_(group_ids)) | (col(Rollout.canary_group_id).in_(group_ids)),
        )
        .order_by(col(Rollout.id))
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    for rollout in rows:
        end_rollout(session, rollout, State.ABORTED, reason, now)
    return [r.id for r in rows]


def newest_rollout(*, session: Session, group_id: str, version: str | None = None) -> Rollout | None:
    query = select(Rollout).where(col(Rollout.group_id) == group_id)
    if version is not None:
        query = query.where(col(Rollout.version) == version)
    return session.exec(query.order_by(col(Rollout.created_at).desc(), col(Rollout.id).desc())).first()


@dataclass(frozen=True)
class Started:
    rollout: Rollout
    deploy: DeployResult


def start_rollout(
    *,
    session: Session,
    group: Group,
    canary: Group,
    version: str,
    firmware: StoredFirmware,
    policy: Policy,
    commit: str | None,
    notify: bool,
    now: datetime,
    waves: list[tuple[Group, Policy]] | None = None,
    rollback: bool = False,
) -> Started:
    """Deploy to the first wave (the canary subgroup) only, and record the
    rollout with its waves (one transaction). `waves`: each wave after the
    canary, with its policy; the canary is judged by `policy`.

    The caller holds the group's tree lock."""
    baseline = running_firmware(session=session, group=group)
    rollout = Rollout(
        owner_id=group.owner_id,
        group_id=group.id,
        canary_group_id=canary.id,
        version=version,
        sha256=record_image(session=session, now=now, **asdict(firmware)).sha256,
        commit=commit,
        canary_timeout=policy.canary_timeout,
        success_threshold=policy.success_threshold,
        error_threshold=policy.error_threshold,
        soak=policy.soak,
        auto_promote=policy.auto_promote,
        max_failure_rate=policy.max_failure_rate,
        min_devices=policy.min_devices,
        rollback=rollback,
        state=State.CANARY,
        wave=0,
        created_at=now,
        updated_at=now,
        canary_started_at=now,
        baseline_recorded=True,
        baseline_deployment_id=baseline.deployment_id if baseline else None,
        baseline_sha256=baseline.sha256 if baseline else None,
    )
    session.add(rollout)
    session.flush()
    for position, (wave_group, wave_policy_) in enumerate([(canary, policy), *(waves or [])]):
        previous = running_firmware(session=session, group=wave_group) if position == 0 else None
        session.add(
            RolloutWave(
                rollout_id=rollout.id,
                position=position,
                group_id=wave_group.id,
                canary_timeout=wave_policy_.canary_timeout,
                success_threshold=wave_policy_.success_threshold,
                error_threshold=wave_policy_.error_threshold,
                soak=wave_policy_.soak,
                started_at=now if position == 0 else None,
                previous_recorded=position == 0,
                previous_sha256=previous.sha256 if previous else None,
                previous_version=previous.version if previous else None,
            )
        )
    session.flush()
    # The canary deploy supersedes the rollouts whose groups it changes
    # (otaship.receiver.rollouts.supersede); one rollout per group at a time ends any other
    # left on this group or canary, such as when the canary already ran this.
    result = deploy_firmware(
        session=session,
        group_id=canary.id,
        version=version,
        firmware=firmware,
        commit=commit,
        rollout_id=rollout.id,
        notify=notify,
        kind="canary",
        now=now,
    )
    supersede(
        session=session,
        group_ids=[group.id, canary.id],
        keep=rollout.id,
        reason=f"superseded by rollout {rollout.id} of version {version}",
        now=now,
    )
    _target(session, rollout, Stage.CANARY, [canary, *descendants(session=session, group=canary)], now, 0)
    session.flush()
    counts = stage_counts(session=session, rollout_id=rollout.id, stage=Stage.CANARY)
    log_transition(session, rollout, NEW, State.CANARY, "started by a deploy with a canary", counts)
    return Started(rollout=rollout, deploy=result)


def lock_rollout(session: Session, rollout_id: str, *, skip_locked: bool) -> Rollout | None:
    """The rollout under its row lock, taken after its tree's lock; None when it
    does not exist, or (with `skip_locked`) when another transaction holds either."""
    group_id = session.exec(select(Rollout.group_id).where(col(Rollout.id) == rollout_id)).first()
    if group_id is None or not lock_tree(session=session, group_id=group_id, skip_locked=skip_locked):
        return None
    return session.exec(
        select(Rollout)
        .where(col(Rollout.id) == rollout_id)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    ).first()


def _started_over(session: Session, rollout: Rollout) -> Running | None:
    """What the group ran when the rollout started, as recorded then."""
    if rollout.baseline_sha256 is None:
        return None
    version = session.exec(
        select(Deployment.version).where(col(Deployment.id) == rollout.baseline_deployment_id)
    ).first()
    return Running(
        rollout.baseline_deployment_id, rollout.baseline_sha256, version or "an unrecorded version"
    )


def promotion_blocked(*, session: Session, rollout: Rollout, group: Group) -> str | None:
    """Why the rollout must not be promoted over what the group runs now; None
    when the group still runs what it ran at the start (or that was not recorded)."""
    if not rollout.baseline_recorded:
        return None
    return promotion_refusal(_started_over(session, rollout), running_firmware(session=session, group=group))


def promote(
    *,
    session: Session,
    rollout: Rollout,
    notify: bool,
    now: datetime,
    reason: str | None = None,
) -> None:
    """Close the wave running and deploy the rollout's stored image to the next
    wave, or after the last one to the whole group (no re-upload). The caller
    holds the rollout's lock. Every promotion passes here.

    Never over firmware newer than the rollout: when the group no longer runs
    what it ran at the start, the rollout ends aborted instead."""
    group = session.get(Group, rollout.group_id)
    assert group is not None
    refusal = promotion_blocked(session=session, rollout=rollout, group=group)
    if refusal is not None:
        end_rollout(session, rollout, State.ABORTED, refusal, now)
        return
    wave = current_wave(session, rollout)
    following = session.get(RolloutWave, (rollout.id, rollout.wave + 1))
    target = group if following is None else session.get(Group, following.group_id)
    assert target is not None  # a foreign key
    assert wave.started_at is not None
    # What the next wave runs before it gets the version: what a rollback gives back.
    previous = running_firmware(session=session, group=target) if following is not None else None
    close_stage(
        session,
        rollout.id,
        Stage.CANARY,
        now=now,
        time_ran_out=stage_time_ran_out(wave_policy(rollout, wave), started_at=wave.started_at, now=now),
    )
    try:
        deploy_firmware(
            session=session,
            group_id=target.id,
            version=rollout.version,
            firmware=firmware_of(session, rollout),
            commit=rollout.commit,
            rollout_id=rollout.id,
            notify=notify,
            kind="promotion" if following is None else "wave",
            now=now,
        )
    except VersionConflict as exc:
        halt(session, rollout, f"the group already runs {exc.version} with other bytes", now, notify=notify)
        return
    except NotSignedForGroup as exc:
        halt(session, rollout, f"the image no longer passes the signature check: {exc}", now, notify=notify)
        return
    counts = stage_counts(session=session, rollout_id=rollout.id, stage=Stage.CANARY, wave=rollout.wave)
    wave.ended_at = now
    session.add(wave)
    rollout.reason = reason
    rollout.updated_at = now
    subtree = [target, *descendants(session=session, group=target)]
    if following is None:
        log_transition(session, rollout, State.CANARY, State.FLEET, reason, counts)
        rollout.state = State.FLEET
        rollout.fleet_started_at = now
        session.add(rollout)
        _target(session, rollout, Stage.FLEET, subtree, now)
    else:
        label = wave_label(following.position)
        log_transition(session, rollout, State.CANARY, State.CANARY, f"{reason}; {label} starts", counts)
        rollout.wave = following.position
        following.started_at = now
        following.previous_recorded = True
        following.previous_sha256 = previous.sha256 if previous else None
        following.previous_version = previous.version if previous else None
        session.add_all([rollout, following])
        _target(session, rollout, Stage.CANARY, subtree, now, following.position)
    session.flush()


def evaluate(*, session: Session, rollout_id: str, notify: bool, now: datetime) -> str | None:
    """Apply the next decision to one rollout; its state afterwards (None if busy elsewhere).
    A paused rollout stays as it is: its clock stopped."""
    rollout = lock_rollout(session, rollout_id, skip_locked=True)
    if rollout is None:
        return None
    if rollout.state not in ACTIVE_STATES or rollout.paused_at is not None:
        return rollout.state
    if rollout.state == State.CANARY:
        wave = current_wave(session, rollout)
        policy = wave_policy(rollout, wave)
        assert wave.started_at is not None
        counts = stage_counts(session=session, rollout_id=rollout.id, stage=Stage.CANARY, wave=rollout.wave)
        decision = decide_canary(
            policy,
            counts,
            now=now,
            started_at=wave.started_at,
            healthy_at=wave.healthy_at,
            label=wave_label(rollout.wave),
        )
        if decision.healthy_at != wave.healthy_at:
            wave.healthy_at = decision.healthy_at
            session.add(wave)
            if rollout.wave == 0:
                rollout.canary_healthy_at = decision.healthy_at
            rollout.updated_at = now
        if decision.action == PROMOTE:
            promote(session=session, rollout=rollout, notify=notify, reason=decision.reason, now=now)
        elif decision.action == HALT:
            halt(
                session,
                rollout,
                decision.reason or "halted",
                now,
                notify=notify,
                time_ran_out=stage_time_ran_out(policy, started_at=wave.started_at, now=now),
            )
        elif decision.action == AWAIT_PROMOTION and rollout.reason != decision.reason:
            rollout.reason = decision.reason
            rollout.updated_at = now
            # Not a change of state, but the one thing an operator must act on.
            log_transition(session, rollout, State.CANARY, State.CANARY, decision.reason, counts)
    else:
        policy = policy_of(rollout)
        assert rollout.fleet_started_at is not None
        counts = stage_counts(session=session, rollout_id=rollout.id, stage=Stage.FLEET)
        decision = decide_fleet(policy, counts, now=now, started_at=rollout.fleet_started_at)
        if decision.action == FINISH:
            end_rollout(
                session,
                rollout,
                State.COMPLETE,
                decision.reason,
                now,
                time_ran_out=stage_time_ran_out(policy, started_at=rollout.fleet_started_at, now=now),
            )
    session.add(rollout)
    return rollout.state


def manual_promote(
    *, session: Session, rollout_id: str, owner_id: str, notify: bool, now: datetime
) -> Rollout:
    """Promote a held wave; the rollout afterwards, `aborted` when the group
    no longer runs what it ran at the start (see `promote`)."""
    rollout = lock_rollout(session, rollout_id, skip_locked=False)
    if rollout is None or rollout.owner_id != owner_id:
        raise LookupError(rollout_id)
    if rollout.state != State.CANARY:
        raise RolloutError(f"only a rollout in its canary stage can be promoted; this one is {rollout.state}")
    if rollout.paused_at is not None:
        raise RolloutError("the rollout is paused: resume it first")
    wave = current_wave(session, rollout)
    counts = stage_counts(session=session, rollout_id=rollout.id, stage=Stage.CANARY, wave=rollout.wave)
    needed = required_successes(counts.targeted, wave.success_threshold)
    if counts.succeeded < needed:
        raise RolloutError(
            f"the {wave_label(rollout.wave)} has not reached its success threshold: {counts.succeeded} of "
            f"{counts.targeted} succeeded, {needed} needed"
        )
    promote(session=session, rollout=rollout, notify=notify, reason="promoted by request", now=now)
    return rollout


PAUSE = "pause"
RESUME = "resume"


def pause(*, session: Session, rollout_id: str, owner_id: str, actor: str, now: datetime) -> Rollout:
    """Stop the rollout's clock: no wave advances, no stage times out. Devices
    already triggered go on, and their reports are recorded."""
    rollout = _controlled(session, rollout_id, owner_id)
    if rollout.paused_at is not None:
        raise RolloutError("the rollout is already paused")
    rollout.paused_at = now
    return _record_control(session, rollout, PAUSE, actor, now)


def resume(*, session: Session, rollout_id: str, owner_id: str, actor: str, now: datetime) -> Rollout:
    """Start the clock again where it stopped: the stage's start and the wave's
    healthy time move on by the pause (one transaction, so a replica reading
    them sees either both or neither)."""
    rollout = _controlled(session, rollout_id, owner_id)
    paused_at = rollout.paused_at
    if paused_at is None:
        raise RolloutError("the rollout is not paused")
    if rollout.state == State.CANARY:
        wave = current_wave(session, rollout)
        wave.started_at = resumed(wave.started_at, paused_at=paused_at, now=now)
        wave.healthy_at = resumed(wave.healthy_at, paused_at=paused_at, now=now)
        session.add(wave)
    else:
        rollout.fleet_started_at = resumed(rollout.fleet_started_at, paused_at=paused_at, now=now)
    rollout.paused_at = None
    return _record_control(session, rollout, RESUME, actor, now)


def _controlled(session: Session, rollout_id: str, owner_id: str) -> Rollout:
    rollout = lock_rollout(session, rollout_id, skip_locked=False)
    if rollout is None or rollout.owner_id != owner_id:
        raise LookupError(rollout_id)
    if rollout.state not in ACTIVE_STATES:
        raise RolloutError(f"the rollout has already ended: {rollout.state}")
    return rollout


def _record_control(session: Session, rollout: Rollout, action: str, actor: str, now: datetime) -> Rollout:
    rollout.updated_at = now
    session.add(rollout)
    session.add(RolloutControl(rollout_id=rollout.id, action=action, actor=actor, at=now))
    reason = f"{action}d by {actor}"
    log_transition(session, rollout, rollout.state, rollout.state, reason, None)
    return rollout


def abort(*, session: Session, rollout_id: str, owner_id: str, now: datetime) -> Rollout:
    rollout = lock_rollout(session, rollout_id, skip_locked=False)
    if rollout is None or rollout.owner_id != owner_id:
        raise LookupError(rollout_id)
    if rollout.state not in ACTIVE_STATES:
        raise RolloutError(f"the rollout has already ended: {rollout.state}")
    end_rollout(session, rollout, State.ABORTED, "aborted by request", now)
    return rollout


# Device reports keep being recorded for a rollout this long after it ended:
# after a halt or an abort, its devices go on updating (or back), and the
# rollout shows where each one really is. Bounded, so that a device's reports
# do not look up and rewrite its rows in every rollout it was ever part of.
FOLLOW_AFTER_END = timedelta(hours=24)


def followed_by_reports(now: datetime) -> ColumnElement[bool]:
    """Rollouts whose devices' reports are recorded: running, or recently ended."""
    return col(Rollout.state).in_(ACTIVE_STATES) | (col(Rollout.ended_at) >= now - FOLLOW_AFTER_END)


def active_rollout_states(*, session: Session) -> list[tuple[str, str]]:
    return [
        (rollout_id, state)
        for rollout_id, state in session.exec(
            select(Rollout.id, Rollout.state).where(col(Rollout.state).in_(ACTIVE_STATES))
        )
    ]


def count_by_state(*, session: Session) -> dict[str, int]:
    return dict(session.exec(select(Rollout.state, func.count()).group_by(Rollout.state)).all())


class RolloutConflict(RolloutError):
    """The request contradicts the group's history (a 409)."""


@dataclass(frozen=True)
class CanaryDeploy:
    rollout: Rollout | None
    deployed: bool
    ota: Any  # the canary group's GroupOta, or the fleet's on a no-op


def deploy_with_canary(
    *,
    session: Session,
    group_id: str,
    canary_id: str,
    version: str,
    firmware: StoredFirmware,
    policy: Policy,
    commit: str | None,
    notify: bool,
    now: datetime,
    waves: list[tuple[str, Policy]] | None = None,
    rollback: bool = False,
) -> CanaryDeploy:
    """Start a rollout, or recognise the re-post of one (a CI re-run) and change
    nothing. `waves`: the waves after the canary, each with its policy."""
    lock_tree(session=session, group_id=group_id)
    group = session.exec(select(Group).where(col(Group.id) == group_id).with_for_update()).one()
    fleet_ota = current_ota(session=session, group_id=group.id)
    if fleet_ota is not None and fleet_ota.version == version:
        if fleet_ota.sha256 != firmware.sha256:
            raise VersionConflict(fleet_ota)
        if runs_own_ota(session=session, group=group, ota=fleet_ota):
            return CanaryDeploy(
                newest_rollout(session=session, group_id=group.id, version=version), False, fleet_ota
            )
        # A newer deploy to an ancestor overrode it: roll it out again.
    newest = newest_rollout(session=session, group_id=group.id, version=version)
    if newest is not None and newest.sha256 == firmware.sha256 and newest.state in ACTIVE_STATES:
        canary_ota = current_ota(session=session, group_id=newest.canary_group_id)
        return CanaryDeploy(newest, False, canary_ota)
    if newest is not None and newest.sha256 != firmware.sha256 and newest.state in ACTIVE_STATES:
        raise RolloutConflict(
            f"Version {version} is already rolling out with different firmware. "
            "Devices compare version strings and would never fetch it: bump the version."
        )
    if newest is not None and newest.state in (State.HALTED, State.ROLLED_BACK):
        raise RolloutConflict(
            f"Version {version} was halted in its canary ({newest.reason}). Bump the version to deploy a fix."
        )
    later = waves or []
    groups = validate_waves(session=session, group=group, wave_ids=[canary_id, *(w for w, _ in later)])
    started = start_rollout(
        session=session,
        group=group,
        canary=groups[0],
        version=version,
        firmware=firmware,
        policy=policy,
        commit=commit,
        notify=notify,
        now=now,
        waves=[(g, p) for g, (_, p) in zip(groups[1:], later, strict=True)],
        rollback=rollback,
    )
    return CanaryDeploy(started.rollout, True, started.deploy.ota)
