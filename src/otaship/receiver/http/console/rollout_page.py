"""A rollout: its stages on a timeline with their counts, each device's outcome,
why it halted or ended, Promote, Pause or Resume, and Abort; kept current by
server-sent events.

The stages are drawn from the rollout's own `stages` list, whatever their names
and number, so a new kind of stage shows without a change here. The live part
of the page is one template rendered on the server: the events carry it as
escaped HTML, and the page's script swaps it in when it changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from sqlmodel import Session, col, select
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from otaship.receiver.db.models import Group, Rollout
from otaship.receiver.http import wire
from otaship.receiver.http.console.guard import changing, signed_in
from otaship.receiver.http.console.render import PAGE_HEADERS, TEMPLATES, not_found, page, see_other
from otaship.receiver.http.console.session import Visitor
from otaship.receiver.http.management.rollouts import change_rollout
from otaship.receiver.http.views import rollout_view
from otaship.receiver.ids import is_id
from otaship.receiver.metrics import Metrics
from otaship.receiver.rollouts.store import RolloutError
from otaship.receiver.services import Services

# A page shows this many devices; the API lists them all.
DEVICES_SHOWN = 500
# How often an open page's stream looks for a change.
POLL_SECONDS = 1.0
# A stream ends after this long and the browser opens another: a server that
# stops is never held up for long by an open page.
STREAM_SECONDS = 30.0
ENDED = ("complete", "halted", "aborted", "rolled_back")


@dataclass(frozen=True)
class RolloutData:
    rollout: wire.Rollout
    group_names: dict[str, str]


def read_rollout(session: Session, owner_id: str, rollout_id: str) -> RolloutData | None:
    if not is_id(rollout_id):
        return None
    rollout = session.get(Rollout, rollout_id)
    if rollout is None or rollout.owner_id != owner_id:
        return None
    body = rollout_view(session=session, rollout=rollout, with_devices=True)
    ids = {body.group, body.canary, *(stage.group for stage in body.stages)}
    names = dict(
        session.exec(
            select(Group.id, Group.name).where(col(Group.id).in_(ids), col(Group.owner_id) == owner_id)
        ).all()
    )
    return RolloutData(rollout=body, group_names=names)


def live_context(visitor: Visitor, data: RolloutData, problem: str | None = None) -> dict[str, object]:
    body = data.rollout
    devices = body.devices or []
    return {
        "visitor": visitor,
        "rollout": body,
        "names": data.group_names,
        "devices": devices[:DEVICES_SHOWN],
        "devices_total": len(devices),
        "ended": body.ended_at is not None or body.state in ENDED,
        "problem": problem,
    }


def live_html(visitor: Visitor, data: RolloutData) -> str:
    return TEMPLATES.get_template("rollout_live.html").render(live_context(visitor, data))


async def rollout_response(
    request: Request, visitor: Visitor, problem: str | None = None, status: int = 200
) -> Response:
    rollout_id = str(request.path_params["rollout_id"])
    owner_id = visitor.user.id
    data = await Services.of(request).run_db(lambda session: read_rollout(session, owner_id, rollout_id))
    if data is None:
        return not_found(request, visitor, "rollout")
    return page(request, "rollout.html", live_context(visitor, data, problem), status=status)


@signed_in
async def rollout_page(request: Request, visitor: Visitor) -> Response:
    return await rollout_response(request, visitor)


@signed_in
async def rollout_events(request: Request, visitor: Visitor) -> Response:
    rollout_id = str(request.path_params["rollout_id"])
    owner_id = visitor.user.id
    services = Services.of(request)
    first = await services.run_db(lambda session: read_rollout(session, owner_id, rollout_id))
    if first is None:
        return not_found(request, visitor, "rollout")

    async def events() -> AsyncIterator[str]:
        # The browser reconnects a second after a stream ends.
        yield "retry: 1000\n\n"
        last = ""
        until = time.monotonic() + STREAM_SECONDS
        data: RolloutData | None = first
        while data is not None and time.monotonic() < until:
            html = live_html(visitor, data)
            if html != last:
                last = html
                yield f"event: rollout\ndata: {json.dumps({'html': html})}\n\n"
            await anyio.sleep(POLL_SECONDS)
            data = await services.run_db(lambda session: read_rollout(session, owner_id, rollout_id))

    headers = {**PAGE_HEADERS, "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def _change(request: Request, visitor: Visitor, action: str) -> Response:
    rollout_id = str(request.path_params["rollout_id"])
    if not is_id(rollout_id):
        return not_found(request, visitor, "rollout")
    services = Services.of(request)
    try:
        body = await change_rollout(
            services, owner_id=visitor.user.id, actor=visitor.user.email, rollout_id=rollout_id, action=action
        )
    except LookupError:
        return not_found(request, visitor, "rollout")
    except RolloutError as exc:
        return await rollout_response(request, visitor, problem=f"Not {action}d: {exc}", status=409)
    if action == "promote" and body.state == "fleet":
        Metrics.of(request).deploys.labels("promotion").inc()
    return see_other(f"/console/rollouts/{rollout_id}")


@changing
async def promote(request: Request, visitor: Visitor, form: FormData) -> Response:
    return await _change(request, visitor, "promote")


@changing
async def abort(request: Request, visitor: Visitor, form: FormData) -> Response:
    return await _change(request, visitor, "abort")


@changing
async def pause(request: Request, visitor: Visitor, form: FormData) -> Response:
    return await _change(request, visitor, "pause")


@changing
async def resume(request: Request, visitor: Visitor, form: FormData) -> Response:
    return await _change(request, visitor, "resume")
