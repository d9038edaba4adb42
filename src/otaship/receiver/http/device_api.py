"""Device endpoints, wire-compatible with the IoTaaP OS ESP32 library.

Devices call these after a trigger, all at once, so they answer from the
in-memory catalog and never read the database per request. While the database
is down they answer from what the catalog last read; a group this replica has
never read gets a 503 with Retry-After.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, MalformedRangeHeader, Response
from starlette.routing import Route

from otaship.protocol import DOWNLOAD_ROUTE, LATEST_ROUTE, split_credentials
from otaship.receiver.http.responses import message, server_error
from otaship.receiver.ids import secret_matches_plain
from otaship.receiver.services import Services
from otaship.receiver.storage import ObjectNotFound, StorageError
from otaship.receiver.targeting.catalog import DatabaseUnavailable

UNAVAILABLE = "The group cannot be looked up right now: try again shortly"
# Seconds a device waits before asking again for a group the receiver could not look up.
RETRY_AFTER = 5


def _unavailable() -> Response:
    # No cause in the answer: these routes take no credentials, and a database
    # error names hosts and ports. The catalog logged it.
    response = message(503, UNAVAILABLE)
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


class FirmwareResponse(FileResponse):
    """The image, whole when the Range header is one it cannot serve.

    Starlette answers a range in another unit, or a malformed one, with a
    plain-text 400; RFC 9110 says to ignore a unit the server does not know,
    and allows ignoring an invalid range: the whole image is always a right
    answer. A range past the end is still a 416.
    """

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:
            # No ranges: FileResponse serves the whole file.
            return []


async def latest(request: Request) -> Response:
    services = Services.of(request)
    try:
        entry = await services.catalog.lookup(request.path_params["group_id"])
    except DatabaseUnavailable:
        return _unavailable()
    if entry is None:
        return message(404, "No such group")
    if entry.firmware is None:
        return message(404, "No firmware for this group")
    return Response(entry.firmware.latest_body, media_type="application/json")


async def download(request: Request) -> Response:
    credentials = split_credentials(request.path_params["credentials"])
    if credentials is None:
        return message(404, "Not found")
    group_id, token = credentials
    services = Services.of(request)
    try:
        entry = await services.catalog.lookup(group_id)
    except DatabaseUnavailable:
        return _unavailable()
    # One answer for an unknown group, a wrong token and no firmware, so the
    # endpoint tells nothing to somebody guessing.
    if entry is None or not secret_matches_plain(token, entry.token) or entry.firmware is None:
        return message(404, "Not found")
    firmware = entry.firmware
    try:
        path, stat = await services.run_blocking(lambda: _stat_local(services, firmware.object_key))
    except ObjectNotFound as exc:
        return server_error("Firmware file is missing from storage", exc)
    except (StorageError, OSError) as exc:
        return server_error("Error when reading firmware file", exc)
    # The object is immutable: its sha256 is a strong validator for Range/If-Range.
    # With stat_result given, FileResponse does not stat the file again; it opens
    # it right after this returns.
    return FirmwareResponse(
        path,
        media_type="application/octet-stream",
        stat_result=stat,
        headers={
            "x-MD5": firmware.md5,
            "etag": f'"{firmware.sha256}"',
            "cache-control": "no-cache",
        },
    )


def _stat_local(services: Services, key: str) -> tuple[Path, os.stat_result]:
    """A local copy of the object, checked to be still there.

    A caching backend may evict the file between handing out its path and our
    opening it: it keeps a path it just handed out for a grace window, but a
    request held up longer than that (a starved thread pool) can still lose it.
    Asking again fetches it anew.
    """
    path = services.storage.local_path(key)
    try:
        return path, os.stat(path)
    except FileNotFoundError:
        path = services.storage.local_path(key)
        return path, os.stat(path)


routes = [
    Route(LATEST_ROUTE, latest, methods=["GET"]),
    Route(DOWNLOAD_ROUTE, download, methods=["GET", "HEAD"]),
]
