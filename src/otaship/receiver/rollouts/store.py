"""Rollouts in the database: start, evaluate, promote, halt, abort.

The decisions themselves are the pure functions in `otaship.receiver.rollouts.policy`; this
module loads the facts, applies the decision and stores the result, always
under a lock on the rollout row (taken after its tree's lock, see
`otaship.receiver.db.groups.lock_tree`), so two replicas never promote one rollout twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func
from sqlmodel import Session, col, select

from otaship.receiver.db.enums import Stage, State
from otaship.receiver.db.groups import ancestors, descendants, lock_tree
from otaship.receiver.db.images import record_image
from otaship.receiver.db.models import Deployment, Device, FirmwareImage, Group, Rollout, RolloutDevice
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
    stage_time_ran_out,
)


class RolloutError(ValueError):
    """The request cannot be carried out; the message says why (a 400 or 409)."""


def policy_of(rollout: Rollout) -> Policy:
    return Policy(
        success_threshold=rollout.success_threshold,
        error_threshold=rollout.error_threshold,
        canary_timeout=rollout.canary_timeout,
        soak=rollout.soak,
        auto_promote=rollout.auto_promote,
    )


def firmware_of(session: Session, rollout: Rollout) -> StoredFirmware:
    image = session.get(FirmwareImage, rollout.sha256)
    assert image is not None  # a foreign key
    return StoredFirmware.of(image)


def validate_canary(*, session: Session, group: Group, canary_id: str) -> Group:
    """The canary must be a subgroup (at any depth) of `group`, of the same owner,
    with registered devices."""
    canary = session.get(Group, canary_id)
    if canary is None or canary.owner_id != group.owner_id or canary.id == group.id:
        raise RolloutError("canary must be a subgroup of the group")
    if group.id not in {g.id for g in ancestors(session=session, group=canary)}:
        raise RolloutError("canary must be a subgroup of the group")
    if not _devices_in(session, [canary, *descendants(session=session, group=canary)]):
        raise RolloutError("the canary subgroup has no registered devices")
    return canary


def _devices_in(session: Session, groups: list[Group]) -> list[Device]:
    ids = [g.id for g in groups]
    return list(session.exec(select(Device).where(col(Device.group_id).in_(ids)).order_by(col(Device.id))))


def _target(session: Session, rollout: Rollout, stage: Stage, groups: list[Group], now: datetime) -> None:
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
) -> Started:
    """Deploy to the canary subgroup only, and record the rollout (one transaction).

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
        state=State.CANARY,
        created_at=now,
        updated_at=now,
        canary_started_at=now,
        baseline_recorded=True,
        baseline_deployment_id=baseline.deployment_id if baseline else None,
        baseline_sha256=baseline.sha256 if baseline else None,
    )
    session.add(rollout)
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
    _target(session, rollout, Stage.CANARY, [canary, *descendants(session=session, group=canary)], now)
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
    """Close the canary stage and deploy the rollout's stored image to the whole
    group (no re-upload). The caller holds the rollout's lock.

    Never over firmware newer than the rollout: when the group no longer runs
    what it ran at the start, the rollout ends aborted instead."""
    group = session.get(Group, rollout.group_id)
    assert group is not None
    refusal = promotion_blocked(session=session, rollout=rollout, group=group)
    if refusal is not None:
        end_rollout(session, rollout, State.ABORTED, refusal, now)
        return
    close_stage(
        session,
        rollout.id,
        Stage.CANARY,
        now=now,
        time_ran_out=stage_time_ran_out(policy_of(rollout), started_at=rollout.canary_started_at, now=now),
    )
    try:
        deploy_firmware(
            session=session,
            group_id=group.id,
            version=rollout.version,
            firmware=firmware_of(session, rollout),
            commit=rollout.commit,
            rollout_id=rollout.id,
            notify=notify,
            kind="promotion",
            now=now,
        )
    except VersionConflict as exc:
        end_rollout(
            session, rollout, State.HALTED, f"the group already runs {exc.version} with other bytes", now
        )
        return
    log_transition(
        session,
        rollout,
        State.CANARY,
        State.FLEET,
        reason,
        stage_counts(session=session, rollout_id=rollout.id, stage=Stage.CANARY),
    )
    rollout.state = State.FLEET
    rollout.reason = reason
    rollout.fleet_started_at = now
    rollout.updated_at = now
    session.add(rollout)
    _target(session, rollout, Stage.FLEET, [group, *descendants(session=session, group=group)], now)
    session.flush()


def evaluate(*, session: Session, rollout_id: str, notify: bool, now: datetime) -> str | None:
    """Apply the next decision to one rollout; its state afterwards (None if busy elsewhere)."""
    rollout = lock_rollout(session, rollout_id, skip_locked=True)
    if rollout is None:
        return None
    if rollout.state not in ACTIVE_STATES:
        return rollout.state
    policy = policy_of(rollout)
    if rollout.state == State.CANARY:
        counts = stage_counts(session=session, rollout_id=rollout.id, stage=Stage.CANARY)
        decision = decide_canary(
            policy,
            counts,
            now=now,
            started_at=rollout.canary_started_at,
            healthy_at=rollout.canary_healthy_at,
        )
        if decision.healthy_at != rollout.canary_healthy_at:
            rollout.canary_healthy_at = decision.healthy_at
            rollout.updated_at = now
        if decision.action == PROMOTE:
            promote(session=session, rollout=rollout, notify=notify, reason=decision.reason, now=now)
        elif decision.action == HALT:
            end_rollout(
                session,
                rollout,
                State.HALTED,
                decision.reason,
                now,
                time_ran_out=stage_time_ran_out(policy, started_at=rollout.canary_started_at, now=now),
            )
        elif decision.action == AWAIT_PROMOTION and rollout.reason != decision.reason:
            rollout.reason = decision.reason
            rollout.updated_at = now
            # Not a change of state, but the one thing an operator must act on.
            log_transition(session, rollout, State.CANARY, State.CANARY, decision.reason, counts)
    else:
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
    """Promote a held canary; the rollout afterwards, `aborted` when the group
    no longer runs what it ran at the start (see `promote`)."""
    rollout = lock_rollout(session, rollout_id, skip_locked=False)
    if rollout is None or rollout.owner_id != owner_id:
        raise LookupError(rollout_id)
    if rollout.state != State.CANARY:
        raise RolloutError(f"only a rollout in its canary stage can be promoted; this one is {rollout.state}")
    counts = stage_counts(session=session, rollout_id=rollout.id, stage=Stage.CANARY)
    needed = required_successes(counts.targeted, rollout.success_threshold)
    if counts.succeeded < needed:
        raise RolloutError(
            f"the canary has not reached its success threshold: {counts.succeeded} of "
            f"{counts.targeted} succeeded, {needed} needed"
        )
    promote(session=session, rollout=rollout, notify=notify, reason="promoted by request", now=now)
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
) -> CanaryDeploy:
    """Start a rollout, or recognise the re-post of one (a CI re-run) and change nothing."""
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
    if newest is not None and newest.state == State.HALTED:
        raise RolloutConflict(
            f"Version {version} was halted in its canary ({newest.reason}). Bump the version to deploy a fix."
        )
    canary = validate_canary(session=session, group=group, canary_id=canary_id)
    started = start_rollout(
        session=session,
        group=group,
        canary=canary,
        version=version,
        firmware=firmware,
        policy=policy,
        commit=commit,
        notify=notify,
        now=now,
    )
    return CanaryDeploy(started.rollout, True, started.deploy.ota)
