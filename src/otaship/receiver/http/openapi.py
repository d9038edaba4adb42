"""GET /openapi.json: the receiver's public routes, written out by hand.

The paths are hand-written rather than generated from docstrings, so that they
can say what matters to a client: the spec's exact messages, the order of the
POST checks, the device headers. The messages come from the modules that send
them. The bodies' schemas are generated from the models the routes answer with
(otaship.receiver.http.wire). tests/receiver/http/test_openapi.py validates real responses
against the document and checks that it and the router list the same routes.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from otaship import __version__
from otaship.receiver.github.sealed import NO_KEY
from otaship.receiver.http.device_api import UNAVAILABLE as DEVICE_UNAVAILABLE
from otaship.receiver.http.management.anti_rollback import BAD_BODY as BAD_ANTI_ROLLBACK
from otaship.receiver.http.management.anti_rollback import CHANGE_ERROR as ANTI_ROLLBACK_CHANGE_ERROR
from otaship.receiver.http.management.anti_rollback import MAX_BODY_BYTES as MAX_ANTI_ROLLBACK_BYTES
from otaship.receiver.http.management.anti_rollback import READ_ERROR as ANTI_ROLLBACK_READ_ERROR
from otaship.receiver.http.management.deploy_form import (
    MAX_COMMIT_LENGTH,
    MAX_STAGE_SECONDS,
    MAX_TOLERATED_FAILURES,
    MAX_VERSION_LENGTH,
    MAX_WAVES,
)
from otaship.receiver.http.management.deployments import NOT_FOUND as NO_SUCH_DEPLOYMENT
from otaship.receiver.http.management.deployments import READ_ERROR as DEPLOYMENT_READ_ERROR
from otaship.receiver.http.management.github import (
    BAD_SIGNATURE,
    DELIVERIES_ERROR,
    MAX_WEBHOOK_BYTES,
    NO_BINDING,
    NO_BINDING_PARAM,
    NO_SIGNATURE,
    PONG,
    TOO_LARGE,
    WEBHOOK_ERROR,
)
from otaship.receiver.http.management.github import (
    CHANGE_ERROR as GITHUB_CHANGE_ERROR,
)
from otaship.receiver.http.management.github import READ_ERROR as GITHUB_READ_ERROR
from otaship.receiver.http.management.group_routes import NO_GROUP as NO_SUCH_GROUP
from otaship.receiver.http.management.ota import (
    DEFAULT_LIMIT,
    FREE_PLAN,
    LIST_ERROR,
    MAX_DRAW_LENGTH,
    MAX_LIMIT,
    MAX_OFFSET,
    MAX_SEARCH_LENGTH,
    UPLOAD_ERROR,
)
from otaship.receiver.http.management.owned import MAX_ID_LENGTH
from otaship.receiver.http.management.rollouts import NOT_FOUND as NO_SUCH_ROLLOUT
from otaship.receiver.http.management.rollouts import READ_ERROR as ROLLOUT_READ_ERROR
from otaship.receiver.http.management.signing_keys import CHANGE_ERROR as KEYS_CHANGE_ERROR
from otaship.receiver.http.management.signing_keys import MAX_BODY_BYTES as MAX_KEY_BODY_BYTES
from otaship.receiver.http.management.signing_keys import NO_KEY as NO_SUCH_KEY
from otaship.receiver.http.management.signing_keys import READ_ERROR as KEYS_READ_ERROR
from otaship.receiver.http.responses import UNAUTHORIZED
from otaship.receiver.http.sign_in import LOGIN_ERROR, LOGOUT_ERROR
from otaship.receiver.http.sign_in import WRONG as WRONG_SIGN_IN
from otaship.receiver.http.sign_in_throttle import FREE_FAILURES
from otaship.receiver.http.wire import DEPLOYED, ID_PATTERN, components
from otaship.receiver.ids import TOKEN_LENGTH
from otaship.receiver.intake.multipart import ENVELOPE_ALLOWANCE

JSON = "application/json"
TOKEN_PATTERN = f"^[A-Za-z0-9]{{{TOKEN_LENGTH}}}$"
CREDENTIALS_PATTERN = f"^[0-9a-f]{{24}}[A-Za-z0-9]{{{TOKEN_LENGTH}}}$"
# Every text value is refused with a control character in it (receiver/fields.py).
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
# semver.org's expression, with ASCII digits as the semver package reads them.
_NUMBER = "(0|[1-9][0-9]*)"
_PRERELEASE = "(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
SEMVER_PATTERN = (
    rf"^{_NUMBER}\.{_NUMBER}\.{_NUMBER}(-{_PRERELEASE}(\.{_PRERELEASE})*)?"
    r"(\+[0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*)?$"
)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: str, **examples: Any) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": _ref(schema)}
    if examples:
        content["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {"description": description, "content": {JSON: content}}


def _message(description: str, *texts: str) -> dict[str, Any]:
    return _json(description, "Message", **{f"example{i + 1}": {"message": t} for i, t in enumerate(texts)})


def _server_error(text: str) -> dict[str, Any]:
    return _json(
        "Storage or the database failed (looking up the API key included: an outage answers "
        "this, never a dropped connection). `error` is a short cause, never a stack trace. Any "
        "other unexpected failure answers `Internal server error` with no `error`.",
        "ServerError",
        spec={"message": text, "error": "StorageError: bucket is not reachable"},
        other={"message": "Internal server error"},
    )


# The spec's example record, with the fields otaship adds.
OTA_EXAMPLE: dict[str, Any] = {
    "_id": "5e1bc21cdfa10030ab7ea212",
    "group": "5e1b76bc4315b70eb242567a",
    "group_name": "thermostats",
    "__v": 0,
    "last_updated": "2020-01-17T17:38:59.983Z",
    "owner": "5e10fc5e77ba18070312e171",
    "path": "ota/group/5e1b76bc4315b70eb242567aAATluvfLURijoH9d/firmware.bin",
    "version": "1.2.7",
    "sha256": "9f" * 32,
    "md5": "c4" * 16,
    "size": 183296,
    "chip": "esp32",
    "project_name": "thermostat",
    "app_version": "1.2.7",
    "idf_ver": "v4.4.7",
    "commit": None,
    "signed": False,
    "signed_by": None,
}
UNAUTHORIZED_RESPONSE: dict[str, Any] = {
    **_message("No API key, or not a valid one.", UNAUTHORIZED),
    "headers": {
        "WWW-Authenticate": {
            "required": True,
            "description": 'The challenge (RFC 6750): `Bearer realm="otaship"`; with '
            '`error="invalid_token"` for a key nobody holds, and with `error="invalid_request"` '
            "and a description of what to send for an Authorization header that is not "
            "`Bearer <key>`",
            "schema": {"type": "string"},
        }
    },
}
AUTH: list[dict[str, list[str]]] = [{"apiKey": []}]


RATE_LIMITED: dict[str, Any] = {
    **_message(
        "Over a rate limit of this replica: the API key's reads or writes, or requests with a "
        "missing or bad key from the client's address. The message names the limit.",
        "Rate limit exceeded: at most 200 reads per second per API key. Retry after 1 s.",
    ),
    "headers": {
        "Retry-After": {
            "required": True,
            "description": "Whole seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 1},
        },
    },
}


def _rate_limited(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation that takes an API key may answer 429."""
    for item in paths.values():
        for operation in item.values():
            if operation.get("security") == AUTH:
                operation["responses"].setdefault("429", RATE_LIMITED)
    return paths


