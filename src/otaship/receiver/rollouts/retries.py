"""Retries: devices of a running stage that failed are reached again.

An IoTaaP OS device checks for an update only when its group's trigger comes
(the protocol has no per-device trigger for a device in a group), and after a
203 it waits for the next one. So a device that answered 203, went dark after
its 201, or came back on another version is retried by publishing its group's
trigger again, through the outbox, at most `RetryPolicy.attempts` times with
backoff. The group's other devices answer that trigger with one `latest` check
and a 202 when they already run the version.

Runs inside the rollout clock's transaction, under the row lock of the
rollout (or of the plain deploy, rollouts/plain.py), before its decision:
every replica ticks, one acts, and the times are stored in the rows, so a
restart or another replica carries on where the last left off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import ColumnElement
from sqlmodel import Session, col, select

from otaship.protocol import trigger_topic
from otaship.receiver.db.enums import Outcome, Stage, State
from otaship.receiver.db.models import (
    DeployDevice,
    FirmwareImage,
    Rollout,
    RolloutDevice,
    TriggerMessage,
    User,
)
from otaship.receiver.rollouts.policy import DARK, RETRIGGER, SCHEDULE, RetryFacts, RetryPolicy, retry_step


@dataclass
class Retried:
    """What one pass did: devices newly waiting for a retry, devices retried,
    and the groups whose trigger was queued again."""

    scheduled: int = 0
    devices: int = 0
    groups: list[str] = field(default_factory=list)


Row = TypeVar("Row", RolloutDevice, DeployDevice)


def needs_a_look(
    model: type[RolloutDevice] | type[DeployDevice], policy: RetryPolicy, now: datetime
) -> ColumnElement[bool]:
    """The rows the retry step may act on: failed, waiting for a retry, or
    silent since their 201 for `dark_after`; the many pending ones are left in
    the database."""
    return col(model.outcome).in_((Outcome.FAILED, Outcome.RETRYING)) | (
        (col(model.outcome) == Outcome.PENDING)
        & col(model.started_update)
        & (col(model.updated_at) <= now - policy.dark_window)
    )


def for_image(session: Session, policy: RetryPolicy, sha256: str | None) -> RetryPolicy:
    """`policy` for devices downloading the image `sha256`: their silence is
    allowed the time its download takes (None: a wave that ran nothing)."""
    image = session.get(FirmwareImage, sha256) if sha256 is not None else None
    return policy.for_image(image.size if image is not None else 0)


def fail_dark_devices(*, session: Session, rollout: Rollout, policy: RetryPolicy, now: datetime) -> int:
    """Fail, with the reason `dark`, each device of the stage (or wave) running
    that answered 201 and has sent nothing since for the policy's dark window (its
    row is touched by each status while it updates): it is clearly gone, and
    need not wait for the stage's timeout. A retry may still bring it back.
    Not while paused: the clock stopped. The number failed."""
    if rollout.paused_at is not None or rollout.state not in (State.CANARY, State.FLEET):
        return 0
    query = select(RolloutDevice).where(
        col(RolloutDevice.rollout_id) == rollout.id,
        col(RolloutDevice.stage) == rollout.state,
        col(RolloutDevice.outcome) == Outcome.PENDING,
        col(RolloutDevice.started_update),
        col(RolloutDevice.updated_at) <= now - for_image(session, policy, rollout.sha256).dark_window,
    )
    if rollout.state == State.CANARY:
        query = query.where(col(RolloutDevice.wave) == rollout.wave)
    rows = session.exec(query).all()
    for row in rows:
        row.outcome = Outcome.FAILED
        row.reason = DARK
        row.updated_at = now
        session.add(row)
    return len(rows)


def retry_devices(
    *, session: Session, rollout: Rollout, policy: RetryPolicy, notify: bool, now: datetime
) -> Retried:
    """Schedule and carry out the retries of the stage the rollout is running.

    The caller holds the rollout's row lock. Without MQTT (`notify` False)
    there is no trigger to publish again, and nothing is done.
    """
    if not notify or policy.attempts == 0 or rollout.paused_at is not None:
        # Paused: no new trigger goes out until it resumes.
        return Retried()
    policy = for_image(session, policy, rollout.sha256)
    query = select(RolloutDevice).where(
        col(RolloutDevice.rollout_id) == rollout.id,
        col(RolloutDevice.stage) == rollout.state,
        needs_a_look(RolloutDevice, policy, now),
    )
    if rollout.state == State.CANARY:
        # Only the wave running: the earlier ones are closed.
        query = query.where(col(RolloutDevice.wave) == rollout.wave)
    rows = session.exec(query.order_by(col(RolloutDevice.device_id))).all()
    return retry_rows(
        session=session,
        rows=list(rows),
        owner_id=rollout.owner_id,
        version=rollout.version,
        policy=policy,
        now=now,
    )


def retry_rows(
    *, session: Session, rows: list[Row], owner_id: str, version: str, policy: RetryPolicy, now: datetime
) -> Retried:
    """The retry step over one rollout stage's or plain deploy's rows (see `needs_a_look`)."""
    done = Retried()
    waiting: dict[str, list[Row]] = {}
    due: set[str] = set()
    for row in rows:
        facts = RetryFacts(
            row.outcome,
            row.started_update,
            row.updated_at,
            row.retries,
            row.retry_at,
            row.reason if isinstance(row, RolloutDevice) else None,
            rollback=isinstance(row, RolloutDevice) and row.stage == Stage.ROLLBACK,
        )
        step = retry_step(facts, policy, now)
        if step is not None and step[0] == SCHEDULE:
            row.outcome = Outcome.RETRYING
            row.retry_at = step[1]
            row.updated_at = now
            session.add(row)
            done.scheduled += 1
        if row.outcome == Outcome.RETRYING:
            waiting.setdefault(row.group_id, []).append(row)
            if step is not None and step[0] == RETRIGGER:
                due.add(row.group_id)
    # One trigger reaches every device of its group: those of a group that
    # wait for a later retry ride on the one that is due, rather than cost the
    # whole group another check.
    retriggered = {group_id: waiting[group_id] for group_id in sorted(due)}
    if not retriggered:
        return done
    owner = session.get(User, owner_id)
    assert owner is not None
    for group_id, group_rows in retriggered.items():
        session.add(
            TriggerMessage(
                topic=trigger_topic(owner.mqtt_user, group_id),
                payload=json.dumps({"version": version}),
            )
        )
        for row in group_rows:
            # Back to waiting for its answer, as after the first trigger.
            row.outcome = Outcome.PENDING
            row.started_update = False
            row.uptime_at_start = None
            row.boot_at_start = None
            row.retries += 1
            row.retry_at = None
            row.updated_at = now
            session.add(row)
        done.devices += len(group_rows)
        done.groups.append(group_id)
    session.flush()
    return done
