"""A plain deploy (no rollout) follows the devices it triggered, so that those
that fail are retried as a rollout's are (rollouts/retries.py).

The deploy's transaction records one `DeployDevice` per device of the groups
it triggered. Reports move their outcomes (mqtt/reports.py), with the same
pure rules as a rollout stage's devices. The rollout clock then, under the
plain deploy's row lock, retries the failed ones and ends the following once
no device is pending or waiting for a retry, after `FOLLOW_PLAIN_DEPLOY`, or
when a newer deploy changes one of its groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, insert
from sqlmodel import Session, col, select

from otaship.receiver.db.enums import Outcome
from otaship.receiver.db.groups import lock_tree
from otaship.receiver.db.models import DeployDevice, Deployment, Device, PlainDeploy
from otaship.receiver.rollouts.policy import (
    Counts,
    DeviceProgress,
    RetryPolicy,
    at_stage_end,
    initial_progress,
    superseded_reason,
    supersedes,
)
from otaship.receiver.rollouts.retries import Retried, for_image, needs_a_look, retry_rows

# How long a plain deploy's devices are waited for. A device that was offline
# at the trigger never answers it: it is `timed_out` then, not retried.
FOLLOW_PLAIN_DEPLOY = timedelta(hours=1)


def follow(*, session: Session, deployment: Deployment, group_ids: list[str], now: datetime) -> None:
    """Record the devices of the groups a plain deploy triggered (in its transaction)."""
    session.add(
        PlainDeploy(
            deployment_id=deployment.id,
            owner_id=deployment.owner_id,
            group_id=deployment.group_id,
            version=deployment.version,
            started_at=now,
        )
    )
    session.flush()
    devices = session.exec(
        select(Device.id, Device.group_id, Device.firmware_version).where(col(Device.group_id).in_(group_ids))
    ).all()
    if not devices:
        return
    rows = []
    for device_id, group_id, running in devices:
        progress = initial_progress(running, deployment.version)
        rows.append(
            {
                "deployment_id": deployment.id,
                "device_id": device_id,
                "group_id": group_id,
                "outcome": progress.outcome,
                "started_update": False,
                "uptime_at_start": None,
                "fw_version": running,
                "code": None,
                "updated_at": now,
                "retries": 0,
                "retry_at": None,
                "boot_at_start": None,
            }
        )
    # Core, not the ORM: a deploy to a large fleet writes thousands of rows.
    session.connection().execute(insert(DeployDevice), rows)


def _close(session: Session, plain: PlainDeploy, reason: str, now: datetime, *, time_ran_out: bool) -> None:
    for row in session.exec(
        select(DeployDevice).where(
            col(DeployDevice.deployment_id) == plain.deployment_id,
            col(DeployDevice.outcome).in_((Outcome.PENDING, Outcome.RETRYING)),
        )
    ):
        progress = at_stage_end(DeviceProgress(outcome=row.outcome), time_ran_out=time_ran_out)
        row.outcome = progress.outcome
        row.retry_at = None
        row.updated_at = now
        session.add(row)
    plain.ended_at = now
    plain.reason = reason
    session.add(plain)


def end_superseded(
    *,
    session: Session,
    deployment: Deployment,
    changed: set[str],
    parents: Mapping[str, str | None],
    now: datetime,
) -> None:
    """End the following of every plain deploy whose groups this deploy changed
    (the same rule as for rollouts): its devices now answer to the newer one."""
    if not changed:
        return
    for plain in session.exec(
        select(PlainDeploy)
        .where(col(PlainDeploy.ended_at).is_(None), col(PlainDeploy.group_id).in_(list(parents)))
        .order_by(col(PlainDeploy.deployment_id))
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all():
        if plain.deployment_id != deployment.id and supersedes(plain.group_id, changed, parents):
            reason = superseded_reason(
                deployment.id, deployment.version, deployment.group_id, deployment.rollout_id
            )
            _close(session, plain, reason, now, time_ran_out=False)


def open_plain_deploys(*, session: Session) -> list[str]:
    return list(session.exec(select(PlainDeploy.deployment_id).where(col(PlainDeploy.ended_at).is_(None))))


def followed_plain_deploys() -> ColumnElement[bool]:
    """Plain deploys whose devices' reports are recorded: only those still
    followed. Unlike a rollout's, their rows stop at the end: every deploy is
    one, and reports then cost nothing more than before an hour after it."""
    return col(PlainDeploy.ended_at).is_(None)


def counts_of(session: Session, deployment_id: str) -> Counts:
    by_outcome = dict(
        session.exec(
            select(col(DeployDevice.outcome), func.count())
            .where(col(DeployDevice.deployment_id) == deployment_id)
            .group_by(DeployDevice.outcome)
        ).all()
    )
    return Counts.of([outcome for outcome, n in by_outcome.items() for _ in range(n)])


def evaluate_plain(
    *, session: Session, deployment_id: str, policy: RetryPolicy, now: datetime
) -> Retried | None:
    """Retry the failed devices of one followed plain deploy, and end the
    following when it is done; None when another replica holds it or it ended."""
    group_id = session.exec(
        select(PlainDeploy.group_id).where(col(PlainDeploy.deployment_id) == deployment_id)
    ).first()
    if group_id is None or not lock_tree(session=session, group_id=group_id, skip_locked=True):
        return None
    plain = session.exec(
        select(PlainDeploy)
        .where(col(PlainDeploy.deployment_id) == deployment_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).first()
    if plain is None or plain.ended_at is not None:
        return None
    retried = Retried()
    if policy.attempts > 0:
        deployment = session.get(Deployment, deployment_id)
        policy = for_image(session, policy, deployment.sha256 if deployment is not None else None)
        rows = session.exec(
            select(DeployDevice)
            .where(col(DeployDevice.deployment_id) == deployment_id, needs_a_look(DeployDevice, policy, now))
            .order_by(col(DeployDevice.device_id))
        ).all()
        retried = retry_rows(
            session=session,
            rows=list(rows),
            owner_id=plain.owner_id,
            version=plain.version,
            policy=policy,
            now=now,
        )
    counts = counts_of(session, deployment_id)
    if counts.pending == 0 and counts.retrying == 0:
        _close(session, plain, f"all {counts.targeted} device(s) reported", now, time_ran_out=False)
    elif now >= plain.started_at + FOLLOW_PLAIN_DEPLOY:
        left = counts.pending + counts.retrying
        _close(
            session,
            plain,
            f"followed for {FOLLOW_PLAIN_DEPLOY}; {left} device(s) pending",
            now,
            time_ran_out=True,
        )
    return retried
