"""/docs: the API reference, rendered on the server from the same document as
/openapi.json; nothing from a CDN, no script."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.http import openapi
from otaship.receiver.http.console.render import page
from otaship.receiver.http.console.session import visitor_of

METHODS = ("get", "head", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def anchor(self) -> str:
        return str(self.spec.get("operationId", f"{self.method}-{self.path}"))


def schema_name(schema: dict[str, Any] | None) -> str:
    """A schema in a few words: its component's name, or its type."""
    if not schema:
        return ""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(schema_name(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {schema_name(schema.get('items'))}"
    if "enum" in schema:
        return " | ".join(str(v) for v in schema["enum"])
    return str(schema.get("type", "any"))


def by_tag(document: dict[str, Any]) -> list[tuple[dict[str, Any], list[Operation]]]:
    """Each tag of the document with its operations, in the document's order."""
    tags = [dict(tag) for tag in document.get("tags", [])]
    grouped: dict[str, list[Operation]] = {tag["name"]: [] for tag in tags}
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                operation = Operation(method=method, path=path, spec=item[method])
                for tag in operation.spec.get("tags", ["Other"]):
                    if tag not in grouped:
                        grouped[tag] = []
                        tags.append({"name": tag})
                    grouped[tag].append(operation)
    return [(tag, grouped[tag["name"]]) for tag in tags if grouped[tag["name"]]]


async def docs_page(request: Request) -> Response:
    document = openapi.document()
    return page(
        request,
        "docs.html",
        {
            "visitor": await visitor_of(request),
            "info": document["info"],
            "tags": by_tag(document),
            "schemas": document["components"]["schemas"],
            "schema_name": schema_name,
        },
    )
