"""Rollouts: read their progress, promote a held wave, pause, resume, or abort."""

from __future__ import annotations

from sqlmodel import Session, col, select
from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.db.enums import State
from otaship.receiver.db.models import Rollout
from otaship.receiver.fields import BadField
from otaship.receiver.http import wire
from otaship.receiver.http.auth import owner_of
from otaship.receiver.http.management.owned import LIST_LIMIT, get_one, list_of_group, path_id
from otaship.receiver.http.management.route import owner_route
from otaship.receiver.http.responses import answer, message
from otaship.receiver.http.views import rollout_view
from otaship.receiver.ids import is_id, utcnow
from otaship.receiver.metrics import Metrics
from otaship.receiver.rollouts.store import RolloutError, abort, manual_promote, pause, resume
from otaship.receiver.services import Services

NOT_FOUND = "No such rollout"
READ_ERROR = "Error when getting rollouts"
CHANGE_ERROR = "Error when changing the rollout"


def _one(session: Session, owner_id: str, rollout_id: str, with_devices: bool) -> wire.Rollout | None:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None or rollout.owner_id != owner_id:
        return None
    return rollout_view(session=session, rollout=rollout, with_devices=with_devices)


def _of_group(session: Session, owner_id: str, group_id: str) -> wire.RolloutList:
    rollouts = session.exec(
        select(Rollout)
        .where(col(Rollout.group_id) == group_id, col(Rollout.owner_id) == owner_id)
        .order_by(col(Rollout.created_at).desc(), col(Rollout.id).desc())
        .limit(LIST_LIMIT)
    ).all()
    return wire.RolloutList(
        rollouts=[rollout_view(session=session, rollout=r, with_devices=False) for r in rollouts]
    )


async def get_rollout(request: Request) -> Response:
    return await get_one(request, id_param="rollout_id", not_found=NOT_FOUND, view=_one)


async def list_rollouts(request: Request) -> Response:
    return await list_of_group(request, _of_group)


async def change_rollout(
    services: Services, *, owner_id: str, actor: str, rollout_id: str, action: str
) -> wire.Rollout:
    """Promote, abort, pause or resume the owner's rollout, committed, and its
    view afterwards; `actor` (who did it) is recorded with a pause or resume.
    LookupError: no such rollout of the owner's; RolloutError: not now. The API
    and the console both change rollouts through here."""

    def change(session: Session) -> wire.Rollout:
        now = utcnow()
        if action == "promote":
            rollout = manual_promote(
                session=session, rollout_id=rollout_id, owner_id=owner_id, notify=services.notify, now=now
            )
        elif action in ("pause", "resume"):
            control = pause if action == "pause" else resume
            rollout = control(session=session, rollout_id=rollout_id, owner_id=owner_id, actor=actor, now=now)
        else:
            rollout = abort(session=session, rollout_id=rollout_id, owner_id=owner_id, now=now)
        session.flush()
        return rollout_view(session=session, rollout=rollout, with_devices=False)

    body = await services.run_write(change)
    services.deployed()
    return body


async def _change(request: Request, action: str) -> Response:
    owner = owner_of(request)
    try:
        rollout_id = path_id(request, "rollout_id")
    except BadField as exc:
        return message(400, str(exc))
    if not is_id(rollout_id):
        return message(404, NOT_FOUND)
    services = Services.of(request)
    try:
        body = await change_rollout(
            services, owner_id=owner.id, actor=owner.email, rollout_id=rollout_id, action=action
        )
    except LookupError:
        return message(404, NOT_FOUND)
    except RolloutError as exc:
        return message(409, str(exc))
    if action == "promote" and body.state == State.ABORTED:
        # Committed: the group runs something newer than the rollout, which
        # ended rather than overwrite it.
        return message(409, f"the rollout was aborted: {body.reason}")
    if action == "promote" and body.state in (State.HALTED, State.ROLLED_BACK):
        # Committed: the image no longer passes the group's signing keys (and,
        # with rollback on, its waves were given back what they ran).
        what = "halted" if body.state == State.HALTED else "halted and rolled back"
        return message(409, f"the rollout was {what}: {body.reason}")
    if action == "promote" and body.state == "fleet":
        Metrics.of(request).deploys.labels("promotion").inc()
    return answer(body)


async def promote_rollout(request: Request) -> Response:
    return await _change(request, "promote")


async def abort_rollout(request: Request) -> Response:
    return await _change(request, "abort")


async def pause_rollout(request: Request) -> Response:
    return await _change(request, "pause")


async def resume_rollout(request: Request) -> Response:
    return await _change(request, "resume")


routes = [
    owner_route("/v1/rollouts", list_rollouts, "GET", failure=READ_ERROR),
    owner_route("/v1/rollouts/{rollout_id}", get_rollout, "GET", failure=READ_ERROR),
    owner_route("/v1/rollouts/{rollout_id}/promote", promote_rollout, "POST", failure=CHANGE_ERROR),
    owner_route("/v1/rollouts/{rollout_id}/abort", abort_rollout, "POST", failure=CHANGE_ERROR),
    owner_route("/v1/rollouts/{rollout_id}/pause", pause_rollout, "POST", failure=CHANGE_ERROR),
    owner_route("/v1/rollouts/{rollout_id}/resume", resume_rollout, "POST", failure=CHANGE_ERROR),
]
