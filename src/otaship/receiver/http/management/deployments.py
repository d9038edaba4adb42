"""Plain deploys: the devices each one triggered, their outcomes and retries."""

from __future__ import annotations

from sqlmodel import Session, col, select
from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.db.models import PlainDeploy
from otaship.receiver.http import wire
from otaship.receiver.http.management.owned import LIST_LIMIT, get_one, list_of_group
from otaship.receiver.http.management.route import owner_route
from otaship.receiver.http.views import deployment_view

NOT_FOUND = "No such deployment"
READ_ERROR = "Error when getting deployments"


def _one(session: Session, owner_id: str, deployment_id: str, with_devices: bool) -> wire.Deployment | None:
    plain = session.get(PlainDeploy, deployment_id)
    if plain is None or plain.owner_id != owner_id:
        return None
    return deployment_view(session=session, plain=plain, with_devices=with_devices)


def _of_group(session: Session, owner_id: str, group_id: str) -> wire.DeploymentList:
    followed = session.exec(
        select(PlainDeploy)
        .where(col(PlainDeploy.group_id) == group_id, col(PlainDeploy.owner_id) == owner_id)
        .order_by(col(PlainDeploy.started_at).desc(), col(PlainDeploy.deployment_id).desc())
        .limit(LIST_LIMIT)
    ).all()
    return wire.DeploymentList(
        deployments=[deployment_view(session=session, plain=p, with_devices=False) for p in followed]
    )


async def get_deployment(request: Request) -> Response:
    return await get_one(request, id_param="deployment_id", not_found=NOT_FOUND, view=_one)


async def list_deployments(request: Request) -> Response:
    return await list_of_group(request, _of_group)


routes = [
    owner_route("/v1/deployments", list_deployments, "GET", failure=READ_ERROR),
    owner_route("/v1/deployments/{deployment_id}", get_deployment, "GET", failure=READ_ERROR),
]