# A rollout field without `canary` is refused.
WITH_CANARY = "; with `canary` or `waves` only"


def _group_ota_paths() -> dict[str, Any]:
    list_parameters = [
        {
            "name": "search_value",
            "in": "query",
            "description": "Case-insensitive substring of `path`; `%` and `_` are plain characters",
            "schema": {"type": "string", "maxLength": MAX_SEARCH_LENGTH, "pattern": NO_CONTROL_PATTERN},
        },
        {
            "name": "offset",
            "in": "query",
            "description": "Records to skip",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        },
        {
            "name": "limit",
            "in": "query",
            "description": f"Records to return; above {MAX_LIMIT} is clamped to {MAX_LIMIT}",
            "schema": {"type": "integer", "minimum": 0, "default": DEFAULT_LIMIT},
        },
        {
            "name": "draw",
            "in": "query",
            "description": "Echoed back",
            "schema": {"type": "string", "maxLength": MAX_DRAW_LENGTH, "pattern": NO_CONTROL_PATTERN},
        },
        {
            "name": "order_dir",
            "in": "query",
            "description": "Order by last_updated",
            "schema": {"enum": ["asc", "desc"], "default": "desc"},
        },
    ]
    spec_list = {"otas": [OTA_EXAMPLE], "recordsTotal": 1, "recordsFiltered": 1, "draw": "warp"}
    form = {
        "type": "object",
        "required": ["firmware", "group", "token", "version"],
        "properties": {
            "firmware": {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "description": "firmware.bin, an ESP application image (checked with esptool)",
            },
            "group": {"type": "string", "pattern": ID_PATTERN, "description": "Group id"},
            "token": {
                "type": "string",
                "pattern": TOKEN_PATTERN,
                "description": "The group's 16-character token",
            },
            "version": {
                "type": "string",
                "pattern": SEMVER_PATTERN,
                "maxLength": MAX_VERSION_LENGTH,
                "description": "Semantic version, e.g. 1.5.7",
            },
            "commit": {
                "type": "string",
                "maxLength": MAX_COMMIT_LENGTH,
                "pattern": NO_CONTROL_PATTERN,
                "description": "Source revision (GITHUB_SHA)",
            },
            "canary": {
                "type": "string",
                "pattern": ID_PATTERN,
                "description": "A subgroup of `group` with registered devices: makes this a rollout",
            },
            "canary_timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_STAGE_SECONDS,
                "default": 1800,
                "description": f"Seconds for the canary stage, and again for the fleet stage{WITH_CANARY}",
            },
            "success_threshold": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 1,
                "default": 1.0,
                "description": f"Fraction of the canary's devices that must succeed{WITH_CANARY}",
            },
            "error_threshold": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_TOLERATED_FAILURES,
                "default": 0,
                "description": f"Canary devices allowed to fail{WITH_CANARY}",
            },
            "soak": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_STAGE_SECONDS,
                "default": 0,
                "description": f"Seconds the canary must stay healthy before promotion{WITH_CANARY}",
            },
            "auto_promote": {
                "type": "boolean",
                "default": True,
                "description": f"false waits for POST /v1/rollouts/{{rollout_id}}/promote{WITH_CANARY}",
            },
            "waves": {
                "type": "string",
                "pattern": f"^{ID_PATTERN[1:-1]}(,{ID_PATTERN[1:-1]}){{0,{MAX_WAVES - 1}}}$",
                "description": (
                    "Comma-separated subgroup ids of `group`, in order, each a disjoint subtree with "
                    "registered devices: a rollout in waves, the first being the canary (`canary=X` is "
                    "`waves=X`; not both). Each wave gets the version only when the one before passed, "
                    "and the whole group after the last. A wave may override the rollout's "
                    "success_threshold, error_threshold, canary_timeout and soak: `wave2.soak=600`"
                ),
            },
            "max_failure_rate": {
                "type": "number",
                "exclusiveMinimum": 0,
                "exclusiveMaximum": 1,
                "description": (
                    "Halt a wave once at least `min_devices` of its devices finished and more than this "
                    f"share of them failed{WITH_CANARY}"
                ),
            },
            "min_devices": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_TOLERATED_FAILURES,
                "default": 1,
                "description": f"Finished devices a wave needs before max_failure_rate applies{WITH_CANARY}",
            },
            "rollback": {
                "type": "boolean",
                "default": False,
                "description": (
                    "On a halt, give each wave that got the version back the firmware it ran before (the "
                    "stored image, its devices triggered) and end the rollout `rolled_back`. Opt-in: it is "
                    "a second update over the air, and the older image may be what the new one fixes. "
                    f"A wave deployed to since the rollout started, or with no previous firmware, is left as it is{WITH_CANARY}"
                ),
            },
        },
    }
    return {
        "/v1/ota/group": {
            "get": {
                "tags": ["Group OTA"],
                "summary": "Get all OTA updates",
                "description": "The last OTA record of each of the owner's groups.",
                "operationId": "listGroupOtas",
                "security": AUTH,
                "parameters": list_parameters,
                "responses": {
                    "200": _json("The owner's OTA records.", "OtaList", spec=spec_list),
                    "400": _message(
                        "A number that is not ASCII digits or is out of range, another order_dir, a "
                        "control character in a value, or a value longer than its maximum.",
                        f"offset must be a whole number from 0 to {MAX_OFFSET}, not '-1'",
                        "search_value must not contain control characters",
                    ),
                    "401": UNAUTHORIZED_RESPONSE,
                    "500": _server_error(LIST_ERROR),
                },
            },
            "post": {
                "tags": ["Group OTA"],
                "summary": "Make a new OTA update",
                "description": (
                    "Stores firmware.bin and triggers the group's devices. Checks run in this "
                    "order and the first that fails answers: auth (401); mandatory fields and the "
                    "group id (400); plan (403); group exists and is owned (404); token, version, "
                    "rollout fields and image (400); conflict (409). Every field is checked before "
                    "anything is stored. A body over the size limit is a 413 as soon as it is seen; "
                    "a body that stalls or takes too long is a 408; too many uploads of one owner "
                    "at once are a 429 with Retry-After. Re-posting the deployed version with the same "
                    "bytes is a 201 that changes nothing (`deployed: false`), unless a newer deploy "
                    "to an ancestor group overrode it, when it is deployed again. With `canary`, the "
                    "deploy starts a rollout: the canary subgroup gets the version first. A deploy "
                    "that changes what a running rollout's groups run (the group, any group below "
                    "it, or an ancestor) ends that rollout as aborted, naming the deploy."
                ),
                "operationId": "deployGroupOta",
                "security": AUTH,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": form,
                            "encoding": {"firmware": {"contentType": "application/octet-stream"}},
                        }
                    },
                },
                "responses": {
                    "201": _json(
                        "Deployed (or already deployed with these bytes).",
                        "Deployed",
                        deploy={
                            "message": "Firmware successfully deployed",
                            "deployed": True,
                            "ota": OTA_EXAMPLE,
                        },
                        rollout={
                            "message": f"{DEPLOYED} to canary subgroup 5e1dce30005a9652dbf0f7fd of group "
                            "5e1b76bc4315b70eb242567a; the whole group gets it once the canary "
                            "is healthy",
                            "deployed": True,
                            "ota": {
                                **OTA_EXAMPLE,
                                "group": "5e1dce30005a9652dbf0f7fd",
                                "group_name": "canary",
                            },
                            "rollout": {
                                "id": "5e21f24346211e2d8e0bdf3b",
                                "state": "canary",
                                "group": "5e1b76bc4315b70eb242567a",
                                "group_name": "thermostats",
                            },
                        },
                    ),
                    "400": _message(
                        "A missing field, a bad group id, no file, a wrong token, a version that is "
                        "not semver, a bad rollout field or one sent without `canary`, a canary that "
                        "is not a subgroup of the group, or a file that is not an ESP application "
                        "image for the group's chip. When the group or an ancestor has signing keys: an "
                        "image with no Secure Boot V2 signature block, none by one of its keys, or one "
                        "that does not verify; with anti-rollback on, a lower secure_version than the "
                        "group runs.",
                        "version is a mandatory field",
                        "Group ID is not valid",
                        "No file uploaded",
                        "Group token is not valid",
                        "Version '1.2' is not valid: use semantic versioning, e.g. 1.5.7",
                        "Firmware is not a valid ESP application image: the file is empty",
                        "the canary subgroup has no registered devices",
                        f"canary_timeout must be a whole number from 1 to {MAX_STAGE_SECONDS}, not '0'",
                        "commit must not contain control characters",
                        "Unexpected file part 'extra': only 'firmware' carries a file",
                        "Firmware is not signed: this group accepts only images with a Secure Boot V2 "
                        "signature block by one of its keys (" + "3c" * 32 + "); sign it with espsecure "
                        "sign-data --version 2",
                        "Firmware is not signed by a key registered for this group: block 0 by key "
                        + "5d" * 32
                        + "; the group's keys are "
                        + "3c" * 32,
                        "Firmware signature does not verify: block 0 by registered key "
                        + "3c" * 32
                        + " does not match the image (the image or its signature changed after signing)",
                        "Firmware is not a valid ESP application image: the signature sector at offset "
                        "0x10000 is truncated: the file holds 2048 of its 4096 bytes; upload the whole "
                        "signed file",
                        "Firmware secure_version 1 is lower than 2, the secure_version this group runs: "
                        "anti-rollback is on (set on group 5e1b76bc4315b70eb242567a); build it with a "
                        "secure_version of at least 2",
                    ),
                    "401": UNAUTHORIZED_RESPONSE,
                    "403": _message("The owner's plan does not include group OTA.", FREE_PLAN),
                    "404": _message("No such group, or another owner's.", "No such group"),
                    "409": _json(
                        "This version is already deployed (or rolling out, or was halted) with other "
                        "bytes: devices compare version strings, so bump the version.",
                        "Conflict",
                        conflict={
                            "message": "Version 1.4.0 is already deployed to this group with different "
                            "firmware. Devices compare version strings and would never fetch it: bump "
                            "the version.",
                            "version": "1.4.0",
                            "sha256": "0" * 64,
                            "commit": "4f2a9c1",
                        },
                    ),
                    "408": _message(
                        "No byte of the body for OTASHIP_UPLOAD_IDLE_TIMEOUT seconds, or the whole body "
                        "not there within OTASHIP_UPLOAD_TIMEOUT seconds. Nothing was stored.",
                        "The upload stalled: no bytes arrived for 30 seconds",
                        "The upload took longer than 600 seconds in all",
                    ),
                    "413": _message(
                        "The firmware is larger than OTASHIP_MAX_FIRMWARE_BYTES, or the whole body larger "
                        f"than that plus {ENVELOPE_ALLOWANCE} bytes for the form fields.",
                        "Firmware is larger than the limit of 16777216 bytes (16.0 MiB)",
                    ),
                    "429": {
                        **_message(
                            "The owner already has OTASHIP_MAX_UPLOADS_PER_OWNER uploads in flight on this "
                            "replica. Retry after the seconds in Retry-After.",
                            "Too many uploads in flight for this account (at most 8 at a time): try again shortly",
                        ),
                        "headers": {
                            "Retry-After": {
                                "required": True,
                                "description": "Seconds to wait",
                                "schema": {"type": "integer", "minimum": 1},
                            }
                        },
                    },
                    "500": _server_error(UPLOAD_ERROR),
                },
            },
        }
    }


