"""A group's signing keys: list (its ancestors' too), add, and remove its own."""

from __future__ import annotations

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response

from otaship.firmware.signing_keys import InvalidKey, load_public_key
from otaship.receiver.db.models import Group
from otaship.receiver.db.signing_keys import GroupKey, SigningKeyError, add_key, group_keys, remove_key
from otaship.receiver.fields import BadField, has_control
from otaship.receiver.http import wire
from otaship.receiver.http.management.group_routes import NotFound, group_route
from otaship.receiver.http.management.json_body import BodyTooLarge, read_json
from otaship.receiver.http.management.owned import path_id
from otaship.receiver.http.management.route import owner_route
from otaship.receiver.http.responses import message
from otaship.receiver.ids import utcnow

READ_ERROR = "Error when getting signing keys"
CHANGE_ERROR = "Error when changing signing keys"
NO_KEY = "No such key"
# A PEM public key and a name, with room for JSON's escapes.
MAX_BODY_BYTES = 64 * 1024


def key_view(found: GroupKey) -> wire.SigningKey:
    key = found.key
    return wire.SigningKey(
        id=key.id,
        group=key.group_id,
        name=key.name,
        scheme=key.scheme,
        digest=key.digest,
        public_key=key.public_key,
        inherited_from=found.inherited_from,
        created_at=key.created_at,
    )


async def list_keys(request: Request) -> Response:
    try:
        route = group_route(request)
    except BadField as exc:
        return message(400, str(exc))

    def read(session: Session, group: Group) -> wire.SigningKeyList:
        return wire.SigningKeyList(keys=[key_view(k) for k in group_keys(session=session, group=group)])

    return await route.read(read)


async def add_signing_key(request: Request) -> Response:
    try:
        route = group_route(request)
        body = await read_json(
            request,
            wire.NewSigningKey,
            limit=MAX_BODY_BYTES,
            too_large=f"The body is over {MAX_BODY_BYTES} bytes; a public key is under 1 KiB",
            expected="Expected a JSON object with public_key (PEM) and an optional name",
        )
    except BadField as exc:
        return message(400, str(exc))
    except BodyTooLarge as exc:
        return message(413, str(exc))
    if body.name is not None and has_control(body.name):
        return message(400, "name must not contain control characters")
    try:
        public = load_public_key(body.public_key.encode("utf-8", "replace"))
    except InvalidKey as exc:
        return message(400, f"The key cannot be registered: {exc}")

    def write(session: Session, group: Group) -> wire.SigningKey:
        row = add_key(session=session, group=group, key=public, name=body.name, now=utcnow())
        return key_view(GroupKey(key=row, inherited_from=None))

    try:
        return await route.write(write, 201)
    except SigningKeyError as exc:
        return message(400, f"The key cannot be registered: {exc}")


async def remove_signing_key(request: Request) -> Response:
    try:
        route = group_route(request)
        ref = path_id(request, "key")
    except BadField as exc:
        return message(400, str(exc))

    def write(session: Session, group: Group) -> wire.SigningKey:
        try:
            removed = remove_key(session=session, group=group, ref=ref)
        except LookupError:
            raise NotFound(NO_KEY) from None
        return key_view(GroupKey(key=removed, inherited_from=None))

    try:
        return await route.write(write)
    except SigningKeyError as exc:
        return message(400, str(exc))


routes = [
    owner_route("/v1/groups/{group_id}/keys", list_keys, "GET", failure=READ_ERROR),
    owner_route("/v1/groups/{group_id}/keys", add_signing_key, "POST", failure=CHANGE_ERROR),
    owner_route("/v1/groups/{group_id}/keys/{key}", remove_signing_key, "DELETE", failure=CHANGE_ERROR),
]
