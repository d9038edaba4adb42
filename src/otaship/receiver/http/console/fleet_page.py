"""The fleet: the owner's groups as a tree, with versions, devices and who is online."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.http.console import reads
from otaship.receiver.http.console.guard import signed_in
from otaship.receiver.http.console.render import page
from otaship.receiver.http.console.session import Visitor
from otaship.receiver.http.console.version_bar import WIDTH, bar_segments
from otaship.receiver.ids import utcnow
from otaship.receiver.services import Services


@signed_in
async def fleet_page(request: Request, visitor: Visitor) -> Response:
    services = Services.of(request)
    since = reads.online_since(utcnow(), services.settings.online_within)
    groups = await services.run_db(
        lambda session: reads.fleet(session=session, owner_id=visitor.user.id, online_since=since)
    )
    rows = [(summary, bar_segments(summary.versions)) for summary in groups]
    return page(
        request,
        "fleet.html",
        {
            "visitor": visitor,
            "rows": rows,
            "bar_width": WIDTH,
            "devices": sum(s.devices for s in groups),
            "online": sum(s.online for s in groups),
            "online_within": int(services.settings.online_within),
        },
    )
