"""Sign in to the console with an email and a password; sign out."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.db.logins import CONSOLE, revoke_login_token
from otaship.receiver.http.console.guard import MAX_FORM_FIELDS, changing, refused_csrf
from otaship.receiver.http.console.render import page, see_other
from otaship.receiver.http.console.session import (
    LIFETIME,
    Visitor,
    clear_session_cookie,
    set_session_cookie,
    visitor_of,
)
from otaship.receiver.http.sign_in import Refused, sign_in
from otaship.receiver.ids import utcnow
from otaship.receiver.services import Services

HOME = "/console/"


async def sign_in_form(request: Request) -> Response:
    if await visitor_of(request) is not None:
        return see_other(HOME)
    return page(request, "sign_in.html", {"visitor": None, "email": "", "error": None})


def cross_site(request: Request) -> bool:
    """A sign-in posted from another site's page (which would sign the browser
    in to the other site's account): no CSRF token exists before a session, so
    the browser's own Sec-Fetch-Site and Origin headers tell."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin == "null"
    public_url = Services.of(request).settings.public_url
    own = {f"{request.url.scheme}://{request.url.netloc}"}
    if public_url:
        parts = urlsplit(public_url)
        own.add(f"{parts.scheme}://{parts.netloc}")
    return origin not in own


async def sign_in_post(request: Request) -> Response:
    if cross_site(request):
        return refused_csrf(request, None)
    async with request.form(max_files=0, max_fields=MAX_FORM_FIELDS) as form:
        email = str(form.get("email") or "").strip()
        password = str(form.get("password") or "")
    if not email or not password:
        return page(
            request,
            "sign_in.html",
            {"visitor": None, "email": email, "error": "Enter your email and your password."},
            status=400,
        )
    result = await sign_in(request, email=email, password=password, kind=CONSOLE, lifetime=LIFETIME)
    if isinstance(result, Refused):
        response = page(
            request,
            "sign_in.html",
            {"visitor": None, "email": email, "error": result.text},
            status=result.status,
        )
        if result.retry_after is not None:
            response.headers["Retry-After"] = str(result.retry_after)
        return response
    signed = see_other(HOME)
    set_session_cookie(signed, request, result.token)
    return signed


@changing
async def sign_out(request: Request, visitor: Visitor, form: FormData) -> Response:
    await Services.of(request).run_write(
        lambda session: revoke_login_token(session=session, token=visitor.secret, now=utcnow())
    )
    response = see_other("/console/sign-in")
    clear_session_cookie(response, request)
    return response
