"""/openapi.json against the real app: every route documented, every answer as documented.

Bodies, headers and examples are validated with jsonschema (Draft 2020-12, the
dialect of OpenAPI 3.1), with the references resolved inside the document.
tests/receiver/http/test_fuzz.py then sends generated requests to every operation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from sqlalchemy import create_engine
from sqlmodel import col, select
from starlette.routing import Route
from starlette.testclient import TestClient

from otaship.firmware.signing_keys import Scheme
from otaship.receiver.app import create_app
from otaship.receiver.db.engine import write_session
from otaship.receiver.db.logins import set_password
from otaship.receiver.db.models import Deployment, User
from otaship.receiver.github.signature import signature_of
from otaship.receiver.http import console, openapi
from otaship.receiver.http.management.anti_rollback import CHANGE_ERROR as ANTI_ROLLBACK_CHANGE_ERROR
from otaship.receiver.http.management.anti_rollback import READ_ERROR as ANTI_ROLLBACK_READ_ERROR
from otaship.receiver.http.management.deploy_form import valid_version
from otaship.receiver.http.management.deployments import READ_ERROR as DEPLOYMENT_READ_ERROR
from otaship.receiver.http.management.github import CHANGE_ERROR as GITHUB_CHANGE_ERROR
from otaship.receiver.http.management.github import DELIVERIES_ERROR, WEBHOOK_ERROR
from otaship.receiver.http.management.github import READ_ERROR as GITHUB_READ_ERROR
from otaship.receiver.http.management.ota import LIST_ERROR, UPLOAD_ERROR
from otaship.receiver.http.management.rollouts import CHANGE_ERROR
from otaship.receiver.http.management.rollouts import READ_ERROR as ROLLOUT_READ_ERROR
from otaship.receiver.http.management.signing_keys import CHANGE_ERROR as KEYS_CHANGE_ERROR
from otaship.receiver.http.management.signing_keys import READ_ERROR as KEYS_READ_ERROR
from otaship.receiver.http.sign_in import LOGIN_ERROR, LOGOUT_ERROR
from otaship.receiver.ids import utcnow
from otaship.receiver.mqtt.reports import ReportIngester
from otaship.receiver.rollouts.deploy import StoredFirmware, deploy_firmware
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from otaship.receiver.storage import Storage, StorageError
from otaship.receiver.targeting.catalog import FirmwareCatalog
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image
from tests.github_standin import ping_payload
from tests.signing import private_pem, public_pem

JSON = "application/json"
DOCUMENT_URI = "urn:otaship:openapi"
DATE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
# jsonschema checks date-time only with an optional package; this is the shape the API promises.
FORMATS = FormatChecker()


@FORMATS.checks("date-time")
def is_date_time(value: object) -> bool:
    return not isinstance(value, str) or DATE_TIME.fullmatch(value) is not None


def pointer(*parts: str) -> str:
    """A JSON pointer into the document (RFC 6901)."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


class Schemas:
    """Validates values against schemas at places in the document, `$ref`s resolved in it."""

    def __init__(self, document: dict[str, Any]) -> None:
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)

    def errors(self, value: Any, *where: str) -> list[str]:
        validator = Draft202012Validator(
            {"$ref": f"{DOCUMENT_URI}#{pointer(*where)}"}, registry=self.registry, format_checker=FORMATS
        )
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '$'}: {e.message}" for e in validator.iter_errors(value)
        ]

    def validate(self, value: Any, *where: str) -> None:
        found = self.errors(value, *where)
        if found:
            raise ValidationError(f"{pointer(*where)}: " + "; ".join(found))


def test_the_schemas_catch_what_they_should() -> None:
    schemas = Schemas(openapi.document())
    ota = dict(openapi.OTA_EXAMPLE)
    schemas.validate(ota, "components", "schemas", "Ota")
    for broken in (
        {**ota, "_id": "x"},
        {**ota, "size": 0},
        {**ota, "last_updated": "yesterday"},
        {**ota, "__v": True},
        {**ota, "surprise": 1},
        {k: v for k, v in ota.items() if k != "md5"},
    ):
        assert schemas.errors(broken, "components", "schemas", "Ota"), broken


@settings(max_examples=200, deadline=None)
@given(st.from_regex(openapi.SEMVER_PATTERN, fullmatch=True).filter(lambda v: len(v) <= 64))
def test_every_version_the_document_allows_is_accepted(version: str) -> None:
    assert valid_version(version)


