"""The two reads every owned resource with a per-group history has: one by its
id (with or without its devices), and the latest of a group's, newest first.

Rollouts and plain deploys answer alike: a bad parameter is a 400 naming it, an
id that is not the owner's (or no id at all) is a 404, and so is a group that
is not theirs.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.db.groups import get_owned_group
from otaship.receiver.fields import BadField, flag, text
from otaship.receiver.http import wire
from otaship.receiver.http.auth import owner_of
from otaship.receiver.http.responses import answer, message
from otaship.receiver.ids import is_id
from otaship.receiver.services import Services

# How many a group's list gives, newest first.
LIST_LIMIT = 100
# Room for an id (24 characters) and then some: anything longer is no id at all.
MAX_ID_LENGTH = 64

# (session, owner id, the resource's id, with its devices) -> its body, or None
# when the owner has no such resource.
OneView = Callable[[Session, str, str, bool], wire.Wire | None]
# (session, owner id, group id) -> the group's list; the group is the owner's.
ListView = Callable[[Session, str, str], wire.Wire]


def path_id(request: Request, name: str) -> str:
    # Anything but an id is a 404 further on; only what no id could hold is refused here.
    return text(request.path_params[name], name=name, max_length=MAX_ID_LENGTH)


async def get_one(request: Request, *, id_param: str, not_found: str, view: OneView) -> Response:
    owner_id = owner_of(request).id
    try:
        item_id = path_id(request, id_param)
        with_devices = flag(request.query_params.get("devices"), name="devices", default=True)
    except BadField as exc:
        return message(400, str(exc))

    def read(session: Session) -> wire.Wire | None:
        return view(session, owner_id, item_id, with_devices) if is_id(item_id) else None

    body = await Services.of(request).run_db(read)
    return message(404, not_found) if body is None else answer(body)


async def list_of_group(request: Request, view: ListView) -> Response:
    owner_id = owner_of(request).id
    try:
        group_id = text(request.query_params.get("group"), name="group", max_length=MAX_ID_LENGTH)
    except BadField as exc:
        return message(400, str(exc))
    if not group_id:
        return message(400, "group is a mandatory parameter")

    def read(session: Session) -> wire.Wire | None:
        if get_owned_group(session=session, owner_id=owner_id, group_id=group_id) is None:
            return None
        return view(session, owner_id, group_id)

    body = await Services.of(request).run_db(read)
    return message(404, "No such group") if body is None else answer(body)
