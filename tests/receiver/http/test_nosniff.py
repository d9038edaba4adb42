"""X-Content-Type-Options: nosniff on every answer of every route, errors included."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
from sqlmodel import select
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient

from otaship.receiver.app import create_app
from otaship.receiver.db.engine import read_session
from otaship.receiver.db.models import Deployment
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from otaship.receiver.storage import Storage, StorageError
from tests.conftest import Fleet
from tests.esp_image import build_image
from tests.receiver.http.management.test_ota import deploy, post


class FailingReads(Storage):
    """Storage whose reads fail on demand: with a StorageError the route
    handles, or with an error nothing expects (the app's last-resort 500)."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.failure: Exception | None = None

    def put(self, key: str, source: Path) -> None:
        self.inner.put(key, source)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def local_path(self, key: str) -> Path:
        if self.failure is not None:
            raise self.failure
        return self.inner.local_path(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def check(self) -> None:
        self.inner.check()


def assert_nosniff(response: httpx.Response) -> None:
    request = response.request
    assert response.headers.get_list("x-content-type-options") == ["nosniff"], (
        f"{request.method} {request.url.path} answered {response.status_code} without nosniff"
    )


def flat_routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[Route]:
    """Every route, those under a mount (the console) with the mount's path;
    a mount of files (the console's scripts and styles) is checked apart."""
    for route in routes:
        if isinstance(route, Route):
            yield Route(prefix + route.path, route.endpoint, methods=route.methods)
        elif isinstance(route, Mount) and route.routes:
            yield from flat_routes(route.routes, prefix + route.path)
        else:
            assert isinstance(route, Mount) and isinstance(route.app, StaticFiles), route


def test_every_route_and_error_answers_nosniff(settings: Settings, services: Services, fleet: Fleet) -> None:
    storage = FailingReads(services.storage)
    services = dataclasses.replace(services, storage=storage)
    owner = fleet.owner()
    group = fleet.group(owner)
    canary = fleet.group(owner, name="canary", parent=group)
    fleet.device(canary, name="bench", firmware_version="0.9.0")
    app = create_app(settings, services=services)
    routes = list(flat_routes(app.routes))
    with TestClient(app, raise_server_exceptions=False) as client:
        deploy(client, owner, group, "1.0.0")
        staged = post(
            client,
            owner,
            {
                "group": group.id,
                "token": group.token,
                "version": "1.1.0",
                "canary": canary.id,
                "auto_promote": "false",
            },
            build_image("1.1.0"),
        )
        assert staged.status_code == 201
        assert_nosniff(staged)
        params = {
            "group_id": group.id,
            "credentials": f"{group.id}{group.token}",
            "rollout_id": staged.json()["rollout"]["id"],
            # A deploy's id: without a broker it is not followed, so its view is a 404.
            "deployment_id": _first_deployment(services),
            "key_id": "a" * 24,
            "key": "a" * 24,
            "binding_id": "a" * 24,
        }
        statuses: set[int] = set()

        def check(method: str, url: str, **kwargs: object) -> httpx.Response:
            response: httpx.Response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
            assert_nosniff(response)
            statuses.add(response.status_code)
            return response

        # Every method of every route, with the owner's key and without one.
        walked = set()
        for route in routes:
            url = route.path.format(**params)
            for method in sorted(route.methods or ()):
                for headers in (owner.headers, {}):
                    check(method, url, headers=headers)
                walked.add((route.path, method))
        assert walked == {(r.path, m) for r in routes for m in (r.methods or ())}
        for static in ("/console/static/console.css", "/console/static/console.js"):
            assert check("GET", static).status_code == 200

        download = f"/v1/ota/group/download/{group.id}{group.token}"
        for method in ("GET", "HEAD"):
            assert check(method, download, headers={"Range": "bytes=0-99"}).status_code == 206
            assert check(method, download, headers={"Range": "bytes=0-9,20-29"}).status_code == 206
            assert check(method, download, headers={"Range": "bytes=99999999-"}).status_code == 416
            assert check(method, f"/v1/ota/group/download/{group.id}{'x' * 16}").status_code == 404
            storage.failure = StorageError("bucket is not reachable")
            assert check(method, download).status_code == 500
            storage.failure = RuntimeError("nothing expects this")
            assert check(method, download).status_code == 500
            storage.failure = None
        assert check("GET", "/v1/ota/group?offset=-1", headers=owner.headers).status_code == 400
        assert check("GET", "/v1/ota/group/latest/" + "0" * 24).status_code == 404
        assert check("GET", "/no/such/route").status_code == 404
        assert check("DELETE", "/v1/ota/group", headers=owner.headers).status_code == 405
        assert check("PUT", download).status_code == 405
        assert (
            check(
                "POST",
                "/v1/ota/group",
                headers=owner.headers,
                data={"group": group.id, "token": group.token, "version": "1.0.0"},
                files={"firmware": ("firmware.bin", build_image("1.0.0", seed=1))},
            ).status_code
            == 409
        )
    assert {200, 206, 400, 401, 404, 405, 409, 416, 500} <= statuses


def _first_deployment(services: Services) -> str:
    with read_session(services.engine) as session:
        found = session.exec(select(Deployment.id)).first()
    assert found is not None
    return found
