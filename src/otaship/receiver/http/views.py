"""Rows as the API shows them: an OTA record, a rollout with its stages and devices."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from otaship.receiver.db.enums import Outcome, Stage, State
from otaship.receiver.db.models import (
    DeployDevice,
    Device,
    GroupOta,
    PlainDeploy,
    Rollout,
    RolloutControl,
    RolloutDevice,
    RolloutWave,
)
from otaship.receiver.http import wire
from otaship.receiver.rollouts.policy import (
    ACTIVE_STATES,
    Counts,
)

# A rollout's state, as each of its stages shows it.
CANARY_STAGE_STATES = {
    State.CANARY: "running",
    State.FLEET: "passed",
    State.COMPLETE: "passed",
    State.HALTED: "failed",
    State.ROLLED_BACK: "failed",
    State.ABORTED: "aborted",
}
FLEET_STAGE_STATES = {
    State.FLEET: "running",
    State.COMPLETE: "complete",
    State.ABORTED: "aborted",
    State.HALTED: "halted",
    State.ROLLED_BACK: "halted",
}


def ota_view(ota: GroupOta, group_name: str) -> wire.Ota:
    return wire.Ota(
        _id=ota.id,
        group=ota.group_id,
        group_name=group_name,
        __v=ota.revision,
        last_updated=ota.last_updated,
        owner=ota.owner_id,
        path=ota.path,
        version=ota.version,
        sha256=ota.image.sha256,
        md5=ota.image.md5,
        size=ota.image.size,
        chip=ota.image.chip,
        project_name=ota.image.project_name,
        app_version=ota.image.app_version,
        idf_ver=ota.image.idf_ver,
        commit=ota.commit,
        signed=ota.signed_by is not None,
        signed_by=ota.signed_by,
    )


DeviceRow = tuple[RolloutDevice, str]


def rollout_devices(session: Session, rollout_id: str) -> Sequence[DeviceRow]:
    """Each targeted device's outcome row and the device's name, canary stage first."""
    return session.exec(
        select(RolloutDevice, Device.name)
        .join(Device, col(Device.id) == col(RolloutDevice.device_id))
        .where(col(RolloutDevice.rollout_id) == rollout_id)
        .order_by(col(RolloutDevice.stage), col(RolloutDevice.wave), col(RolloutDevice.device_id))
    ).all()


def rollout_view(*, session: Session, rollout: Rollout, with_devices: bool = True) -> wire.Rollout:
    waves = session.exec(
        select(RolloutWave)
        .where(col(RolloutWave.rollout_id) == rollout.id)
        .order_by(col(RolloutWave.position))
    ).all()
    controls = session.exec(
        select(RolloutControl)
        .where(col(RolloutControl.rollout_id) == rollout.id)
        .order_by(col(RolloutControl.id))
    ).all()
    return rollout_body(
        rollout,
        rollout_devices(session, rollout.id),
        waves=waves,
        controls=controls,
        with_devices=with_devices,
    )


def stage_states(rollout: Rollout) -> tuple[str, str]:
    """The canary stage's state and the fleet stage's."""
    canary = CANARY_STAGE_STATES[rollout.state]
    if rollout.state == State.ABORTED and rollout.fleet_started_at is not None:
        canary = "passed"
    if rollout.fleet_started_at is None:
        fleet = "pending" if rollout.state in ACTIVE_STATES else "skipped"
    else:
        fleet = FLEET_STAGE_STATES.get(rollout.state, rollout.state)
    return canary, fleet


def wave_state(rollout: Rollout, position: int) -> str:
    """A wave's state: those before the one running passed, those after are
    pending (or skipped, once the rollout ended); the one running shows how
    the canary stage does."""
    if rollout.fleet_started_at is not None or position < rollout.wave:
        return "passed"
    if position > rollout.wave:
        return "pending" if rollout.state in ACTIVE_STATES else "skipped"
    return stage_states(rollout)[0]


def rollout_body(
    rollout: Rollout,
    rows: Sequence[DeviceRow],
    *,
    waves: Sequence[RolloutWave],
    controls: Sequence[RolloutControl] = (),
    with_devices: bool,
) -> wire.Rollout:
    # Canary-stage devices by wave; the fleet stage's under None.
    outcomes: dict[int | None, list[Outcome]] = {None: [], **{w.position: [] for w in waves}}
    retries: dict[int | None, int] = dict.fromkeys(outcomes, 0)
    reasons: dict[int | None, dict[str, int]] = {key: {} for key in outcomes}
    # The rollback's devices by wave, apart from the stages'.
    rolled: dict[int, list[Outcome]] = {}
    for row, _ in rows:
        if row.stage == Stage.ROLLBACK:
            rolled.setdefault(row.wave or 0, []).append(row.outcome)
            continue
        key = row.wave if row.stage == Stage.CANARY else None
        outcomes.setdefault(key, []).append(row.outcome)
        retries[key] = retries.get(key, 0) + row.retries
        # Timeouts have their own count: these are the failures, by signal.
        if row.reason is not None and row.outcome == Outcome.FAILED:
            tally = reasons.setdefault(key, {})
            tally[row.reason] = tally.get(row.reason, 0) + 1

    def stage(
        key: int | None, group_id: str, started: datetime | None, ended: datetime | None, state: str
    ) -> wire.RolloutStage:
        counts = Counts.of(outcomes.get(key, []))
        return wire.RolloutStage(
            name="fleet" if key is None else ("canary" if key == 0 else "wave"),
            wave=None if key is None else key + 1,
            group=group_id,
            state=state,
            targeted=counts.targeted,
            succeeded=counts.succeeded,
            failed=counts.failed,
            timed_out=counts.timed_out,
            stopped=counts.stopped,
            retrying=counts.retrying,
            retries=retries.get(key, 0),
            pending=counts.pending,
            failed_by_reason=dict(sorted(reasons.get(key, {}).items())),
            started_at=started,
            ended_at=ended,
        )

    _, fleet_state = stage_states(rollout)
    stages = [
        stage(
            wave.position,
            wave.group_id,
            wave.started_at,
            wave.ended_at,
            wave_state(rollout, wave.position),
        )
        for wave in waves
    ]
    stages.append(
        stage(
            None,
            rollout.group_id,
            rollout.fleet_started_at,
            rollout.ended_at if rollout.fleet_started_at else None,
            fleet_state,
        )
    )
    devices = (
        [
            wire.RolloutDevice(
                stage=row.stage,
                wave=row.wave + 1 if row.wave is not None and row.stage != Stage.FLEET else None,
                reason=row.reason if row.outcome in (Outcome.FAILED, Outcome.TIMED_OUT) else None,
                **_device_fields(row, name),
            )
            for row, name in rows
        ]
        if with_devices
        else None
    )
    return wire.Rollout(
        id=rollout.id,
        group=rollout.group_id,
        canary=rollout.canary_group_id,
        waves=[wave.group_id for wave in waves],
        wave=rollout.wave + 1 if rollout.state == State.CANARY else None,
        version=rollout.version,
        sha256=rollout.sha256,
        commit=rollout.commit,
        state=rollout.state,
        reason=rollout.reason,
        paused=rollout.paused_at is not None,
        policy=wire.RolloutPolicy(
            canary_timeout=rollout.canary_timeout,
            success_threshold=rollout.success_threshold,
            error_threshold=rollout.error_threshold,
            soak=rollout.soak,
            auto_promote=rollout.auto_promote,
            max_failure_rate=rollout.max_failure_rate,
            min_devices=rollout.min_devices,
        ),
        wave_policies=[
            wire.WavePolicy(
                wave=wave.position + 1,
                group=wave.group_id,
                canary_timeout=wave.canary_timeout,
                success_threshold=wave.success_threshold,
                error_threshold=wave.error_threshold,
                soak=wave.soak,
            )
            for wave in waves
        ],
        controls=[wire.RolloutControl(action=c.action, by=c.actor, at=c.at) for c in controls],
        created_at=rollout.created_at,
        updated_at=rollout.updated_at,
        ended_at=rollout.ended_at,
        stages=stages,
        rollback=[
            _rollback_wave(wave, Counts.of(rolled.get(wave.position, [])))
            for wave in waves
            if wave.rollback is not None
        ],
        **wire.given(devices=devices),
    )


def _rollback_wave(wave: RolloutWave, counts: Counts) -> wire.RollbackWave:
    return wire.RollbackWave(
        wave=wave.position + 1,
        group=wave.group_id,
        result=wave.rollback or "",
        version=wave.previous_version if counts.targeted else None,
        targeted=counts.targeted,
        went_back=counts.succeeded,
        did_not=counts.failed,
        unreachable=counts.timed_out,
        pending=counts.pending,
        retrying=counts.retrying,
    )


def _device_fields(row: RolloutDevice | DeployDevice, name: str) -> dict[str, Any]:
    """What a followed device shows, in a rollout stage or a plain deploy alike."""
    return {
        "id": row.device_id,
        "name": name,
        "group": row.group_id,
        "outcome": row.outcome,
        "fw_version": row.fw_version,
        "code": row.code,
        "retries": row.retries,
        "next_retry_at": row.retry_at if row.outcome == Outcome.RETRYING else None,
    }


def deployment_view(*, session: Session, plain: PlainDeploy, with_devices: bool = True) -> wire.Deployment:
    """A followed plain deploy with its counts, and its devices unless left out."""
    rows = session.exec(
        select(DeployDevice, Device.name)
        .join(Device, col(Device.id) == col(DeployDevice.device_id))
        .where(col(DeployDevice.deployment_id) == plain.deployment_id)
        .order_by(col(DeployDevice.device_id))
    ).all()
    counts = Counts.of([row.outcome for row, _ in rows])
    devices = [wire.DeployDevice(**_device_fields(row, name)) for row, name in rows] if with_devices else None
    return wire.Deployment(
        id=plain.deployment_id,
        group=plain.group_id,
        version=plain.version,
        state="following" if plain.ended_at is None else "ended",
        reason=plain.reason,
        started_at=plain.started_at,
        ended_at=plain.ended_at,
        targeted=counts.targeted,
        succeeded=counts.succeeded,
        failed=counts.failed,
        timed_out=counts.timed_out,
        stopped=counts.stopped,
        retrying=counts.retrying,
        retries=sum(row.retries for row, _ in rows),
        pending=counts.pending,
        **wire.given(devices=devices),
    )