@pytest.mark.parametrize("value", ["a\x00b", "tab\tinside", "line\n", "\x7f", "\x85", "\x9f"])
def test_the_text_pattern_refuses_control_characters(value: str) -> None:
    # fullmatch: JSON Schema (ECMA) has no Python-style `$` before a last line end.
    assert not re.fullmatch(openapi.NO_CONTROL_PATTERN, value)
    assert re.fullmatch(openapi.NO_CONTROL_PATTERN, "é ü 1.0 / % _ \xa0")


@pytest.mark.parametrize("version", ["1.2", "01.2.3", "1.2.3-", "1.2.3+", "v1.2.3", "1.2.3-01", "１.2.3"])
def test_the_version_pattern_refuses_what_the_receiver_refuses(version: str) -> None:
    assert not valid_version(version)
    assert not re.fullmatch(openapi.SEMVER_PATTERN, version)


# --- the document --------------------------------------------------------------------


class SwitchableStorage(Storage):
    """The real storage, with failures to switch on."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.fail_put = self.fail_read = self.fail_check = False

    def put(self, key: str, source: Path) -> None:
        if self.fail_put:
            raise StorageError("bucket is not reachable")
        self.inner.put(key, source)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def local_path(self, key: str) -> Path:
        if self.fail_read:
            raise StorageError("bucket is not reachable")
        return self.inner.local_path(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def check(self) -> None:
        if self.fail_check:
            raise StorageError("bucket is not reachable")
        self.inner.check()


class Checked:
    """A client whose every answer is validated against the document, and recorded."""

    def __init__(self, client: TestClient, document: dict[str, Any]) -> None:
        self.client = client
        self.document = document
        self.schemas = Schemas(document)
        self.seen: set[tuple[str, str, str]] = set()

    def __call__(self, method: str, template: str, url: str | None = None, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.client.request(method, url or template, **kwargs)
        status = str(response.status_code)
        operation = self.document["paths"][template][method.lower()]
        documented = operation["responses"].get(status)
        assert documented is not None, (
            f"{method} {template} answered an undocumented {status}: {response.text}"
        )
        where = ("paths", template, method.lower(), "responses", status)
        for header, spec in documented.get("headers", {}).items():
            if spec.get("required"):
                assert header.lower() in response.headers, f"{method} {template} {status} lacks {header}"
            if header.lower() in response.headers:
                value: Any = response.headers[header.lower()]
                if spec["schema"].get("type") == "integer":
                    value = int(value)
                self.schemas.validate(value, *where, "headers", header, "schema")
        content = documented.get("content")
        if content is None or method == "HEAD":
            assert response.content == b"", f"{method} {template} {status} has a body"
        else:
            media = response.headers["content-type"].split(";")[0]
            assert media in content, f"{method} {template} {status} answered {media}, not {list(content)}"
            body = response.json() if media == JSON else response.text
            self.schemas.validate(body, *where, "content", media, "schema")
        self.seen.add((template, method.lower(), status))
        return response


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def test_the_document_and_the_router_list_the_same_routes(
    client: TestClient, document: dict[str, Any]
) -> None:
    assert document["openapi"] == "3.1.0"
    # The console's pages are for people, not API operations: the document leaves them out.
    api = [r for r in client.app.routes if getattr(r, "path", None) not in console.PATHS]  # type: ignore[attr-defined]
    routes = [r for r in api if isinstance(r, Route)]
    assert len(routes) == len(api)
    # Starlette answers HEAD on every GET route; the document lists it where it matters.
    served = {(r.path, m.lower()) for r in routes for m in (r.methods or ()) if m != "HEAD"}
    documented = {(path, method) for path, method, _ in operations(document) if method != "head"}
    assert served == documented
    heads = {path for path, method, _ in operations(document) if method == "head"}
    assert heads == {"/v1/ota/group/download/{credentials}"}
    assert all("HEAD" in (r.methods or ()) for r in routes if r.path in heads)


def test_the_document_is_consistent(document: dict[str, Any]) -> None:
    schemas = Schemas(document)
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    for path, method, operation in operations(document):
        assert operation["responses"], f"{method} {path} documents no response"
        for parameter in operation.get("parameters", []):
            Draft202012Validator.check_schema(parameter["schema"])
            if parameter["in"] == "path":
                assert f"{{{parameter['name']}}}" in path
                assert parameter["schema"].get("pattern"), (
                    f"{method} {path}: {parameter['name']} has no pattern"
                )
        for content in operation.get("requestBody", {}).get("content", {}).values():
            Draft202012Validator.check_schema(content["schema"])
        for status, response in operation["responses"].items():
            for header in response.get("headers", {}).values():
                Draft202012Validator.check_schema(header["schema"])
            for media, content in response.get("content", {}).items():
                Draft202012Validator.check_schema(content["schema"])
                # Every example must be true to its own schema.
                for name, example in content.get("examples", {}).items():
                    where = ("paths", path, method, "responses", status, "content", media, "schema")
                    assert schemas.errors(example["value"], *where) == [], (
                        f"{method} {path} {status} example {name}"
                    )
    text = json.dumps(document)
    for ref in set(re.findall(r'"\$ref": "#/components/schemas/(\w+)"', text)):
        assert ref in document["components"]["schemas"]


def post(checked: Checked, owner: Owner | None, data: dict[str, str], image: bytes | None) -> httpx.Response:
    files = {"firmware": ("firmware.bin", image)} if image is not None else None
    return checked("POST", "/v1/ota/group", data=data, files=files, headers=owner.headers if owner else {})


def test_real_answers_match_the_document(
    settings: Settings, services: Services, fleet: Fleet, document: dict[str, Any]
) -> None:
    storage = SwitchableStorage(services.storage)
    services = dataclasses.replace(services, storage=storage)
    with TestClient(create_app(settings, services=services)) as client:
        checked = Checked(client, document)
        drive(checked, fleet, services, storage)

        # The same routes with the database gone: the 500s.
        engine = create_engine(f"sqlite:///{settings.data_dir / 'no-such-dir' / 'x.db'}")
        broken = Services(settings=settings, engine=engine, storage=storage, catalog=FirmwareCatalog(engine))
        with TestClient(create_app(settings, services=broken), raise_server_exceptions=False) as down:
            failing = Checked(down, document)
            key = {"Authorization": "Bearer osk_any"}
            rollout = "a" * 24
            # Looking up the API key fails first: each route's own 500 from the spec, with the cause.
            for (method, template, url), text in {
                ("GET", "/v1/ota/group", None): LIST_ERROR,
                ("POST", "/v1/ota/group", None): UPLOAD_ERROR,
                ("GET", "/v1/rollouts", "/v1/rollouts?group=" + "a" * 24): ROLLOUT_READ_ERROR,
                ("GET", "/v1/rollouts/{rollout_id}", f"/v1/rollouts/{rollout}"): ROLLOUT_READ_ERROR,
                (
                    "POST",
                    "/v1/rollouts/{rollout_id}/promote",
                    f"/v1/rollouts/{rollout}/promote",
                ): CHANGE_ERROR,
                ("POST", "/v1/rollouts/{rollout_id}/abort", f"/v1/rollouts/{rollout}/abort"): CHANGE_ERROR,
                ("POST", "/v1/rollouts/{rollout_id}/pause", f"/v1/rollouts/{rollout}/pause"): CHANGE_ERROR,
                ("POST", "/v1/rollouts/{rollout_id}/resume", f"/v1/rollouts/{rollout}/resume"): CHANGE_ERROR,
                ("GET", "/v1/deployments", "/v1/deployments?group=" + "a" * 24): DEPLOYMENT_READ_ERROR,
                (
                    "GET",
                    "/v1/deployments/{deployment_id}",
                    f"/v1/deployments/{rollout}",
                ): DEPLOYMENT_READ_ERROR,
                ("GET", "/v1/groups/{group_id}/keys", f"/v1/groups/{rollout}/keys"): KEYS_READ_ERROR,
                ("POST", "/v1/groups/{group_id}/keys", f"/v1/groups/{rollout}/keys"): KEYS_CHANGE_ERROR,
                (
                    "DELETE",
                    "/v1/groups/{group_id}/keys/{key}",
                    f"/v1/groups/{rollout}/keys/{rollout}",
                ): KEYS_CHANGE_ERROR,
                (
                    "GET",
                    "/v1/groups/{group_id}/anti-rollback",
                    f"/v1/groups/{rollout}/anti-rollback",
                ): ANTI_ROLLBACK_READ_ERROR,
                (
                    "PUT",
                    "/v1/groups/{group_id}/anti-rollback",
                    f"/v1/groups/{rollout}/anti-rollback",
                ): ANTI_ROLLBACK_CHANGE_ERROR,
                ("GET", "/v1/webhooks/github/deliveries", None): DELIVERIES_ERROR,
                ("GET", "/v1/github/bindings", None): GITHUB_READ_ERROR,
                ("POST", "/v1/github/bindings", None): GITHUB_CHANGE_ERROR,
                (
                    "DELETE",
                    "/v1/github/bindings/{binding_id}",
                    f"/v1/github/bindings/{rollout}",
                ): GITHUB_CHANGE_ERROR,
                ("POST", "/v1/auth/logout", None): LOGOUT_ERROR,
            }.items():
                answer = failing(method, template, url, headers=key)
                assert answer.status_code == 500
                assert answer.json() == {"message": text, "error": answer.json()["error"]}
                assert answer.json()["error"].startswith("OperationalError: ")
            # The webhook has no key: its binding's lookup fails.
            answer = failing(
                "POST", "/v1/webhooks/github", f"/v1/webhooks/github?binding={rollout}", content=b"{}"
            )
            assert answer.status_code == 500
            assert answer.json()["message"] == WEBHOOK_ERROR
            answer = failing("POST", "/v1/auth/login", json={"email": "a@example.com", "password": "x"})
            assert (answer.status_code, answer.json()["message"]) == (500, LOGIN_ERROR)
            # Devices: a group this replica never read, with the database away.
            answer = failing("GET", "/v1/ota/group/latest/{group_id}", "/v1/ota/group/latest/" + "a" * 24)
            assert (answer.status_code, answer.headers["retry-after"]) == (503, "5")
            download = "/v1/ota/group/download/{credentials}"
            for method in ("GET", "HEAD"):
                answer = failing(method, download, f"/v1/ota/group/download/{'a' * 24}{'b' * 16}")
                assert answer.status_code == 503
        engine.dispose()

        # Over the rate limits: the 429s. Any key counts against its own limit.
        strict = settings.with_overrides(rate_limit_reads="1/day", rate_limit_writes="1/day")
        with TestClient(create_app(strict, services=services)) as limited:
            over = Checked(limited, document)
            key = {"Authorization": "Bearer osk_any"}
            over("GET", "/v1/ota/group", headers=key)
            over("POST", "/v1/rollouts/{rollout_id}/abort", f"/v1/rollouts/{'a' * 24}/abort", headers=key)
            for method, template, url in [
                ("GET", "/v1/ota/group", None),
                ("POST", "/v1/ota/group", None),
                ("GET", "/v1/rollouts", "/v1/rollouts?group=" + "a" * 24),
                ("GET", "/v1/rollouts/{rollout_id}", "/v1/rollouts/" + "a" * 24),
                ("POST", "/v1/rollouts/{rollout_id}/promote", f"/v1/rollouts/{'a' * 24}/promote"),
                ("POST", "/v1/rollouts/{rollout_id}/abort", f"/v1/rollouts/{'a' * 24}/abort"),
                ("POST", "/v1/rollouts/{rollout_id}/pause", f"/v1/rollouts/{'a' * 24}/pause"),
                ("POST", "/v1/rollouts/{rollout_id}/resume", f"/v1/rollouts/{'a' * 24}/resume"),
                ("GET", "/v1/deployments", "/v1/deployments?group=" + "a" * 24),
                ("GET", "/v1/deployments/{deployment_id}", "/v1/deployments/" + "a" * 24),
                ("GET", "/v1/groups/{group_id}/keys", f"/v1/groups/{'a' * 24}/keys"),
                ("POST", "/v1/groups/{group_id}/keys", f"/v1/groups/{'a' * 24}/keys"),
                ("DELETE", "/v1/groups/{group_id}/keys/{key}", f"/v1/groups/{'a' * 24}/keys/{'a' * 24}"),
                ("GET", "/v1/groups/{group_id}/anti-rollback", f"/v1/groups/{'a' * 24}/anti-rollback"),
                ("PUT", "/v1/groups/{group_id}/anti-rollback", f"/v1/groups/{'a' * 24}/anti-rollback"),
                ("GET", "/v1/webhooks/github/deliveries", None),
                ("GET", "/v1/github/bindings", None),
                ("POST", "/v1/github/bindings", None),
                ("DELETE", "/v1/github/bindings/{binding_id}", "/v1/github/bindings/" + "a" * 24),
                ("POST", "/v1/auth/logout", None),
            ]:
                assert over(method, template, url, headers=key).status_code == 429

    documented = {
        (path, method, status) for path, method, op in operations(document) for status in op["responses"]
    }
    assert documented - (checked.seen | failing.seen | over.seen) == set(), (
        "documented answers no test produced"
    )


def drive(checked: Checked, fleet: Fleet, services: Services, storage: SwitchableStorage) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    fields = {"group": group.id, "token": group.token}

    # --- the seed API
    post(checked, None, {**fields, "version": "1.0.0"}, build_image("1.0.0"))
    post(checked, fleet.owner(plan="free"), {**fields, "version": "1.0.0"}, build_image("1.0.0"))
    post(checked, owner, {"group": group.id, "token": group.token}, build_image("1.0.0"))
    post(checked, owner, {**fields, "token": "x" * 16, "version": "1.0.0"}, build_image("1.0.0"))
    post(checked, owner, {**fields, "version": "1.0.0"}, b"not an image")
    post(checked, owner, {**fields, "group": "0" * 24, "version": "1.0.0"}, build_image("1.0.0"))
    assert post(checked, owner, {**fields, "version": "1.0.0"}, build_image("1.0.0")).status_code == 201
    assert (
        post(checked, owner, {**fields, "version": "1.0.0"}, build_image("1.0.0", seed=1)).status_code == 409
    )
    too_big = services.settings.max_firmware_bytes + 1
    assert post(checked, owner, {**fields, "version": "1.0.1"}, b"\xe9" * too_big).status_code == 413
    storage.fail_put = True
    assert post(checked, owner, {**fields, "version": "1.0.2"}, build_image("1.0.2")).status_code == 500
    storage.fail_put = False
    # A deadline no body can meet: the 408 of a body that takes too long.
    impatient = dataclasses.replace(services, settings=services.settings.with_overrides(upload_timeout=1e-9))
    with TestClient(create_app(impatient.settings, services=impatient)) as client:
        slow = Checked(client, checked.document)
        assert post(slow, owner, {**fields, "version": "1.0.3"}, build_image("1.0.3")).status_code == 408
    checked.seen |= slow.seen
    with contextlib.ExitStack() as held:
        for _ in range(services.upload_slots.per_owner):
            held.enter_context(services.upload_slots.hold(owner.user.id))
        assert post(checked, owner, {**fields, "version": "1.0.3"}, build_image("1.0.3")).status_code == 429

    assert checked("GET", "/v1/ota/group", "/v1/ota/group?draw=7", headers=owner.headers).status_code == 200
    checked("GET", "/v1/ota/group", "/v1/ota/group?offset=-1", headers=owner.headers)
    checked("GET", "/v1/ota/group")

    # --- devices
    checked("GET", "/v1/ota/group/latest/{group_id}", f"/v1/ota/group/latest/{group.id}")
    checked("GET", "/v1/ota/group/latest/{group_id}", "/v1/ota/group/latest/" + "0" * 24)
    download = "/v1/ota/group/download/{credentials}"
    url = f"/v1/ota/group/download/{group.id}{group.token}"
    for method in ("GET", "HEAD"):
        assert checked(method, download, url).status_code == 200
        assert checked(method, download, url, headers={"Range": "bytes=0-99"}).status_code == 206
        assert checked(method, download, url, headers={"Range": "bytes=0-9,20-29"}).status_code == 206
        assert checked(method, download, url, headers={"Range": "bytes=99999999-"}).status_code == 416
        assert checked(method, download, f"/v1/ota/group/download/{group.id}{'x' * 16}").status_code == 404
        storage.fail_read = True
        assert checked(method, download, url).status_code == 500
        storage.fail_read = False

    # --- rollouts
    fleet_group = fleet.group(owner, name="fleet")
    canary = fleet.group(owner, name="canary", parent=fleet_group)
    bench = [fleet.device(canary, name=f"bench{i}", firmware_version="1.0.0") for i in range(2)]
    # A device outside the canary keeps the fleet stage running until the abort.
    fleet.device(fleet.group(owner, name="field", parent=fleet_group), name="field", firmware_version="1.0.0")
    response = post(
        checked,
        owner,
        {
            "group": fleet_group.id,
            "token": fleet_group.token,
            "version": "2.0.0",
            "canary": canary.id,
            "auto_promote": "false",
        },
        build_image("2.0.0"),
    )
    assert response.status_code == 201
    rollout_id = response.json()["rollout"]["id"]
    one = "/v1/rollouts/{rollout_id}"
    promote, abort = f"{one}/promote", f"{one}/abort"
    pause, resume = f"{one}/pause", f"{one}/resume"
    assert (
        checked("POST", promote, f"/v1/rollouts/{rollout_id}/promote", headers=owner.headers).status_code
        == 409
    )
    for template, status in ((resume, 409), (pause, 200), (pause, 409), (resume, 200)):
        url = template.replace("{rollout_id}", rollout_id)
        assert checked("POST", template, url, headers=owner.headers).status_code == status
    ReportIngester(services.engine).ingest_messages(
        [
            (
                f"/{owner.user.mqtt_user}/devices/{device.id}/status",
                json.dumps({"fw_version": "2.0.0"}).encode(),
            )
            for device in bench
        ]
    )
    assert (
        checked("POST", promote, f"/v1/rollouts/{rollout_id}/promote", headers=owner.headers).status_code
        == 200
    )
    body = checked("GET", one, f"/v1/rollouts/{rollout_id}", headers=owner.headers).json()
    assert {(d["name"], d["stage"]) for d in body["devices"]} == {
        *((name, stage) for name in ("bench0", "bench1") for stage in ("canary", "fleet")),
        ("field", "fleet"),
    }
    checked("GET", one, f"/v1/rollouts/{rollout_id}?devices=false", headers=owner.headers)
    checked("GET", one, f"/v1/rollouts/{rollout_id}?devices=maybe", headers=owner.headers)
    checked("GET", one, "/v1/rollouts/" + "0" * 24, headers=owner.headers)
    checked("GET", one, f"/v1/rollouts/{rollout_id}")
    assert (
        checked("POST", abort, f"/v1/rollouts/{rollout_id}/abort", headers=owner.headers).status_code == 200
    )
    assert (
        checked("POST", abort, f"/v1/rollouts/{rollout_id}/abort", headers=owner.headers).status_code == 409
    )
    for template in (promote, abort, pause, resume):
        checked("POST", template, template.replace("{rollout_id}", "0" * 24), headers=owner.headers)
        checked("POST", template, template.replace("{rollout_id}", "%00"), headers=owner.headers)
        checked("POST", template, template.replace("{rollout_id}", rollout_id))
    listing = checked("GET", "/v1/rollouts", f"/v1/rollouts?group={fleet_group.id}", headers=owner.headers)
    assert [r["id"] for r in listing.json()["rollouts"]] == [rollout_id]
    checked("GET", "/v1/rollouts", headers=owner.headers)
    checked("GET", "/v1/rollouts", "/v1/rollouts?group=" + "0" * 24, headers=owner.headers)
    checked("GET", "/v1/rollouts", f"/v1/rollouts?group={fleet_group.id}")

    # --- deployments: followed only with MQTT on, so this one is deployed as the POST would with it
    plain_group = fleet.group(owner, name="plain")
    fleet.device(plain_group, name="lamp", firmware_version="1.0.0")
    with write_session(services.engine) as session:
        digest = "ab" * 32
        deployed = deploy_firmware(
            session=session,
            group_id=plain_group.id,
            version="3.0.0",
            now=utcnow(),
            firmware=StoredFirmware(object_key="objects/x", sha256=digest, md5=digest[:32], size=10),
        )
        deployment_id = session.exec(
            select(Deployment.id).where(col(Deployment.ota_id) == deployed.ota.id)
        ).one()
    one = "/v1/deployments/{deployment_id}"
    body = checked("GET", one, f"/v1/deployments/{deployment_id}", headers=owner.headers).json()
    assert [(d["name"], d["outcome"], d["retries"]) for d in body["devices"]] == [("lamp", "pending", 0)]
    checked("GET", one, f"/v1/deployments/{deployment_id}?devices=false", headers=owner.headers)
    checked("GET", one, f"/v1/deployments/{deployment_id}?devices=maybe", headers=owner.headers)
    checked("GET", one, "/v1/deployments/" + "0" * 24, headers=owner.headers)
    checked("GET", one, f"/v1/deployments/{deployment_id}")
    listing = checked(
        "GET", "/v1/deployments", f"/v1/deployments?group={plain_group.id}", headers=owner.headers
    )
    assert [d["id"] for d in listing.json()["deployments"]] == [deployment_id]
    checked("GET", "/v1/deployments", headers=owner.headers)
    checked("GET", "/v1/deployments", "/v1/deployments?group=" + "0" * 24, headers=owner.headers)
    checked("GET", "/v1/deployments", f"/v1/deployments?group={plain_group.id}")

    # --- signing keys
    keys, one_key = "/v1/groups/{group_id}/keys", "/v1/groups/{group_id}/keys/{key}"
    keyed = fleet.group(owner, name="keyed")
    sub = fleet.group(owner, name="keyed-sub", parent=keyed)
    own = f"/v1/groups/{keyed.id}/keys"
    public = public_pem(private_pem(Scheme.ECDSA_P256)).decode()
    added = checked("POST", keys, own, json={"public_key": public, "name": "ci"}, headers=owner.headers)
    assert added.status_code == 201
    checked("POST", keys, own, json={"public_key": public}, headers=owner.headers)  # already there: 400
    checked("POST", keys, own, content=b"x" * 70_000, headers=owner.headers)
    checked(
        "POST", keys, "/v1/groups/" + "0" * 24 + "/keys", json={"public_key": public}, headers=owner.headers
    )
    checked("POST", keys, own, json={"public_key": public})
    assert checked("GET", keys, f"/v1/groups/{sub.id}/keys", headers=owner.headers).status_code == 200
    checked("GET", keys, "/v1/groups/%00/keys", headers=owner.headers)
    checked("GET", keys, "/v1/groups/" + "0" * 24 + "/keys", headers=owner.headers)
    checked("GET", keys, own)
    digest = added.json()["digest"]
    checked(
        "DELETE", one_key, f"/v1/groups/{sub.id}/keys/{digest}", headers=owner.headers
    )  # an ancestor's: 400
    assert checked("DELETE", one_key, f"{own}/{digest}", headers=owner.headers).status_code == 200
    checked("DELETE", one_key, f"{own}/{digest}", headers=owner.headers)  # gone: 404
    checked("DELETE", one_key, f"{own}/{digest}")
    # --- anti-rollback
    setting = "/v1/groups/{group_id}/anti-rollback"
    guarded = f"/v1/groups/{keyed.id}/anti-rollback"
    turned = checked("PUT", setting, guarded, json={"enabled": True}, headers=owner.headers)
    assert turned.json()["set_by"] == keyed.id
    checked("PUT", setting, guarded, json={"enabled": "yes"}, headers=owner.headers)  # 400
    checked("PUT", setting, guarded, content=b" " * 2000, headers=owner.headers)  # 413
    checked(
        "PUT",
        setting,
        "/v1/groups/" + "0" * 24 + "/anti-rollback",
        json={"enabled": True},
        headers=owner.headers,
    )
    checked("PUT", setting, guarded, json={"enabled": False})
    assert (
        checked("GET", setting, f"/v1/groups/{sub.id}/anti-rollback", headers=owner.headers).status_code
        == 200
    )
    checked("GET", setting, "/v1/groups/%00/anti-rollback", headers=owner.headers)
    checked("GET", setting, "/v1/groups/" + "0" * 24 + "/anti-rollback", headers=owner.headers)
    checked("GET", setting, guarded)
    drive_github(checked, fleet, services)
    # --- sign-in
    with write_session(services.engine) as session:
        user = session.get(User, owner.user.id)
        assert user is not None
        set_password(session=session, user=user, password="a long enough password", now=utcnow())
    login = "/v1/auth/login"
    signed = checked("POST", login, json={"email": owner.user.email, "password": "a long enough password"})
    assert signed.status_code == 200
    bearer = {"Authorization": f"Bearer {signed.json()['token']}"}
    checked("POST", login, content=b"{")
    checked("POST", login, content=b"x" * 9000)
    for _ in range(3):
        assert (
            checked("POST", login, json={"email": owner.user.email, "password": "wrong"}).status_code == 401
        )
    assert checked("POST", login, json={"email": owner.user.email, "password": "wrong"}).status_code == 429
    checked("POST", "/v1/auth/logout", headers=owner.headers)
    checked("POST", "/v1/auth/logout")
    assert checked("POST", "/v1/auth/logout", headers=bearer).status_code == 200

    # --- operations
    checked("GET", "/healthz")
    assert checked("GET", "/readyz").status_code == 200
    storage.fail_check = True
    assert checked("GET", "/readyz").status_code == 503
    storage.fail_check = False
    checked("GET", "/metrics")
    checked("GET", "/openapi.json")


def drive_github(checked: Checked, fleet: Fleet, services: Services) -> None:
    """The GitHub routes' answers; the webhook's secrets need OTASHIP_SECRET_KEY."""
    keyed = dataclasses.replace(services, settings=services.settings.with_overrides(secret_key="k" * 40))
    owner, other = fleet.owner(), fleet.owner()
    group = fleet.group(owner, name="released")
    with TestClient(create_app(keyed.settings, services=keyed)) as client:
        github = Checked(client, checked.document)
        bindings = "/v1/github/bindings"
        bound = github(
            "POST", bindings, json={"repo": "octo-org/thermostat", "group": group.id}, headers=owner.headers
        )
        assert bound.status_code == 201
        binding_id, secret = bound.json()["binding"]["id"], bound.json()["secret"]
        github("POST", bindings, json={"repo": "octo-org/thermostat"}, headers=owner.headers)
        github(
            "POST", bindings, json={"repo": "octo-org/thermostat", "group": group.id}, headers=other.headers
        )
        github("POST", bindings, json={})
        github("GET", bindings, headers=owner.headers)
        github("GET", bindings)

        hook = "/v1/webhooks/github"
        url = f"{hook}?binding={binding_id}"

        def signed(event: str, body: bytes, delivery: str) -> dict[str, str]:
            return {
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": signature_of(secret, body),
            }

        ping = json.dumps(ping_payload()).encode()
        assert github("POST", hook, url, content=ping, headers=signed("ping", ping, "d1")).status_code == 200
        push = b'{"ref": "refs/heads/main"}'
        assert github("POST", hook, url, content=push, headers=signed("push", push, "d2")).status_code == 202
        github(
            "POST",
            hook,
            url,
            content=ping,
            headers={**signed("ping", ping, "d3"), "X-Hub-Signature-256": "x"},
        )
        github("POST", hook, content=ping)
        github("POST", hook, f"{hook}?binding={'0' * 24}", content=ping)
        github("POST", hook, url, content=b" " * (25 * 1024 * 1024 + 1))

        deliveries = "/v1/webhooks/github/deliveries"
        listed = github("GET", deliveries, headers=owner.headers).json()["deliveries"]
        assert [d["id"] for d in listed] == ["d2", "d1"]
        github("GET", deliveries, f"{deliveries}?binding=%01", headers=owner.headers)
        github("GET", deliveries, f"{deliveries}?binding={binding_id}", headers=other.headers)
        github("GET", deliveries)

        one = "/v1/github/bindings/{binding_id}"
        github("DELETE", one, f"/v1/github/bindings/{binding_id}", headers=other.headers)
        github("DELETE", one, "/v1/github/bindings/%01", headers=owner.headers)
        github("DELETE", one, f"/v1/github/bindings/{binding_id}")
        kept = fleet.group(owner, name="kept")
        again = github(
            "POST", bindings, json={"repo": "octo-org/kept", "group": kept.id}, headers=owner.headers
        )
        assert (
            github("DELETE", one, f"/v1/github/bindings/{binding_id}", headers=owner.headers).status_code
            == 200
        )
    checked.seen |= github.seen

    # Without OTASHIP_SECRET_KEY no secret can be read or made: 503s.
    with TestClient(create_app(services.settings, services=services)) as client:
        unkeyed = Checked(client, checked.document)
        kept_id = again.json()["binding"]["id"]
        assert unkeyed("POST", hook, f"{hook}?binding={kept_id}", content=ping).status_code == 503
        unkeyed(
            "POST", bindings, json={"repo": "octo-org/thermostat", "group": group.id}, headers=owner.headers
        )
    checked.seen |= unkeyed.seen