UNAVAILABLE_RESPONSE: dict[str, Any] = {
    **_message(
        "The database failed, and this replica has never read the group. Groups it has read are "
        "answered from memory while the database is down: devices notice no outage.",
        DEVICE_UNAVAILABLE,
    ),
    "headers": {
        "Retry-After": {
            "required": True,
            "description": "Seconds to wait before asking again",
            "schema": {"type": "integer", "minimum": 1},
        },
    },
}


def _device_paths() -> dict[str, Any]:
    group_id = {
        "name": "group_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": ID_PATTERN},
    }
    credentials = {
        "name": "credentials",
        "in": "path",
        "required": True,
        "description": "The group id and the group token joined with no separator (24 + 16 characters)",
        "schema": {"type": "string", "pattern": CREDENTIALS_PATTERN},
    }
    image_headers = {
        "Content-Length": {"required": True, "schema": {"type": "integer"}},
        "x-MD5": {
            "required": True,
            "description": "Hex MD5 of the whole image; Arduino's HTTPUpdate checks it",
            "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        },
        "ETag": {
            "required": True,
            "description": "The image's SHA-256, quoted; a strong validator for If-Range",
            "schema": {"type": "string"},
        },
        "Accept-Ranges": {"required": True, "schema": {"const": "bytes"}},
    }
    not_found = _message("Unknown group, wrong token, or no firmware: one answer for all three.", "Not found")
    range_header = {
        "name": "Range",
        "in": "header",
        "required": False,
        "description": "bytes=START-END; several ranges answer multipart/byteranges",
        "schema": {"type": "string"},
    }
    octets = "application/octet-stream"
    binary = {octets: {"schema": {"type": "string", "contentMediaType": octets}}}
    download: dict[str, Any] = {
        "tags": ["Devices"],
        "security": [],
        "parameters": [credentials, range_header],
        "responses": {
            "200": {
                "description": "The image. Devices do not follow redirects, so the receiver streams it.",
                "headers": image_headers,
                "content": binary,
            },
            "206": {
                "description": "The requested range.",
                "headers": {
                    **image_headers,
                    "Content-Range": {
                        "description": "bytes START-END/SIZE, for a single range (each part of a "
                        "multipart/byteranges answer carries its own)",
                        "schema": {"type": "string"},
                    },
                },
                "content": {
                    **binary,
                    "multipart/byteranges": {"schema": {"type": "string"}},
                },
            },
            "404": not_found,
            "416": {
                "description": "The range is outside the image; no body.",
                "headers": {
                    "Content-Range": {
                        "required": True,
                        "description": "bytes */<size>",
                        "schema": {"type": "string"},
                    }
                },
            },
            "500": _server_error("Error when reading firmware file"),
            "503": UNAVAILABLE_RESPONSE,
        },
    }
    return {
        "/v1/ota/group/latest/{group_id}": {
            "get": {
                "tags": ["Devices"],
                "summary": "The version a device of the group should run",
                "description": "The group's effective firmware: the most recently deployed OTA of "
                "the group or any of its ancestors. No authentication; answered from memory.",
                "operationId": "latestVersion",
                "security": [],
                "parameters": [group_id],
                "responses": {
                    "200": _json("The effective version.", "Latest", example={"ver": "1.4.0"}),
                    "404": _message(
                        "No such group, or nothing deployed to it or its ancestors.",
                        "No such group",
                        "No firmware for this group",
                    ),
                    "503": UNAVAILABLE_RESPONSE,
                },
            }
        },
        "/v1/ota/group/download/{credentials}": {
            "get": {
                **download,
                "summary": "Download the group's firmware image",
                "operationId": "downloadFirmware",
            },
            "head": {
                **download,
                "summary": "The image's headers without its bytes",
                "operationId": "downloadFirmwareHead",
                "responses": {
                    code: {k: v for k, v in response.items() if k != "content"}
                    for code, response in download["responses"].items()
                },
            },
        },
    }


# The reads that rollouts and plain deploys share (http/management/owned.py).
GROUP_QUERY: dict[str, Any] = {
    "name": "group",
    "in": "query",
    "required": True,
    "schema": {"type": "string", "pattern": ID_PATTERN},
}
GROUP_LIST_ERRORS: dict[str, Any] = {
    "400": _message(
        f"No group parameter, or one with a control character or over {MAX_ID_LENGTH} characters.",
        "group is a mandatory parameter",
        "group must not contain control characters",
    ),
    "401": UNAUTHORIZED_RESPONSE,
    "404": _message("No such group, or another owner's.", "No such group"),
}
DEVICES_QUERY: dict[str, Any] = {
    "name": "devices",
    "in": "query",
    "description": "false leaves the devices out",
    "schema": {"type": "boolean", "default": True},
}


def _rollout_paths() -> dict[str, Any]:
    rollout_id = {
        "name": "rollout_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": ID_PATTERN},
    }
    not_found = _message("No such rollout, or another owner's.", NO_SUCH_ROLLOUT)

    def change(
        action: str, summary: str, *conflicts: str, conflict_description: str | None = None
    ) -> dict[str, Any]:
        return {
            "tags": ["Rollouts"],
            "summary": summary,
            "operationId": f"{action}Rollout",
            "security": AUTH,
            "parameters": [rollout_id],
            "responses": {
                "200": _json("The rollout afterwards, without its devices.", "Rollout"),
                "400": _message(
                    f"A control character in the rollout id, or one over {MAX_ID_LENGTH} characters.",
                    "rollout_id must not contain control characters",
                ),
                "401": UNAUTHORIZED_RESPONSE,
                "404": not_found,
                "409": _message(
                    conflict_description or "The rollout is not in a state that allows this.", *conflicts
                ),
                "500": _server_error("Error when changing the rollout"),
            },
        }

    return {
        "/v1/rollouts": {
            "get": {
                "tags": ["Rollouts"],
                "summary": "A group's rollouts, newest first (at most 100)",
                "operationId": "listRollouts",
                "security": AUTH,
                "parameters": [GROUP_QUERY],
                "responses": {
                    "200": _json("The group's rollouts, without their devices.", "RolloutList"),
                    **GROUP_LIST_ERRORS,
                    "500": _server_error(ROLLOUT_READ_ERROR),
                },
            }
        },
        "/v1/rollouts/{rollout_id}": {
            "get": {
                "tags": ["Rollouts"],
                "summary": "A rollout's state, its stages' counts and each targeted device's outcome",
                "operationId": "getRollout",
                "security": AUTH,
                "parameters": [
                    rollout_id,
                    DEVICES_QUERY,
                ],
                "responses": {
                    "200": _json("The rollout.", "Rollout"),
                    "400": _message(
                        f"A control character in the rollout id or one over {MAX_ID_LENGTH} "
                        "characters, or a devices value that is not true or false.",
                        "devices must be true or false, not 'maybe'",
                    ),
                    "401": UNAUTHORIZED_RESPONSE,
                    "404": not_found,
                    "500": _server_error(ROLLOUT_READ_ERROR),
                },
            }
        },
        "/v1/rollouts/{rollout_id}/promote": {
            "post": change(
                "promote",
                "Start the next wave, or the fleet stage, of a rollout held by auto_promote=false",
                "the canary has not reached its success threshold: 1 of 2 succeeded, 2 needed",
                "the rollout was aborted: the group no longer runs what it ran when the rollout started "
                "(deployment 5e21f24346211e2d8e0bdf3c of 1.3.0); it now runs 1.4.1: not promoting over it",
                conflict_description=(
                    "The rollout is not in a state that allows this; or the group no longer runs what it "
                    "ran when the rollout started, and the rollout was aborted rather than deploy over it."
                ),
            )
        },
        "/v1/rollouts/{rollout_id}/abort": {
            "post": change("abort", "Stop a rollout in progress", "the rollout has already ended: complete")
        },
        "/v1/rollouts/{rollout_id}/pause": {
            "post": change(
                "pause",
                "Stop a rollout's clock: no wave advances and no stage times out until a resume; "
                "devices already triggered go on, and their reports are recorded",
                "the rollout is already paused",
                "the rollout has already ended: complete",
            )
        },
        "/v1/rollouts/{rollout_id}/resume": {
            "post": change(
                "resume",
                "Start a paused rollout's clock again where it stopped",
                "the rollout is not paused",
                "the rollout has already ended: halted",
            )
        },
    }


