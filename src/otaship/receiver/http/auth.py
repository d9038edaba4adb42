"""Bearer API keys: who is asking."""
from __future__ import annotations

from starlette.requests import Request

from otaship.receiver.db.models import User
from otaship.receiver.db.users import user_for_api_key
from otaship.receiver.services import Services


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


async def authenticated_owner(request: Request) -> User | None:
    """The owner of the request's API key, or None for a missing or bad key."""
    token = bearer_token(request)
    if token is None or len(token) > 200:
        return None
    services = Services.of(request)
    return await services.run_db(lambda session: user_for_api_key(session=session, api_key=token))
