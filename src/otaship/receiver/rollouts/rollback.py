"""Automatic rollback: a halted rollout with `rollback` on gives each wave that
got its version back what that wave ran before, and follows its devices.

Called under the rollout's row lock (and its tree's), in the transaction that
halts it, so two replicas never roll one rollout back twice: the second finds
it ended. Each wave goes back through `deploy_firmware`, from the image stored
when it was first deployed (no re-upload), and its devices are triggered
through the outbox like any deploy's.

What is decided (pure, `wave_rollback`): a wave with nothing recorded, or that
ran nothing before, is left as it is; so is a wave of which any group was
deployed to after the rollout started (the supersede rule: a rollback never
overwrites a newer deploy). Whatever happened is written on the wave.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from otaship.receiver.db.enums import Outcome, Stage, State
from otaship.receiver.db.groups import descendants
from otaship.receiver.db.models import (
    Deployment,
    Device,
    FirmwareImage,
    Group,
    Rollout,
    RolloutDevice,
    RolloutWave,
)
from otaship.receiver.db.signing_keys import NotSignedForGroup
from otaship.receiver.events import after_commit
from otaship.receiver.rollouts.deploy import StoredFirmware, VersionConflict, deploy_firmware
from otaship.receiver.rollouts.end import close_stage, end_rollout, log_transition
from otaship.receiver.rollouts.policy import RetryPolicy, initial_progress, wave_label
from otaship.receiver.rollouts.retries import Retried, for_image, needs_a_look, retry_rows

log = logging.getLogger("otaship.rollouts")

ROLL_BACK = "roll back"
LEAVE = "leave"


@dataclass(frozen=True)
class WaveFacts:
    """What a rollback of one wave depends on."""

    label: str
    previous_recorded: bool
    previous_version: str | None
    previous_image_stored: bool
    # A group of the wave's subtree was deployed to, after the rollout started,
    # by something other than this rollout.
    deployed_to_since: str | None


def wave_rollback(facts: WaveFacts) -> tuple[str, str]:
    """Whether to give the wave back its previous firmware, and why (pure)."""
    if facts.deployed_to_since is not None:
        return LEAVE, (
            f"{facts.label} left as it is: {facts.deployed_to_since} was deployed to after the rollout started"
        )
    if not facts.previous_recorded:
        return LEAVE, f"{facts.label} left as it is: what it ran before was not recorded"
    if facts.previous_version is None:
        return LEAVE, f"{facts.label} left as it is: it had no previous firmware"
    if not facts.previous_image_stored:
        return (
            LEAVE,
            f"{facts.label} left as it is: the image of {facts.previous_version} is no longer stored",
        )
    return ROLL_BACK, f"{facts.label} rolled back to {facts.previous_version}"


def _deployed_to_since(session: Session, rollout: Rollout, group_ids: list[str]) -> str | None:
    """The group of `group_ids` deployed to after the rollout started by
    another deploy than its own, if any."""
    found = session.exec(
        select(Deployment.group_id)
        .where(
            col(Deployment.group_id).in_(group_ids),
            col(Deployment.deployed_at) >= rollout.created_at,
            (col(Deployment.rollout_id).is_(None)) | (col(Deployment.rollout_id) != rollout.id),
        )
        .order_by(col(Deployment.group_id))
    ).first()
    return f"group {found}" if found is not None else None


def halt(
    session: Session,
    rollout: Rollout,
    reason: str,
    now: datetime,
    *,
    notify: bool,
    time_ran_out: bool = False,
) -> None:
    """End the rollout halted; with `rollback` on, roll its waves back and end
    it `rolled_back`, keeping the halt's reason."""
    end_rollout(session, rollout, State.HALTED, reason, now, time_ran_out=time_ran_out)
    if rollout.rollback:
        roll_back(session, rollout, notify=notify, now=now)


def roll_back(session: Session, rollout: Rollout, *, notify: bool, now: datetime) -> list[str]:
    """Give each wave that got the version its previous firmware; the notes,
    one per wave, also written on the waves."""
    waves = session.exec(
        select(RolloutWave)
        .where(col(RolloutWave.rollout_id) == rollout.id, col(RolloutWave.started_at).is_not(None))
        .order_by(col(RolloutWave.position))
    ).all()
    notes: list[str] = []
    for wave in waves:
        group = session.get(Group, wave.group_id)
        assert group is not None  # a foreign key
        subtree = [group, *descendants(session=session, group=group)]
        image = session.get(FirmwareImage, wave.previous_sha256) if wave.previous_sha256 else None
        label = f"{wave_label(wave.position)} ({wave.group_id})"
        action, note = wave_rollback(
            WaveFacts(
                label=label,
                previous_recorded=wave.previous_recorded,
                previous_version=wave.previous_version if wave.previous_sha256 else None,
                previous_image_stored=image is not None,
                deployed_to_since=_deployed_to_since(session, rollout, [g.id for g in subtree]),
            )
        )
        if action == ROLL_BACK:
            assert image is not None and wave.previous_version is not None
            try:
                deploy_firmware(
                    session=session,
                    group_id=group.id,
                    version=wave.previous_version,
                    firmware=StoredFirmware.of(image),
                    commit=None,
                    rollout_id=rollout.id,
                    notify=notify,
                    kind="rollback",
                    now=now,
                )
            except VersionConflict as exc:
                note = f"{label} left as it is: it already has {exc.version} with other bytes"
                action = LEAVE
            except NotSignedForGroup as exc:
                note = f"{label} left as it is: {wave.previous_version} no longer passes the signature check: {exc}"
                action = LEAVE
        if action == ROLL_BACK:
            assert wave.previous_version is not None
            _target(session, rollout, wave.position, subtree, wave.previous_version, now)
        wave.rollback = note[:500]
        session.add(wave)
        notes.append(note)
        after_commit(
            session,
            log,
            f"rollout {rollout.id} rollback: group={wave.group_id} wave={wave.position + 1} "
            f"rolled_back={str(action == ROLL_BACK).lower()}; {note}",
            event="rollback",
            rollout=rollout.id,
            group=wave.group_id,
            owner=rollout.owner_id,
            wave=wave.position + 1,
            rolled_back=action == ROLL_BACK,
            note=note,
        )
    log_transition(session, rollout, State.HALTED, State.ROLLED_BACK, rollout.reason, None)
    rollout.state = State.ROLLED_BACK
    rollout.updated_at = now
    session.add(rollout)
    session.flush()
    return notes


