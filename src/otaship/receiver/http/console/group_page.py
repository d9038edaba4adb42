"""A group: its devices (searched, sorted, paged in the database), its deploy
history, its rollouts, and the deploy form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.db.groups import get_owned_group
from otaship.receiver.db.models import Group
from otaship.receiver.fields import BadField, choice, text, whole_number
from otaship.receiver.http.console import reads
from otaship.receiver.http.console.guard import signed_in
from otaship.receiver.http.console.render import not_found, page
from otaship.receiver.http.console.session import Visitor
from otaship.receiver.http.management.deploy_form import DEFAULT_CANARY_TIMEOUT
from otaship.receiver.ids import utcnow
from otaship.receiver.services import Services

MAX_SEARCH_LENGTH = 100


@dataclass
class DeployFormState:
    """What the deploy form shows: the values sent, and each field's error."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    # An error that belongs to no one field (the plan, a conflict with a rollout).
    general: str | None = None


FORM_DEFAULTS = {
    "canary_timeout": str(DEFAULT_CANARY_TIMEOUT),
    "success_threshold": "1",
    "error_threshold": "0",
    "soak": "0",
    "auto_promote": "true",
}


def device_query(request: Request) -> reads.DeviceQuery:
    """The devices table's parameters; a bad one falls back to its default."""
    params = request.query_params
    try:
        search = text(params.get("q"), name="q", max_length=MAX_SEARCH_LENGTH).strip()
    except BadField:
        search = ""
    try:
        sort = choice(params.get("sort"), name="sort", choices=tuple(reads.SORTS), default="id")
    except BadField:
        sort = "id"
    try:
        page_number = whole_number(
            params.get("page"), name="page", default=1, minimum=1, maximum=reads.MAX_PAGE
        )
    except BadField:
        page_number = 1
    return reads.DeviceQuery(
        search=search, sort=sort, descending=params.get("dir") == "desc", page=page_number
    )


@dataclass(frozen=True)
class GroupData:
    group: Group
    parent: Group | None
    devices: reads.DevicePage
    history: list[reads.HistoryRow]
    rollouts: list[Any]
    subgroups: list[Group]


async def group_response(
    request: Request, visitor: Visitor, group_id: str, form: DeployFormState | None = None, status: int = 200
) -> Response:
    services = Services.of(request)
    query = device_query(request)
    since = reads.online_since(utcnow(), services.settings.online_within)
    owner_id = visitor.user.id

    def read(session: Session) -> GroupData | None:
        group = get_owned_group(session=session, owner_id=owner_id, group_id=group_id)
        if group is None:
            return None
        parent = (
            get_owned_group(session=session, owner_id=owner_id, group_id=group.parent_id)
            if group.parent_id
            else None
        )
        return GroupData(
            group=group,
            parent=parent,
            devices=reads.devices_page(session=session, group_id=group.id, query=query, online_since=since),
            history=reads.deploy_history(session=session, group_id=group.id),
            rollouts=reads.group_rollouts(session=session, group_id=group.id),
            subgroups=reads.subgroups(session=session, owner_id=owner_id, group_id=group.id),
        )

    data = await services.run_db(read)
    if data is None:
        return not_found(request, visitor, "group")
    state = form or DeployFormState()
    values = {**FORM_DEFAULTS, **state.values}
    return page(
        request,
        "group.html",
        {
            "visitor": visitor,
            "data": data,
            "query": query,
            "since": since,
            "form": state,
            "values": values,
        },
        status=status,
    )


@signed_in
async def group_page(request: Request, visitor: Visitor) -> Response:
    return await group_response(request, visitor, str(request.path_params["group_id"]))
