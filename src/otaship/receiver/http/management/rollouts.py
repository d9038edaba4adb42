"""Rollouts: read their progress, promote a held canary, or abort."""
from __future__ import annotations

from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from otaship.receiver.db.groups import get_owned_group
from otaship.receiver.db.models import Rollout
from otaship.receiver.fields import BadField, flag, text
from otaship.receiver.http.auth import authenticated_owner
from otaship.receiver.http.responses import UNAUTHORIZED, database_errors, message, server_error
from otaship.receiver.ids import is_id
from otaship.receiver.metrics import Metrics
from otaship.receiver.rollouts.policy import ABORTED
from otaship.receiver.rollouts.store import RolloutError, abort, manual_promote, rollout_json
from otaship.receiver.services import Services

NOT_FOUND = "No such rollout"
READ_ERROR = "Error when getting rollouts"
CHANGE_ERROR = "Error when changing the rollout"
LIST_LIMIT = 100
# Room for an id (24 characters) and then some: anything longer is no id at all.
MAX_ID_LENGTH = 64


def _rollout_id(request: Request) -> str:
    # Anything but an id is a 404 further on; only what no id could hold is refused here.
    return text(request.path_params["rollout_id"], name="rollout_id", max_length=MAX_ID_LENGTH)


@database_errors(READ_ERROR)
async def get_rollout(request: Request) -> Response:
    owner = await authenticated_owner(request)
    if owner is None:
        return message(401, UNAUTHORIZED)
    try:
        rollout_id = _rollout_id(request)
        with_devices = flag(request.query_params.get("devices"), name="devices", default=True)
    except BadField as exc:
        return message(400, str(exc))

    def read(session: Session) -> dict[str, Any] | None:
        rollout = session.get(Rollout, rollout_id) if is_id(rollout_id) else None
        if rollout is None or rollout.owner_id != owner.id:
            return None
        return rollout_json(session=session, rollout=rollout, with_devices=with_devices)

    try:
        body = await Services.of(request).run_db(read)
    except SQLAlchemyError as exc:
        return server_error(READ_ERROR, exc)
    return message(404, NOT_FOUND) if body is None else JSONResponse(body)


@database_errors(READ_ERROR)
async def list_rollouts(request: Request) -> Response:
    owner = await authenticated_owner(request)
    if owner is None:
        return message(401, UNAUTHORIZED)
    try:
        group_id = text(request.query_params.get("group"), name="group", max_length=MAX_ID_LENGTH)
    except BadField as exc:
        return message(400, str(exc))
    if not group_id:
        return message(400, "group is a mandatory parameter")

    def read(session: Session) -> list[dict[str, Any]] | None:
        if get_owned_group(session=session, owner_id=owner.id, group_id=group_id) is None:
            return None
        rollouts = session.exec(
            select(Rollout)
            .where(col(Rollout.group_id) == group_id, col(Rollout.owner_id) == owner.id)
            .order_by(col(Rollout.created_at).desc(), col(Rollout.id).desc())
            .limit(LIST_LIMIT)
        ).all()
        return [rollout_json(session=session, rollout=r, with_devices=False) for r in rollouts]

    try:
        body = await Services.of(request).run_db(read)
    except SQLAlchemyError as exc:
        return server_error(READ_ERROR, exc)
    if body is None:
        return message(404, "No such group")
    return JSONResponse({"rollouts": body})


async def _change(request: Request, action: str) -> Response:
    owner = await authenticated_owner(request)
    if owner is None:
        return message(401, UNAUTHORIZED)
    try:
        rollout_id = _rollout_id(request)
    except BadField as exc:
        return message(400, str(exc))
    if not is_id(rollout_id):
        return message(404, NOT_FOUND)
    services = Services.of(request)

    def change(session: Session) -> dict[str, Any]:
        if action == "promote":
            rollout = manual_promote(
                session=session, rollout_id=rollout_id, owner_id=owner.id, notify=services.notify
            )
        else:
            rollout = abort(session=session, rollout_id=rollout_id, owner_id=owner.id)
        session.flush()
        return rollout_json(session=session, rollout=rollout, with_devices=False)

    try:
        body = await services.run_write(change)
    except LookupError:
        return message(404, NOT_FOUND)
    except RolloutError as exc:
        return message(409, str(exc))
    except SQLAlchemyError as exc:
        return server_error(CHANGE_ERROR, exc)
    services.deployed()
    if action == "promote" and body["state"] == ABORTED:
        # Committed: the group runs something newer than the rollout, which
        # ended rather than overwrite it.
        return message(409, f"the rollout was aborted: {body['reason']}")
    if action == "promote" and body["state"] == "fleet":
        Metrics.of(request).deploys.labels("promotion").inc()
    return JSONResponse(body)


@database_errors(CHANGE_ERROR)
async def promote_rollout(request: Request) -> Response:
    return await _change(request, "promote")


@database_errors(CHANGE_ERROR)
async def abort_rollout(request: Request) -> Response:
    return await _change(request, "abort")


routes = [
    Route("/v1/rollouts", list_rollouts, methods=["GET"]),
    Route("/v1/rollouts/{rollout_id}", get_rollout, methods=["GET"]),
    Route("/v1/rollouts/{rollout_id}/promote", promote_rollout, methods=["POST"]),
    Route("/v1/rollouts/{rollout_id}/abort", abort_rollout, methods=["POST"]),
]