def _signing_key_paths() -> dict[str, Any]:
    group_id = {
        "name": "group_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": ID_PATTERN},
    }
    bad_id = _message(
        f"A control character in an id, or one over {MAX_ID_LENGTH} characters.",
        "group_id must not contain control characters",
    )
    no_group = _message("No such group, or another owner's.", NO_SUCH_GROUP)
    key_example = {
        "id": "5e21f24346211e2d8e0bdf41",
        "group": "5e1b76bc4315b70eb242567a",
        "name": "release 2026",
        "scheme": "ecdsa-p256",
        "digest": "3c" * 32,
        "public_key": "-----BEGIN PUBLIC KEY-----\n…\n-----END PUBLIC KEY-----\n",
        "inherited_from": None,
        "created_at": "2026-01-17T17:38:59.983Z",
    }
    return {
        "/v1/groups/{group_id}/keys": {
            "get": {
                "tags": ["Signing keys"],
                "summary": "The keys a group's firmware must be signed by: its ancestors' and its own",
                "operationId": "listSigningKeys",
                "security": AUTH,
                "parameters": [group_id],
                "responses": {
                    "200": _json("The group's keys.", "SigningKeyList", keys={"keys": [key_example]}),
                    "400": bad_id,
                    "401": UNAUTHORIZED_RESPONSE,
                    "404": no_group,
                    "500": _server_error(KEYS_READ_ERROR),
                },
            },
            "post": {
                "tags": ["Signing keys"],
                "summary": "Add a Secure Boot V2 public key: from then on every deploy to the group and its "
                "subgroups must carry a valid signature block by one of its keys",
                "operationId": "addSigningKey",
                "security": AUTH,
                "parameters": [group_id],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("NewSigningKey")}},
                },
                "responses": {
                    "201": _json("The key added.", "SigningKey", key=key_example),
                    "400": _message(
                        "Not a JSON object with public_key; not a PEM public key; a private key; a scheme "
                        "Secure Boot V2 or the group's chip (or a subgroup's) does not support; or a key "
                        "the group or an ancestor already has.",
                        "The key cannot be registered: this is a private key: register its public key "
                        "instead (espsecure extract-public-key --version 2 --keyfile key.pem pub.pem), and "
                        "keep the private key secret",
                        "The key cannot be registered: esp32 Secure Boot V2 does not support ecdsa-p256 "
                        "keys; it supports rsa-3072",
                    ),
                    "401": UNAUTHORIZED_RESPONSE,
                    "404": no_group,
                    "413": _message(
                        f"A body over {MAX_KEY_BODY_BYTES} bytes.",
                        f"The body is over {MAX_KEY_BODY_BYTES} bytes; a public key is under 1 KiB",
                    ),
                    "500": _server_error(KEYS_CHANGE_ERROR),
                },
            },
        },
        "/v1/groups/{group_id}/keys/{key}": {
            "delete": {
                "tags": ["Signing keys"],
                "summary": "Remove one of the group's own keys (by id or digest)",
                "operationId": "removeSigningKey",
                "security": AUTH,
                "parameters": [
                    group_id,
                    {
                        "name": "key",
                        "in": "path",
                        "required": True,
                        "description": "The key's id or digest",
                        "schema": {"type": "string", "pattern": "^([0-9a-f]{24}|[0-9a-f]{64})$"},
                    },
                ],
                "responses": {
                    "200": _json("The key removed.", "SigningKey", key=key_example),
                    "400": _message(
                        "A bad id, or a key of an ancestor group: a subgroup cannot remove it.",
                        "key 5e21f24346211e2d8e0bdf41 belongs to group 5e1b76bc4315b70eb242567a, an ancestor "
                        "of this one: a subgroup cannot remove its ancestors' keys; remove it from that group",
                    ),
                    "401": UNAUTHORIZED_RESPONSE,
                    "404": _message("No such group or key, or another owner's.", NO_SUCH_GROUP, NO_SUCH_KEY),
                    "500": _server_error(KEYS_CHANGE_ERROR),
                },
            }
        },
    }


