"""A stand-in for GitHub's REST API, since GitHub itself cannot run in these tests.

Two small ASGI apps, each served by uvicorn on its own port, as GitHub serves
its API and its release assets on two hosts: `GET
/repos/{owner}/{repo}/releases/assets/{id}` with `Accept:
application/octet-stream` answers 302 to the asset host, which serves the
bytes. It also serves the commit of a ref and deployments with their statuses.
Each app records every request it was sent (method, path, query, headers,
body), so that tests assert exactly what the receiver sent; the payloads are
shaped like GitHub's documented examples.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.services import free_port


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class AssetHost:
    """The release assets' bytes by asset id, and how the host misbehaves."""

    assets: dict[int, bytes] = field(default_factory=dict)
    # Requests to fail with 503 before one succeeds.
    failures: int = 0
    # Seconds to wait before the first byte, for the requests that do not fail.
    delay: float = 0.0
    # While set, requests wait for it (a download the test holds back).
    gate: threading.Event | None = None
    seen: list[Seen] = field(default_factory=list)


class GithubStandIn:
    def __init__(self) -> None:
        self.api_seen: list[Seen] = []
        self.host = AssetHost()
        self.commits: dict[str, str] = {}
        self.deployments: list[dict[str, Any]] = []
        self.statuses: list[tuple[int, dict[str, Any]]] = []
        self.api_url = ""
        self.asset_url = ""
        # Deployment and status requests to answer 502 before the API works again.
        self.api_failures = 0
        # Deployments to create and then answer 502, as a GitHub that acted but
        # failed before it answered: the client cannot tell they were created.
        self.created_then_failed = 0
        # Seconds to wait after creating a deployment before answering it.
        self.creation_delay = 0.0

    async def _record(self, request: Request, into: list[Seen]) -> Seen:
        seen = Seen(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
        )
        into.append(seen)
        return seen

    # --- api.github.com ---

    async def asset(self, request: Request) -> Response:
        await self._record(request, self.api_seen)
        asset_id = int(request.path_params["asset_id"])
        if asset_id not in self.host.assets:
            return JSONResponse({"message": "Not Found"}, status_code=404)
        if request.headers.get("accept") != "application/octet-stream":
            return JSONResponse({"id": asset_id, "size": len(self.host.assets[asset_id])})
        # GitHub answers 302 to a signed URL on another host.
        return RedirectResponse(f"{self.asset_url}/assets/{asset_id}?X-Amz-Signature=abc", status_code=302)

    async def commit(self, request: Request) -> Response:
        await self._record(request, self.api_seen)
        sha = self.commits.get(request.path_params["ref"])
        if sha is None:
            return JSONResponse({"message": "No commit found for SHA"}, status_code=422)
        return PlainTextResponse(sha, media_type="application/vnd.github.sha")

    def _failing(self) -> Response | None:
        if self.api_failures > 0:
            self.api_failures -= 1
            return JSONResponse({"message": "Server Error"}, status_code=502)
        return None

    async def create_deployment(self, request: Request) -> Response:
        seen = await self._record(request, self.api_seen)
        if (failed := self._failing()) is not None:
            return failed
        body = seen.json()
        deployment = {
            "id": 1000 + len(self.deployments),
            "ref": body["ref"],
            "environment": body["environment"],
            "payload": body.get("payload", {}),
        }
        self.deployments.append(body)
        if self.created_then_failed > 0:
            self.created_then_failed -= 1
            return JSONResponse({"message": "Server Error"}, status_code=502)
        if self.creation_delay:
            await asyncio.sleep(self.creation_delay)
        return JSONResponse(deployment, status_code=201)

    async def list_deployments(self, request: Request) -> Response:
        await self._record(request, self.api_seen)
        if (failed := self._failing()) is not None:
            return failed
        wanted = request.query_params
        listed = [
            {
                "id": 1000 + index,
                "ref": body["ref"],
                "environment": body["environment"],
                "payload": body["payload"],
            }
            for index, body in enumerate(self.deployments)
            if body["ref"] == wanted.get("ref", body["ref"])
            and body["environment"] == wanted.get("environment", body["environment"])
        ]
        # Newest first, as GitHub lists them.
        return JSONResponse(listed[::-1])

    async def create_status(self, request: Request) -> Response:
        seen = await self._record(request, self.api_seen)
        if (failed := self._failing()) is not None:
            return failed
        self.statuses.append((int(request.path_params["deployment_id"]), seen.json()))
        return JSONResponse({"id": len(self.statuses), **seen.json()}, status_code=201)

    # --- the asset host ---

    async def download(self, request: Request) -> Response:
        await self._record(request, self.host.seen)
        if self.host.failures > 0:
            self.host.failures -= 1
            return PlainTextResponse("Service Unavailable", status_code=503)
        gate = self.host.gate
        if gate is not None:
            await asyncio.to_thread(gate.wait)
        if self.host.delay:
            await asyncio.sleep(self.host.delay)
        return Response(
            self.host.assets[int(request.path_params["asset_id"])], media_type="application/octet-stream"
        )

    def api_app(self) -> Starlette:
        repo = "/repos/{owner}/{repo}"
        return Starlette(
            routes=[
                Route(repo + "/releases/assets/{asset_id:int}", self.asset),
                Route(repo + "/commits/{ref:path}", self.commit),
                Route(repo + "/deployments", self.create_deployment, methods=["POST"]),
                Route(repo + "/deployments", self.list_deployments, methods=["GET"]),
                Route(
                    repo + "/deployments/{deployment_id:int}/statuses", self.create_status, methods=["POST"]
                ),
            ]
        )

    def asset_app(self) -> Starlette:
        return Starlette(routes=[Route("/assets/{asset_id:int}", self.download)])


