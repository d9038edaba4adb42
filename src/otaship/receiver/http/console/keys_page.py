"""The owner's API keys: listed by prefix, created (the secret shown once), revoked."""

from __future__ import annotations

from sqlmodel import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.db.logins import list_api_keys, revoke_api_key
from otaship.receiver.db.models import User
from otaship.receiver.db.users import issue_api_key
from otaship.receiver.http.console.guard import changing, signed_in
from otaship.receiver.http.console.render import not_found, page, see_other
from otaship.receiver.http.console.session import Visitor
from otaship.receiver.ids import utcnow
from otaship.receiver.services import Services


async def keys_response(request: Request, visitor: Visitor, new_key: str | None = None) -> Response:
    keys = await Services.of(request).run_db(
        lambda session: list_api_keys(session=session, user_id=visitor.user.id)
    )
    return page(request, "keys.html", {"visitor": visitor, "keys": keys, "new_key": new_key})


@signed_in
async def keys_page(request: Request, visitor: Visitor) -> Response:
    return await keys_response(request, visitor)


@changing
async def create_key(request: Request, visitor: Visitor, form: FormData) -> Response:
    def issue(session: Session) -> str:
        user = session.get(User, visitor.user.id)
        assert user is not None
        return issue_api_key(session=session, user=user, revoke_existing=False)

    secret = await Services.of(request).run_write(issue)
    # Shown in this answer only: the database keeps its hash.
    return await keys_response(request, visitor, new_key=secret)


@changing
async def revoke_key(request: Request, visitor: Visitor, form: FormData) -> Response:
    key_id = str(request.path_params["key_id"])
    revoked = await Services.of(request).run_write(
        lambda session: revoke_api_key(session=session, user_id=visitor.user.id, key_id=key_id, now=utcnow())
    )
    if not revoked:
        return not_found(request, visitor, "key")
    return see_other("/console/keys")