def _anti_rollback_paths() -> dict[str, Any]:
    group_id = {
        "name": "group_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": ID_PATTERN},
    }
    bad_id = _message(
        f"A control character in an id, or one over {MAX_ID_LENGTH} characters.",
        "group_id must not contain control characters",
    )
    no_group = _message("No such group, or another owner's.", NO_SUCH_GROUP)
    setting = {
        "group": "5e1b76bc4315b70eb242567a",
        "enabled": True,
        "set_by": "5e1b76bc4315b70eb242567a",
        "secure_version": 2,
    }
    return {
        "/v1/groups/{group_id}/anti-rollback": {
            "get": {
                "tags": ["Signing keys"],
                "summary": "A group's anti-rollback setting, and the secure_version an upload to it must reach",
                "operationId": "getAntiRollback",
                "security": AUTH,
                "parameters": [group_id],
                "responses": {
                    "200": _json("The setting.", "AntiRollback", on=setting),
                    "400": bad_id,
                    "401": UNAUTHORIZED_RESPONSE,
                    "404": no_group,
                    "500": _server_error(ANTI_ROLLBACK_READ_ERROR),
                },
            },
            "put": {
                "tags": ["Signing keys"],
                "summary": "Turn anti-rollback on or off for a group and its subgroups",
                "description": "With anti-rollback on (for the group or an ancestor), an upload whose app "
                "descriptor `secure_version` is lower than that of the firmware the group runs is refused "
                "with a 400 naming both numbers, and so is one without an app descriptor once the group "
                "runs one with it. The rule is checked again inside the deploy's transaction, so a change "
                "committed while an upload was being verified counts. Promotions and rollbacks move images "
                "already taken, and are not held to it.",
                "operationId": "setAntiRollback",
                "security": AUTH,
                "parameters": [group_id],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("AntiRollbackChange")}},
                },
                "responses": {
                    "200": _json("The setting now.", "AntiRollback", on=setting),
                    "400": _message(
                        "A bad id, or a body other than a JSON object with a boolean `enabled`.",
                        f"{BAD_ANTI_ROLLBACK}: enabled: Field required",
                        f"{BAD_ANTI_ROLLBACK}: enabled: Input should be a valid boolean",
                    ),
                    "401": UNAUTHORIZED_RESPONSE,
                    "404": no_group,
                    "413": _message(
                        f"A body over {MAX_ANTI_ROLLBACK_BYTES} bytes.",
                        f"The body is over {MAX_ANTI_ROLLBACK_BYTES} bytes; it is one boolean",
                    ),
                    "500": _server_error(ANTI_ROLLBACK_CHANGE_ERROR),
                },
            },
        }
    }


