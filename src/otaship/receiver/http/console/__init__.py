"""The web console: server-rendered pages for people, beside the API.

Everything under /console is for a signed-in owner (a session cookie), and
/docs is the API reference. The pages are not API operations: /openapi.json
leaves them out (`PATHS` says which they are).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from otaship.receiver.http.console import (
    deploy_page,
    docs_page,
    fleet_page,
    group_page,
    keys_page,
    rollout_page,
    sign_in_page,
)
from otaship.receiver.http.console.render import STATIC

PREFIX = "/console"


async def home(request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/", status_code=307)


pages: list[BaseRoute] = [
    Route("/", fleet_page.fleet_page, methods=["GET"]),
    Route("/sign-in", sign_in_page.sign_in_form, methods=["GET"]),
    Route("/sign-in", sign_in_page.sign_in_post, methods=["POST"]),
    Route("/sign-out", sign_in_page.sign_out, methods=["POST"]),
    Route("/groups/{group_id}", group_page.group_page, methods=["GET"]),
    Route("/groups/{group_id}/deploy", deploy_page.deploy, methods=["POST"]),
    Route("/rollouts/{rollout_id}", rollout_page.rollout_page, methods=["GET"]),
    Route("/rollouts/{rollout_id}/events", rollout_page.rollout_events, methods=["GET"]),
    Route("/rollouts/{rollout_id}/promote", rollout_page.promote, methods=["POST"]),
    Route("/rollouts/{rollout_id}/abort", rollout_page.abort, methods=["POST"]),
    Route("/rollouts/{rollout_id}/pause", rollout_page.pause, methods=["POST"]),
    Route("/rollouts/{rollout_id}/resume", rollout_page.resume, methods=["POST"]),
    Route("/keys", keys_page.keys_page, methods=["GET"]),
    Route("/keys", keys_page.create_key, methods=["POST"]),
    Route("/keys/{key_id}/revoke", keys_page.revoke_key, methods=["POST"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]

routes: list[BaseRoute] = [
    Route("/", home, methods=["GET"]),
    Route("/docs", docs_page.docs_page, methods=["GET"]),
    Mount(PREFIX, routes=pages),
]
# The routes that are pages, not API operations.
PATHS = ("/", "/docs", PREFIX)
