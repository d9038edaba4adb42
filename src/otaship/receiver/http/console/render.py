"""Pages: Jinja2 templates from the package, every answer with a
Content-Security-Policy that allows only the package's own script and style.

Jinja2 escapes every value (Starlette turns autoescape on), so text a user
supplied (a group's name, a device's) shows as text. No script is inline and
none is allowed inline: a value that slipped through escaping still would not run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from otaship.receiver.ids import iso_utc

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
TEMPLATES.env.filters["iso"] = iso_utc
STATIC = HERE / "static"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Pages hold an owner's data and a CSRF token: never kept by a shared cache.
    "Cache-Control": "no-store",
}
SIGN_IN_PATH = "/console/sign-in"


def page(request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status)
    response.headers.update(PAGE_HEADERS)
    return response


def not_found(request: Request, visitor: Any = None, what: str = "page") -> HTMLResponse:
    """Another owner's id, or none at all: the same 404 either way."""
    return page(request, "not_found.html", {"visitor": visitor, "what": what}, status=404)


def to_sign_in() -> Response:
    return RedirectResponse(SIGN_IN_PATH, status_code=303, headers=PAGE_HEADERS)


def see_other(url: str) -> Response:
    return RedirectResponse(url, status_code=303, headers=PAGE_HEADERS)