def _deployment_paths() -> dict[str, Any]:
    deployment_id = {
        "name": "deployment_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": ID_PATTERN},
    }
    return {
        "/v1/deployments": {
            "get": {
                "tags": ["Deployments"],
                "summary": "A group's plain deploys, newest first (at most 100), with their devices' counts",
                "description": "A plain deploy (one without `canary`) follows the devices it triggered for up to "
                "an hour, and retries those that fail. Only deploys made with MQTT on are listed.",
                "operationId": "listDeployments",
                "security": AUTH,
                "parameters": [GROUP_QUERY],
                "responses": {
                    "200": _json("The group's plain deploys, without their devices.", "DeploymentList"),
                    **GROUP_LIST_ERRORS,
                    "500": _server_error(DEPLOYMENT_READ_ERROR),
                },
            }
        },
        "/v1/deployments/{deployment_id}": {
            "get": {
                "tags": ["Deployments"],
                "summary": "A plain deploy's devices: each one's outcome, last code and retries",
                "operationId": "getDeployment",
                "security": AUTH,
                "parameters": [
                    deployment_id,
                    DEVICES_QUERY,
                ],
                "responses": {
                    "200": _json("The deploy.", "Deployment"),
                    "400": _message(
                        f"A control character in the deployment id or one over {MAX_ID_LENGTH} "
                        "characters, or a devices value that is not true or false.",
                        "devices must be true or false, not 'maybe'",
                    ),
                    "401": UNAUTHORIZED_RESPONSE,
                    "404": _message("No such deployment followed, or another owner's.", NO_SUCH_DEPLOYMENT),
                    "500": _server_error(DEPLOYMENT_READ_ERROR),
                },
            }
        },
    }