@contextmanager
def _served(app: Starlette) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise AssertionError("the GitHub stand-in did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def github_standin() -> Iterator[GithubStandIn]:
    standin = GithubStandIn()
    with _served(standin.api_app()) as api_url, _served(standin.asset_app()) as asset_url:
        standin.api_url, standin.asset_url = api_url, asset_url
        yield standin
        # A gate left closed would hold the asset host's thread at exit.
        if standin.host.gate is not None:
            standin.host.gate.set()


def release_payload(
    *,
    action: str = "published",
    tag: str = "v1.4.0",
    assets: list[tuple[int, str, int]] | None = None,
    prerelease: bool = False,
    target_commitish: str = "main",
    repo: str = "octo-org/thermostat",
) -> dict[str, Any]:
    """A `release` event's payload, shaped like GitHub's documented example."""
    owner, name = repo.split("/")
    api = f"https://api.github.com/repos/{repo}"
    return {
        "action": action,
        "release": {
            "url": f"{api}/releases/1",
            "assets_url": f"{api}/releases/1/assets",
            "upload_url": f"https://uploads.github.com/repos/{repo}/releases/1/assets{{?name,label}}",
            "html_url": f"https://github.com/{repo}/releases/tag/{tag}",
            "id": 1,
            "node_id": "MDc6UmVsZWFzZTE=",
            "tag_name": tag,
            "target_commitish": target_commitish,
            "name": tag,
            "draft": False,
            "author": {"login": "octocat", "id": 1, "type": "User"},
            "prerelease": prerelease,
            "created_at": "2026-12-01T10:00:00Z",
            "published_at": "2026-12-01T10:05:00Z",
            "assets": [
                {
                    "url": f"{api}/releases/assets/{asset_id}",
                    "browser_download_url": f"https://github.com/{repo}/releases/download/{tag}/{asset_name}",
                    "id": asset_id,
                    "node_id": "MDEyOlJlbGVhc2VBc3NldDE=",
                    "name": asset_name,
                    "label": "",
                    "state": "uploaded",
                    "content_type": "application/octet-stream",
                    "size": size,
                    "download_count": 0,
                    "created_at": "2026-12-01T10:04:00Z",
                    "updated_at": "2026-12-01T10:04:30Z",
                }
                for asset_id, asset_name, size in (assets or [])
            ],
            "tarball_url": f"{api}/tarball/{tag}",
            "zipball_url": f"{api}/zipball/{tag}",
            "body": "Firmware release",
        },
        "repository": {
            "id": 1296269,
            "name": name,
            "full_name": repo,
            "owner": {"login": owner},
            "private": True,
        },
        "sender": {"login": "octocat", "id": 1, "type": "User"},
    }


def ping_payload(hook_id: int = 109948940) -> dict[str, Any]:
    """A `ping` event's payload, shaped like GitHub's documented example."""
    return {
        "zen": "Design for failure.",
        "hook_id": hook_id,
        "hook": {
            "type": "Repository",
            "id": hook_id,
            "name": "web",
            "active": True,
            "events": ["release"],
            "config": {
                "content_type": "json",
                "insecure_ssl": "0",
                "url": "https://ota.example.com/v1/webhooks/github",
            },
        },
        "repository": {"id": 1296269, "full_name": "octo-org/thermostat"},
        "sender": {"login": "octocat", "id": 1},
    }
