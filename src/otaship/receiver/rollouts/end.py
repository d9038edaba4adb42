"""Ending a rollout, or one of its stages: state, reason, and the devices that
had not finished; and the log line of every change of a rollout's state.

Used under the rollout's row lock by every way a rollout ends: a decision of
the rollout clock, a promotion, an abort by request, and a deploy that
supersedes it.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlmodel import Session, col, select

from otaship.receiver.db.enums import Stage, State
from otaship.receiver.db.models import Rollout, RolloutDevice, RolloutWave
from otaship.receiver.events import after_commit
from otaship.receiver.rollouts.policy import ACTIVE_STATES, Counts, DeviceProgress, at_stage_end

log = logging.getLogger("otaship.rollouts")
# What a rollout was before it existed, in its first line.
NEW = "new"


def stage_counts(*, session: Session, rollout_id: str, stage: Stage, wave: int | None = None) -> Counts:
    """The outcomes of a stage's devices; of one wave's only, given `wave`."""
    query = select(col(RolloutDevice.outcome)).where(
        col(RolloutDevice.rollout_id) == rollout_id, col(RolloutDevice.stage) == stage
    )
    if wave is not None:
        query = query.where(col(RolloutDevice.wave) == wave)
    return Counts.of(list(session.exec(query).all()))


def counts_fields(counts: Counts) -> dict[str, int]:
    return {
        "targeted": counts.targeted,
        "succeeded": counts.succeeded,
        "failed": counts.failed,
        "timed_out": counts.timed_out,
        "stopped": counts.stopped,
        "pending": counts.pending,
    }


def transition_line(
    rollout: Rollout, before: str, after: str, reason: str | None, counts: Counts | None
) -> str:
    """The line of a rollout's change of state (pure): ids first, free text last."""
    tally = "" if counts is None else " " + " ".join(f"{k}={v}" for k, v in counts_fields(counts).items())
    return (
        f"rollout {rollout.id} {before} -> {after}: group={rollout.group_id} "
        f"canary_group={rollout.canary_group_id} version={rollout.version}{tally}; "
        f"reason: {reason or '-'}"
    )


def log_transition(
    session: Session, rollout: Rollout, before: str, after: str, reason: str | None, counts: Counts | None
) -> None:
    """Log the change once the transaction commits. `counts`: the devices of the
    stage that ended, or of the one that starts."""
    after_commit(
        session,
        log,
        transition_line(rollout, before, after, reason, counts),
        event="rollout",
        rollout=rollout.id,
        group=rollout.group_id,
        owner=rollout.owner_id,
        version=rollout.version,
        from_state=before,
        to_state=after,
        reason=reason,
        counts=counts_fields(counts) if counts is not None else None,
    )


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
        progress = at_stage_end(
            DeviceProgress(outcome=row.outcome, reason=row.reason), time_ran_out=time_ran_out
        )
        if progress.outcome != row.outcome:
            row.outcome = progress.outcome
            row.reason = progress.reason
            # One that was waiting for a retry no longer does: its stage is over.
            row.retry_at = None
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
    before = rollout.state
    counts = None
    if before in ACTIVE_STATES:
        # A rollout's stages are named after the states that run them.
        close_stage(session, rollout.id, Stage(before), time_ran_out=time_ran_out, now=now)
        wave = rollout.wave if before == State.CANARY else None
        counts = stage_counts(session=session, rollout_id=rollout.id, stage=Stage(before), wave=wave)
    log_transition(session, rollout, before, state, reason, counts)
    rollout.state = state
    rollout.reason = reason
    rollout.ended_at = now
    rollout.updated_at = now
    # An ended rollout is not paused: nothing of it is left to hold.
    rollout.paused_at = None
    session.add(rollout)
    if before == State.CANARY:
        _end_wave(session, rollout.id, rollout.wave, now)


def _end_wave(session: Session, rollout_id: str, position: int, now: datetime) -> None:
    wave = session.get(RolloutWave, (rollout_id, position))
    if wave is not None and wave.ended_at is None:
        wave.ended_at = now
        session.add(wave)
