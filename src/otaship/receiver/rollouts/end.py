"""Ending a rollout, or one of its stages: state, reason, and the devices that
had not finished.

Used under the rollout's row lock by every way a rollout ends: a decision of
the rollout clock, a promotion, an abort by request, and a deploy that
supersedes it.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from otaship.receiver.db.enums import Stage, State
from otaship.receiver.db.models import Rollout, RolloutDevice
from otaship.receiver.rollouts.policy import ACTIVE_STATES, DeviceProgress, at_stage_end


def close_stage(
    session: Session, rollout_id: str, stage: Stage, *, time_ran_out: bool, now: datetime
) -> None:
    """Give each device of the stage that had not finished its final outcome."""
    for row in session.exec(
        select(RolloutDevice).where(
            col(RolloutDevice.rollout_id) == rollout_id,
            col(RolloutDevice.stage) == stage,
        )
    ):
        progress = at_stage_end(DeviceProgress(outcome=row.outcome), time_ran_out=time_ran_out)
        if progress.outcome != row.outcome:
            row.outcome = progress.outcome
            row.updated_at = now
            session.add(row)


def end_rollout(
    session: Session,
    rollout: Rollout,
    state: State,
    reason: str | None,
    now: datetime,
    *,
    time_ran_out: bool = False,
) -> None:
    """End the rollout in `state`, closing the stage it was running.

    `time_ran_out` says whether that stage's time was up: only then did its
    unfinished devices time out; otherwise they were stopped.
    """
    if rollout.state in ACTIVE_STATES:
        # A rollout's stages are named after the states that run them.
        close_stage(session, rollout.id, Stage(rollout.state), time_ran_out=time_ran_out, now=now)
    rollout.state = state
    rollout.reason = reason
    rollout.ended_at = now
    rollout.updated_at = now
    session.add(rollout)