def _target(
    session: Session, rollout: Rollout, position: int, groups: list[Group], version: str, now: datetime
) -> None:
    """A `rollback` stage row for each device of the wave: it succeeds on
    reporting `version`, the one it goes back to."""
    devices = session.exec(
        select(Device).where(col(Device.group_id).in_([g.id for g in groups])).order_by(col(Device.id))
    ).all()
    for device in devices:
        progress = initial_progress(device.firmware_version, version)
        session.add(
            RolloutDevice(
                rollout_id=rollout.id,
                stage=Stage.ROLLBACK,
                device_id=device.id,
                group_id=device.group_id,
                outcome=progress.outcome,
                fw_version=device.firmware_version,
                updated_at=now,
                wave=position,
            )
        )


def rollback_deadline(rollout: Rollout) -> datetime | None:
    """When the devices still going back count as unreachable: the rollout's
    stage timeout after it rolled back."""
    if rollout.ended_at is None:
        return None
    return rollout.ended_at + timedelta(seconds=rollout.canary_timeout)


def close_rollbacks(*, session: Session, now: datetime) -> list[str]:
    """Time out the rollback devices of rollouts whose follow time is over: the
    ones that never reported the previous version are unreachable. The ids."""
    pending = session.exec(
        select(Rollout)
        .where(
            col(Rollout.state) == State.ROLLED_BACK,
            col(Rollout.id).in_(
                select(RolloutDevice.rollout_id).where(
                    col(RolloutDevice.stage) == Stage.ROLLBACK,
                    col(RolloutDevice.outcome).in_([Outcome.PENDING, Outcome.RETRYING]),
                )
            ),
        )
        .order_by(col(Rollout.id))
        .with_for_update(skip_locked=True)
    ).all()
    closed: list[str] = []
    for rollout in pending:
        deadline = rollback_deadline(rollout)
        if deadline is not None and now >= deadline:
            close_stage(session, rollout.id, Stage.ROLLBACK, time_ran_out=True, now=now)
            closed.append(rollout.id)
    return closed


def retry_rollbacks(*, session: Session, policy: RetryPolicy, notify: bool, now: datetime) -> Retried:
    """Reach again, while a rollback's follow time runs, the devices that did
    not go back: one that was flashing the version rolled back from when its
    wave's trigger came missed it, as a device does while it updates. As a
    stage's retries (rollouts/retries.py): its group's trigger, for the version
    its wave goes back to, published again with backoff, up to the attempts."""
    done = Retried()
    if not notify or policy.attempts == 0:
        return done
    rollouts = session.exec(
        select(Rollout)
        .where(
            col(Rollout.state) == State.ROLLED_BACK,
            col(Rollout.id).in_(
                select(RolloutDevice.rollout_id).where(
                    col(RolloutDevice.stage) == Stage.ROLLBACK, needs_a_look(RolloutDevice, policy, now)
                )
            ),
        )
        .order_by(col(Rollout.id))
        .with_for_update(skip_locked=True)
    ).all()
    for rollout in rollouts:
        deadline = rollback_deadline(rollout)
        if deadline is not None and now >= deadline:
            continue  # close_rollbacks counts them unreachable
        waves = {
            wave.position: wave
            for wave in session.exec(select(RolloutWave).where(col(RolloutWave.rollout_id) == rollout.id))
        }
        rows = session.exec(
            select(RolloutDevice)
            .where(
                col(RolloutDevice.rollout_id) == rollout.id,
                col(RolloutDevice.stage) == Stage.ROLLBACK,
                needs_a_look(RolloutDevice, policy, now),
            )
            .order_by(col(RolloutDevice.device_id))
        ).all()
        # A rollback row always names its wave (_target).
        for position in sorted({row.wave for row in rows if row.wave is not None}):
            wave = waves.get(position)
            if wave is None or wave.previous_version is None:
                continue
            step = retry_rows(
                session=session,
                rows=[row for row in rows if row.wave == position],
                owner_id=rollout.owner_id,
                version=wave.previous_version,
                # The rows were picked with no download allowed for: the
                # image a wave goes back to decides who is dark.
                policy=for_image(session, policy, wave.previous_sha256),
                now=now,
            )
            done.scheduled += step.scheduled
            done.devices += step.devices
            done.groups += step.groups
    return done
