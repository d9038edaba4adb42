"""Plain deploys: the devices each one triggered, their outcomes and retries."""

from __future__ import annotations

from sqlmodel import Session, col, select
from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.db.groups import get_owned_group
from otaship.receiver.db.models import PlainDeploy
from otaship.receiver.fields import BadField, flag, text
from otaship.receiver.http import wire
from otaship.receiver.http.auth import owner_of
from otaship.receiver.http.management.route import owner_route
from otaship.receiver.http.responses import answer, message
from otaship.receiver.http.views import deployment_view
from otaship.receiver.ids import is_id
from otaship.receiver.services import Services

NOT_FOUND = "No such deployment"
READ_ERROR = "Error when getting deployments"
LIST_LIMIT = 100
# Room for an id (24 characters) and then some: anything longer is no id at all.
MAX_ID_LENGTH = 64


async def get_deployment(request: Request) -> Response:
    owner_id = owner_of(request).id
    try:
        deployment_id = text(
            request.path_params["deployment_id"], name="deployment_id", max_length=MAX_ID_LENGTH
        )
        with_devices = flag(request.query_params.get("devices"), name="devices", default=True)
    except BadField as exc:
        return message(400, str(exc))

    def read(session: Session) -> wire.Deployment | None:
        plain = session.get(PlainDeploy, deployment_id) if is_id(deployment_id) else None
        if plain is None or plain.owner_id != owner_id:
            return None
        return deployment_view(session=session, plain=plain, with_devices=with_devices)

    body = await Services.of(request).run_db(read)
    return message(404, NOT_FOUND) if body is None else answer(body)


async def list_deployments(request: Request) -> Response:
    owner_id = owner_of(request).id
    try:
        group_id = text(request.query_params.get("group"), name="group", max_length=MAX_ID_LENGTH)
    except BadField as exc:
        return message(400, str(exc))
    if not group_id:
        return message(400, "group is a mandatory parameter")

    def read(session: Session) -> wire.DeploymentList | None:
        if get_owned_group(session=session, owner_id=owner_id, group_id=group_id) is None:
            return None
        followed = session.exec(
            select(PlainDeploy)
            .where(col(PlainDeploy.group_id) == group_id, col(PlainDeploy.owner_id) == owner_id)
            .order_by(col(PlainDeploy.started_at).desc(), col(PlainDeploy.deployment_id).desc())
            .limit(LIST_LIMIT)
        ).all()
        return wire.DeploymentList(
            deployments=[deployment_view(session=session, plain=p, with_devices=False) for p in followed]
        )

    body = await Services.of(request).run_db(read)
    return message(404, "No such group") if body is None else answer(body)


routes = [
    owner_route("/v1/deployments", list_deployments, "GET", failure=READ_ERROR),
    owner_route("/v1/deployments/{deployment_id}", get_deployment, "GET", failure=READ_ERROR),
]
