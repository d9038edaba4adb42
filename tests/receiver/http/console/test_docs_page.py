"""/docs: every operation of /openapi.json, on a page with no CDN and no inline script."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

from otaship.receiver.http.console.render import CSP


def test_every_operation_is_on_the_page(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert f'id="{operation["operationId"]}"' in page.text, (method, path)
    for name in document["components"]["schemas"]:
        assert f'id="schema-{name}"' in page.text
    assert "Group OTA update is not available in free model" in page.text
    # Only the package's own files: no other origin, no inline script.
    assert re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', page.text) == [
        "/console/static/console.css",
        "/console/static/console.js",
    ]
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text) is None
    assert client.get("/console/static/console.js").status_code == 200