def _github_paths() -> dict[str, Any]:
    binding_id = {
        "name": "binding_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": ID_PATTERN},
    }
    delivery_example = {
        "message": "release v1.4.0 queued for deploy",
        "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "outcome": "queued",
    }
    no_key = _message("OTASHIP_SECRET_KEY is not set: no binding's secret can be read.", NO_KEY)
    return {
        "/v1/webhooks/github": {
            "post": {
                "tags": ["GitHub"],
                "summary": "A GitHub webhook delivery: a published release deploys to the binding's group",
                "description": "Called by GitHub with the URL `github bind` printed. The body's "
                "`X-Hub-Signature-256` (HMAC-SHA256 with the binding's secret) is checked before it is "
                "read. `ping` answers 200; a `release` `published` (a prerelease only when the binding "
                "takes them) is recorded and answered 202, then its asset is downloaded and deployed in "
                "the background, through the same checks as `POST /v1/ota/group`; any other event is "
                "recorded as ignored and answered 202. A repeated `X-GitHub-Delivery` changes nothing.",
                "operationId": "receiveGithubWebhook",
                "security": [],
                "parameters": [
                    {
                        "name": "binding",
                        "in": "query",
                        "required": True,
                        "description": "The binding's id, in the URL `github bind` printed",
                        "schema": {"type": "string", "pattern": ID_PATTERN},
                    },
                    {
                        "name": "X-Hub-Signature-256",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "sha256=<HMAC-SHA256 of the body with the webhook's secret, in hex>",
                    },
                    {
                        "name": "X-GitHub-Event",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "X-GitHub-Delivery",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "description": f"GitHub's JSON payload, at most {MAX_WEBHOOK_BYTES} bytes",
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": _json(
                        "A ping, or a delivery already received (nothing changed).",
                        "WebhookAnswer",
                        ping={
                            "message": PONG,
                            "delivery": delivery_example["delivery"],
                            "outcome": "ignored",
                        },
                    ),
                    "202": _json(
                        "Recorded: queued for deploy, or ignored (the message says why).",
                        "WebhookAnswer",
                        queued=delivery_example,
                    ),
                    "400": _message(
                        "No binding in the URL, a missing X-GitHub-Event or X-GitHub-Delivery header, or a "
                        "body that is not JSON (or a release without what a release has).",
                        NO_BINDING_PARAM,
                    ),
                    "401": _message(
                        "The signature is missing, or does not match the body.", NO_SIGNATURE, BAD_SIGNATURE
                    ),
                    "404": _message("No such binding (or it was removed).", NO_BINDING),
                    "413": _message("Over GitHub's payload limit.", TOO_LARGE),
                    "500": _server_error(WEBHOOK_ERROR),
                    "503": no_key,
                },
            }
        },
        "/v1/webhooks/github/deliveries": {
            "get": {
                "tags": ["GitHub"],
                "summary": "The owner's latest webhook deliveries (at most 100), newest first, with their outcomes",
                "operationId": "listGithubDeliveries",
                "security": AUTH,
                "parameters": [
                    {
                        "name": "binding",
                        "in": "query",
                        "description": "Only this binding's",
                        "schema": {"type": "string", "pattern": ID_PATTERN},
                    }
                ],
                "responses": {
                    "200": _json("The deliveries.", "GithubDeliveryList"),
                    "400": _message(
                        f"A binding with a control character, or over {MAX_ID_LENGTH} characters.",
                        "binding must not contain control characters",
                    ),
                    "401": UNAUTHORIZED_RESPONSE,
                    "404": _message("No such binding, or another owner's.", NO_BINDING),
                    "500": _server_error(DELIVERIES_ERROR),
                },
            }
        },
        "/v1/github/bindings": {
            "get": {
                "tags": ["GitHub"],
                "summary": "The owner's GitHub bindings (never their secrets or tokens)",
                "operationId": "listGithubBindings",
                "security": AUTH,
                "responses": {
                    "200": _json("The bindings.", "GithubBindingList"),
                    "401": UNAUTHORIZED_RESPONSE,
                    "500": _server_error(GITHUB_READ_ERROR),
                },
            },
            "post": {
                "tags": ["GitHub"],
                "summary": "Bind a repository's published releases to a group",
                "description": "Answers the webhook URL and a new secret, shown this once: paste both "
                "into the repository's webhook settings (content type application/json, the release "
                "event).",
                "operationId": "createGithubBinding",
                "security": AUTH,
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("GithubBind")}}},
                "responses": {
                    "201": _json("The binding, its webhook URL and its secret.", "GithubBound"),
                    "400": _message(
                        "A body that is not the JSON object described, or a value it refuses.",
                        "repo: Field required",
                        "canary must be a subgroup of the group",
                    ),
                    "401": UNAUTHORIZED_RESPONSE,
                    "404": _message("No such group, or another owner's.", "No such group"),
                    "500": _server_error(GITHUB_CHANGE_ERROR),
                    "503": no_key,
                },
            },
        },
        "/v1/github/bindings/{binding_id}": {
            "delete": {
                "tags": ["GitHub"],
                "summary": "Remove a binding: later deliveries to its URL are refused; its deliveries are kept",
                "operationId": "deleteGithubBinding",
                "security": AUTH,
                "parameters": [binding_id],
                "responses": {
                    "200": _message(
                        "Removed.", "binding 5e21f24346211e2d8e0bdf3c removed: its deliveries are kept"
                    ),
                    "400": _message(
                        f"A control character in the binding id, or one over {MAX_ID_LENGTH} characters.",
                        "binding_id must not contain control characters",
                    ),
                    "401": UNAUTHORIZED_RESPONSE,
                    "404": _message("No such binding, or another owner's.", NO_BINDING),
                    "500": _server_error(GITHUB_CHANGE_ERROR),
                },
            }
        },
    }


