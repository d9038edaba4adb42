"""The supersede rule: a deploy ends every running rollout whose stages it changes.

Every deploy passes through `otaship.receiver.rollouts.deploy.deploy_firmware`, which calls
this once the new OTA is written: a plain POST, a rollout's canary deploy and a
promotion alike. A rollout's own deploys never end it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlmodel import Session, col, select

from otaship.receiver.db.enums import State
from otaship.receiver.db.models import Deployment, Rollout
from otaship.receiver.rollouts.end import end_rollout
from otaship.receiver.rollouts.policy import ACTIVE_STATES, superseded_reason, supersedes


def supersede_rollouts(
    *,
    session: Session,
    deployment: Deployment,
    changed: set[str],
    parents: Mapping[str, str | None],
    now: datetime,
) -> list[str]:
    """End as aborted each running rollout the deploy changed; their ids.

    `changed` holds the groups whose effective firmware the deploy changed (the
    target and some of its descendants); `parents` maps the target's ancestors,
    the target and its descendants to their parents. Any rollout the deploy
    can reach has its group among those, since its stages are its group's
    subtree and a deploy reaches only the target's subtree.
    """
    if not changed:
        return []
    query = (
        select(Rollout)
        .where(col(Rollout.state).in_(ACTIVE_STATES), col(Rollout.group_id).in_(list(parents)))
        .order_by(col(Rollout.id))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if deployment.rollout_id is not None:
        query = query.where(col(Rollout.id) != deployment.rollout_id)
    reason = superseded_reason(deployment.id, deployment.version, deployment.group_id, deployment.rollout_id)
    ended: list[str] = []
    for rollout in session.exec(query).all():
        if supersedes(rollout.group_id, changed, parents):
            end_rollout(session, rollout, State.ABORTED, reason, now)
            ended.append(rollout.id)
    return ended
