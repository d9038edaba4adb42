"""A route under /v1/groups/{group_id}/ (a group's signing keys, its anti-rollback
setting): its work runs on the group only when the group is the API key's owner's.

Another owner's group and a missing one are the same 404, so that a key learns
nothing of the ids that are not its owner's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.db.groups import get_owned_group
from otaship.receiver.db.models import Group
from otaship.receiver.http.auth import owner_of
from otaship.receiver.http.management.owned import path_id
from otaship.receiver.http.responses import answer, message
from otaship.receiver.http.wire import Wire
from otaship.receiver.services import Services

NO_GROUP = "No such group"

# (session, the owner's group) -> the route's body.
GroupWork = Callable[[Session, Group], Wire]


class NotFound(Exception):
    """Raised by a route's work for a 404 with this message (a key the group has
    not, say); the transaction is rolled back."""


@dataclass(frozen=True)
class GroupRoute:
    services: Services
    owner_id: str
    group_id: str

    async def read(self, work: GroupWork) -> Response:
        """`work`'s body, read in one session; or the group's 404."""
        return await self._answer(self.services.run_db, work, 200)

    async def write(self, work: GroupWork, status: int = 200) -> Response:
        """`work`'s body, in one write transaction, answered with `status`; or the
        group's 404, with nothing written."""
        return await self._answer(self.services.run_write, work, status)

    async def _answer(
        self, run: Callable[[Callable[[Session], Wire]], Awaitable[Wire]], work: GroupWork, status: int
    ) -> Response:
        def on_group(session: Session) -> Wire:
            group = get_owned_group(session=session, owner_id=self.owner_id, group_id=self.group_id)
            if group is None:
                raise NotFound(NO_GROUP)
            return work(session, group)

        try:
            body = await run(on_group)
        except NotFound as exc:
            return message(404, str(exc))
        return answer(body, status)


def group_route(request: Request) -> GroupRoute:
    """The key's owner and the path's group. Raises BadField (a 400) for a group_id
    that could be no id."""
    owner_id = owner_of(request).id
    return GroupRoute(services=Services.of(request), owner_id=owner_id, group_id=path_id(request, "group_id"))
