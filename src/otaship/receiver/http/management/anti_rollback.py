"""A group's anti-rollback setting: read it, turn it on or off (what `otaship
group anti-rollback` does, for the owner's API key)."""

from __future__ import annotations

from sqlmodel import Session, col, select
from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.db.groups import lock_tree
from otaship.receiver.db.models import Group
from otaship.receiver.fields import BadField
from otaship.receiver.http import wire
from otaship.receiver.http.management.group_routes import group_route
from otaship.receiver.http.management.json_body import BodyTooLarge, read_json
from otaship.receiver.http.management.route import owner_route
from otaship.receiver.http.responses import message
from otaship.receiver.rollouts.admission import secure_version_floor

READ_ERROR = "Error when getting the anti-rollback setting"
CHANGE_ERROR = "Error when changing the anti-rollback setting"
BAD_BODY = 'Expected a JSON object {"enabled": true} or {"enabled": false}'
# {"enabled": false} and some room for whitespace.
MAX_BODY_BYTES = 1024


def view(session: Session, group: Group) -> wire.AntiRollback:
    floor = secure_version_floor(session=session, group=group)
    return wire.AntiRollback(
        group=group.id, enabled=group.anti_rollback, set_by=floor.set_by, secure_version=floor.secure_version
    )


async def get_anti_rollback(request: Request) -> Response:
    try:
        route = group_route(request)
    except BadField as exc:
        return message(400, str(exc))
    return await route.read(view)


async def put_anti_rollback(request: Request) -> Response:
    try:
        route = group_route(request)
        change = await read_json(
            request,
            wire.AntiRollbackChange,
            limit=MAX_BODY_BYTES,
            too_large=f"The body is over {MAX_BODY_BYTES} bytes; it is one boolean",
            expected=BAD_BODY,
        )
    except BadField as exc:
        return message(400, str(exc))
    except BodyTooLarge as exc:
        return message(413, str(exc))

    def write(session: Session, group: Group) -> wire.AntiRollback:
        # Under the tree's lock, as a deploy checks the setting: a deploy either
        # committed before the change, or sees it.
        lock_tree(session=session, group_id=group.id)
        locked = session.exec(select(Group).where(col(Group.id) == group.id).with_for_update()).one()
        locked.anti_rollback = change.enabled
        session.add(locked)
        session.flush()
        return view(session, locked)

    return await route.write(write)


routes = [
    owner_route("/v1/groups/{group_id}/anti-rollback", get_anti_rollback, "GET", failure=READ_ERROR),
    owner_route("/v1/groups/{group_id}/anti-rollback", put_anti_rollback, "PUT", failure=CHANGE_ERROR),
]
