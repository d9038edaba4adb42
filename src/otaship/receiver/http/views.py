"""Rows as the API shows them: an OTA record, a rollout with its stages and devices."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from otaship.receiver.db.enums import Outcome, Stage, State
from otaship.receiver.db.models import DeployDevice, Device, GroupOta, PlainDeploy, Rollout, RolloutDevice
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
    State.ABORTED: "aborted",
}
FLEET_STAGE_STATES = {
    State.FLEET: "running",
    State.COMPLETE: "complete",
    State.ABORTED: "aborted",
    State.HALTED: "halted",
}


def ota_view(ota: GroupOta) -> wire.Ota:
    return wire.Ota(
        _id=ota.id,
        group=ota.group_id,
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
    )


DeviceRow = tuple[RolloutDevice, str]


def rollout_devices(session: Session, rollout_id: str) -> Sequence[DeviceRow]:
    """Each targeted device's outcome row and the device's name, canary stage first."""
    return session.exec(
        select(RolloutDevice, Device.name)
        .join(Device, col(Device.id) == col(RolloutDevice.device_id))
        .where(col(RolloutDevice.rollout_id) == rollout_id)
        .order_by(col(RolloutDevice.stage), col(RolloutDevice.device_id))
    ).all()


def rollout_view(*, session: Session, rollout: Rollout, with_devices: bool = True) -> wire.Rollout:
    return rollout_body(rollout, rollout_devices(session, rollout.id), with_devices=with_devices)


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


def rollout_body(rollout: Rollout, rows: Sequence[DeviceRow], *, with_devices: bool) -> wire.Rollout:
    by_stage: dict[Stage, list[Outcome]] = {Stage.CANARY: [], Stage.FLEET: []}
    retries = {Stage.CANARY: 0, Stage.FLEET: 0}
    for row, _ in rows:
        by_stage[row.stage].append(row.outcome)
        retries[row.stage] += row.retries

    def stage(
        name: Stage, group_id: str, started: datetime | None, ended: datetime | None, state: str
    ) -> wire.RolloutStage:
        counts = Counts.of(by_stage[name])
        return wire.RolloutStage(
            name=name,
            group=group_id,
            state=state,
            targeted=counts.targeted,
            succeeded=counts.succeeded,
            failed=counts.failed,
            timed_out=counts.timed_out,
            stopped=counts.stopped,
            retrying=counts.retrying,
            retries=retries[name],
            pending=counts.pending,
            started_at=started,
            ended_at=ended,
        )

    canary_state, fleet_state = stage_states(rollout)
    stages = [
        stage(
            Stage.CANARY,
            rollout.canary_group_id,
            rollout.canary_started_at,
            rollout.fleet_started_at or rollout.ended_at,
            canary_state,
        ),
        stage(
            Stage.FLEET,
            rollout.group_id,
            rollout.fleet_started_at,
            rollout.ended_at if rollout.fleet_started_at else None,
            fleet_state,
        ),
    ]
    devices = (
        [wire.RolloutDevice(stage=row.stage, **_device_fields(row, name)) for row, name in rows]
        if with_devices
        else None
    )
    return wire.Rollout(
        id=rollout.id,
        group=rollout.group_id,
        canary=rollout.canary_group_id,
        version=rollout.version,
        sha256=rollout.sha256,
        commit=rollout.commit,
        state=rollout.state,
        reason=rollout.reason,
        policy=wire.RolloutPolicy(
            canary_timeout=rollout.canary_timeout,
            success_threshold=rollout.success_threshold,
            error_threshold=rollout.error_threshold,
            soak=rollout.soak,
            auto_promote=rollout.auto_promote,
        ),
        created_at=rollout.created_at,
        updated_at=rollout.updated_at,
        ended_at=rollout.ended_at,
        stages=stages,
        **wire.given(devices=devices),
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
