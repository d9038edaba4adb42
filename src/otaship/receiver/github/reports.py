"""Webhook-started deploys reported back to GitHub, as the action's
`github-deployment` reports its own: a Deployment of the release's commit in
`firmware/<group name>`, `in_progress` at the deploy and at each stage,
`success` at the end, `failure` when the rollout halts or is aborted.

Reporting never changes a deploy: a call that fails after its retries is
logged and the deploy goes on. The state reported last is written before the
status is posted, under the delivery's row lock, so two replicas never post
the same change.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import or_
from sqlmodel import Session, col, select

from otaship.receiver.db.models import GithubBinding, GithubDelivery, Rollout
from otaship.receiver.github.api import GithubApi, GithubError

log = logging.getLogger("otaship.github")

ENDED = ("success", "failure")
FAILURE_STATES = ("halted", "aborted", "rolled_back")
MAX_DESCRIPTION = 140
BATCH = 50


def stage_counts(stages: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(
        f"{s.get('name')} {s.get('succeeded', 0)}/{s.get('targeted', 0)}"
        for s in stages
        if s.get("started_at")
    )


def stage_of(rollout_state: str, wave: int | None) -> str:
    """The stage a rollout is in: its state, or `wave N` past the first of its waves
    (their state stays `canary`, and each is a stage of its own)."""
    return f"wave {wave}" if rollout_state == "canary" and wave is not None and wave > 1 else rollout_state


def status_of(
    version: str, rollout_state: str | None, stages: Sequence[Mapping[str, Any]], wave: int | None = None
) -> tuple[str, str, str]:
    """(the state to remember, the GitHub status, its description) of a deploy (pure).

    A plain deploy (no rollout) is a success at once. Each stage is remembered
    apart, so that each gets its `in_progress`."""
    counts = stage_counts(stages)
    if rollout_state is None:
        return "success", "success", f"{version} deployed"
    stage = stage_of(rollout_state, wave)
    described = f"{version}: {stage}" + (f", {counts}" if counts else "")
    if rollout_state == "complete":
        return "success", "success", described[:MAX_DESCRIPTION]
    if rollout_state in FAILURE_STATES:
        return "failure", "failure", described[:MAX_DESCRIPTION]
    # At most 16 characters are kept: `wave 20` is the longest.
    return stage, "in_progress", described[:MAX_DESCRIPTION]


def rollout_progress(
    session: Session, rollout_id: str | None
) -> tuple[str | None, list[Mapping[str, Any]], int | None]:
    """The rollout's state, its stages and the wave it is in."""
    if rollout_id is None:
        return None, [], None
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        return None, [], None
    from otaship.receiver.http.views import rollout_view

    view = rollout_view(session=session, rollout=rollout, with_devices=False).wire()
    wave = view.get("wave")
    return str(view["state"]), list(view.get("stages") or []), wave if isinstance(wave, int) else None


def claim_change(session: Session, *, delivery_id: int) -> tuple[str, int, str | None, str, str] | None:
    """(binding id, GitHub deployment id, rollout id, status, description) of the next
    status of a reported delivery, recorded as reported; None when nothing changed."""
    row = session.exec(
        select(GithubDelivery).where(col(GithubDelivery.id) == delivery_id).with_for_update(skip_locked=True)
    ).first()
    if row is None or row.reported_state in ENDED or row.github_deployment_id is None:
        return None
    state, stages, wave = rollout_progress(session, row.rollout_id)
    remembered, github_state, description = status_of(row.version or "", state, stages, wave)
    if remembered == row.reported_state:
        return None
    row.reported_state = remembered
    session.add(row)
    return row.binding_id, row.github_deployment_id, row.rollout_id, github_state, description


def pending_reports(session: Session) -> list[int]:
    rows = session.exec(
        select(GithubDelivery.id)
        .where(
            col(GithubDelivery.github_deployment_id).is_not(None),
            # NOT IN is never true of NULL: a deploy not reported yet is pending too.
            or_(
                col(GithubDelivery.reported_state).is_(None), col(GithubDelivery.reported_state).not_in(ENDED)
            ),
        )
        .order_by(col(GithubDelivery.id))
        .limit(BATCH)
    ).all()
    return [row for row in rows if row is not None]


async def post_status(
    api: GithubApi,
    binding: GithubBinding,
    deployment_id: int,
    state: str,
    description: str,
    log_url: str | None,
) -> None:
    try:
        await api.create_status(
            binding.repo, deployment_id, state=state, description=description, log_url=log_url
        )
    except GithubError as exc:
        # The deploy is not affected: GitHub only misses this status.
        log.warning(
            "GitHub deployment %s of %s not updated to %s: %s",
            deployment_id,
            binding.repo,
            state,
            exc,
            extra={"event": "github_report_failed", "binding": binding.id, "state": state},
        )
