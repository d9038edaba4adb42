"""The webhook deliveries table: each delivery once (per binding and
`X-GitHub-Delivery`), its outcome, and the queued ones as jobs claimed with a
lease, as the trigger outbox's rows are."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from otaship.receiver.db.models import GithubDelivery

# Claims of one job before it is given up: each ended with its replica gone
# (a job's own failures end it at once, with the reason).
MAX_ATTEMPTS = 3
LIST_LIMIT = 100


class Outcome(StrEnum):
    QUEUED = "queued"
    IGNORED = "ignored"
    DEPLOYED = "deployed"
    REFUSED = "refused"
    FAILED = "failed"


def find_delivery(*, session: Session, binding_id: str, delivery_id: str) -> GithubDelivery | None:
    return session.exec(
        select(GithubDelivery).where(
            col(GithubDelivery.binding_id) == binding_id, col(GithubDelivery.delivery_id) == delivery_id
        )
    ).first()


def claim_job(*, session: Session, now: datetime, lease: timedelta) -> GithubDelivery | None:
    """The oldest queued delivery nobody holds, now held by the caller until `now + lease`."""
    job = session.exec(
        select(GithubDelivery)
        .where(
            col(GithubDelivery.outcome) == Outcome.QUEUED,
            or_(col(GithubDelivery.claimed_until).is_(None), col(GithubDelivery.claimed_until) < now),
        )
        .order_by(col(GithubDelivery.id))
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if job is None:
        return None
    job.claimed_until = now + lease
    job.attempts += 1
    session.add(job)
    session.flush()
    return job


def renew_claim(*, session: Session, job_id: int, until: datetime) -> None:
    session.execute(
        update(GithubDelivery)
        .where(col(GithubDelivery.id) == job_id, col(GithubDelivery.outcome) == Outcome.QUEUED)
        .values(claimed_until=until)
    )


def finish_job(
    *,
    session: Session,
    job_id: int,
    outcome: Outcome,
    reason: str,
    now: datetime,
    version: str | None = None,
    commit: str | None = None,
    rollout_id: str | None = None,
    github_deployment_id: int | None = None,
) -> None:
    session.execute(
        update(GithubDelivery)
        .where(col(GithubDelivery.id) == job_id)
        .values(
            outcome=outcome,
            reason=reason[:1000],
            finished_at=now,
            claimed_until=None,
            version=version,
            commit=commit,
            rollout_id=rollout_id,
            github_deployment_id=github_deployment_id,
        )
    )


def owned_deliveries(*, session: Session, owner_id: str, binding_id: str | None) -> list[GithubDelivery]:
    """The owner's latest deliveries, newest first."""
    query = select(GithubDelivery).where(col(GithubDelivery.owner_id) == owner_id)
    if binding_id is not None:
        query = query.where(col(GithubDelivery.binding_id) == binding_id)
    return list(
        session.exec(
            query.order_by(col(GithubDelivery.received_at).desc(), col(GithubDelivery.id).desc()).limit(
                LIST_LIMIT
            )
        )
    )