def _auth_paths() -> dict[str, Any]:
    return {
        "/v1/auth/login": {
            "post": {
                "tags": ["Sign-in"],
                "summary": "Sign in with an email and a password (IoTaaP's login): a bearer token",
                "description": "`otaship user password EMAIL` sets a user's password. A wrong email and a "
                f"wrong password get the same answer; after {FREE_FAILURES} failures in a row (per email and "
                "per client address) each further attempt must wait, twice as long after each failure.",
                "operationId": "login",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["email", "password"],
                                "properties": {
                                    "email": {"type": "string", "minLength": 1},
                                    "password": {"type": "string", "minLength": 1},
                                    "rememberMe": {
                                        "type": "boolean",
                                        "description": "30 days rather than 12 hours",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json("Signed in.", "Login"),
                    "400": _message(
                        "Not JSON, or a field missing or of the wrong type.",
                        "email is a mandatory field (a string)",
                        "rememberMe must be true or false",
                    ),
                    "401": _message("A wrong email or password (which is not said).", WRONG_SIGN_IN),
                    "413": _message("A body over 8192 bytes.", "The body is over 8192 bytes"),
                    "429": {
                        **_message(
                            "Too many failures in a row for this email or from this address.",
                            "Too many failed sign-ins: try again in 4 s",
                        ),
                        "headers": RATE_LIMITED["headers"],
                    },
                    "500": _server_error(LOGIN_ERROR),
                },
            }
        },
        "/v1/auth/logout": {
            "post": {
                "tags": ["Sign-in"],
                "summary": "Revoke the sign-in token this request carries",
                "operationId": "logout",
                "security": AUTH,
                "responses": {
                    "200": _message("The token is revoked.", "Signed out"),
                    "400": _message(
                        "The request carries an API key, which is revoked on the console's keys page.",
                        "This is an API key, not a sign-in token: revoke keys on the console's keys page",
                    ),
                    "401": UNAUTHORIZED_RESPONSE,
                    "500": _server_error(LOGOUT_ERROR),
                },
            }
        },
    }


def _operations_paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "tags": ["Operations"],
                "summary": "Liveness: the process answers (checks no dependency)",
                "operationId": "healthz",
                "security": [],
                "responses": {"200": _json("Alive.", "Health", example={"status": "ok"})},
            }
        },
        "/readyz": {
            "get": {
                "tags": ["Operations"],
                "summary": "Readiness: the database, the firmware storage and the MQTT link",
                "description": "Each check has a short timeout; a 503 names what failed.",
                "operationId": "readyz",
                "security": [],
                "responses": {
                    "200": _json(
                        "Ready to serve.",
                        "Readiness",
                        example={
                            "status": "ready",
                            "checks": {"database": "ok", "storage": "ok", "mqtt": "ok"},
                        },
                    ),
                    "503": _json(
                        "A dependency failed.",
                        "Readiness",
                        example={
                            "status": "unavailable",
                            "failed": ["mqtt"],
                            "checks": {
                                "database": "ok",
                                "storage": "ok",
                                "mqtt": "not connected to the broker at 10.0.0.5:1883",
                            },
                        },
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ["Operations"],
                "summary": "Prometheus metrics of this replica",
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["Operations"],
                "summary": "This document",
                "operationId": "openapi",
                "security": [],
                "responses": {
                    "200": {"description": "OpenAPI 3.1.", "content": {JSON: {"schema": {"type": "object"}}}}
                },
            }
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "otaship receiver",
            "version": __version__,
            "description": "The IoTaaP Group OTA API, the device endpoints the IoTaaP OS ESP32 "
            "library calls, staged rollouts, and operations endpoints.",
        },
        "tags": [
            {"name": "Group OTA", "description": "The IoTaaP Group OTA API (docs/api.md)"},
            {"name": "Devices", "description": "Called by devices; no API key"},
            {"name": "Rollouts", "description": "Canary first, then the whole group"},
            {
                "name": "Deployments",
                "description": "Plain deploys: the devices they triggered, and their retries",
            },
            {
                "name": "Signing keys",
                "description": "Secure Boot V2 public keys a group's firmware must be signed by, and "
                "its anti-rollback setting",
            },
            {
                "name": "GitHub",
                "description": "Published releases deployed by webhook, and the bindings that allow it",
            },
            {"name": "Sign-in", "description": "A password for a bearer token, as IoTaaP's login"},
            {"name": "Operations", "description": "Probes, metrics and this document"},
        ],
        "security": AUTH,
        "paths": _rate_limited(
            {
                **_group_ota_paths(),
                **_device_paths(),
                **_rollout_paths(),
                **_deployment_paths(),
                **_signing_key_paths(),
                **_anti_rollback_paths(),
                **_github_paths(),
                **_auth_paths(),
                **_operations_paths(),
            }
        ),
        "components": {
            "schemas": components(),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <api key>, or a token from POST /v1/auth/login",
                }
            },
        },
    }


_DOCUMENT = document()


async def openapi_json(request: Request) -> Response:
    # With OTASHIP_PUBLIC_URL, the document names the receiver as clients reach it
    # (behind a proxy, not the address it binds), so generated clients need no base URL.
    services = getattr(request.app.state, "services", None)
    public_url = services.settings.public_url if services is not None else None
    if public_url:
        return JSONResponse({**_DOCUMENT, "servers": [{"url": public_url}]})
    return JSONResponse(_DOCUMENT)


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
