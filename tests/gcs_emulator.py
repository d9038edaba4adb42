"""An in-process GCS emulator for tests that use the real google-cloud-storage client.

Load it with `pytest_plugins = ["tests.gcs_emulator"]` (importing the fixture by
name works too, but pytest then cannot rewrite this module's asserts). The
`gcs_emulator` fixture starts gcp-storage-emulator on a free loopback port, creates
a bucket, and points STORAGE_EMULATOR_HOST at it, which makes the client use
anonymous credentials.

Compared with `gcp_storage_emulator.server.create_server`, this wires the same
request handler and in-memory storage into our own HTTPServer so that tests can
count requests, slow responses down, and stop the server to simulate an outage
and start it again on the same port with the same objects. It also does two
things GCS does and the package does not: it honours the generation and
metageneration preconditions of an object DELETE or PATCH (412 when they do not
hold), and a PATCH stamps the object's `updated` time.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from http.server import HTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from gcp_storage_emulator.handlers import buckets
from gcp_storage_emulator.server import RequestHandler
from gcp_storage_emulator.storage import Storage as EmulatorStorage

EMULATOR_BUCKET = "otaship-test"
_OBJECT_PATH = re.compile(r"(?:/storage/v1)?/b/(?P<bucket>[-.\w]+)/o/(?P<name>.*[^/])")
_PRECONDITIONS = {"ifGenerationMatch": "generation", "ifMetagenerationMatch": "metageneration"}


def _timestamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _RecordingHandler(RequestHandler):  # type: ignore[misc]  # untyped package
    emulator: GCSEmulator

    def parse_request(self) -> bool:
        ok = bool(super().parse_request())
        if ok:
            self.emulator.requests.append((self.command, self.path))
            if self.emulator.delay:
                time.sleep(self.emulator.delay)
        return ok

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the emulator logs every request at INFO; tests do not need it

    def do_DELETE(self) -> None:
        if not self._precondition_failed():
            super().do_DELETE()

    def do_PATCH(self) -> None:
        if self._precondition_failed():
            return
        super().do_PATCH()
        obj = self._object()
        if obj is not None:
            obj["updated"] = _timestamp(time.time())

    def _object(self) -> dict[str, Any] | None:
        match = _OBJECT_PATH.fullmatch(urlsplit(self.path).path)
        if match is None:
            return None
        found: dict[str, Any] | None = self.emulator.objects(match["bucket"]).get(unquote(match["name"]))
        return found

    def _precondition_failed(self) -> bool:
        """Answer 412, as GCS does, when the request's preconditions do not hold."""
        query = parse_qs(urlsplit(self.path).query)
        obj = self._object()
        if obj is None:
            return False  # the handler answers 404
        for parameter, attribute in _PRECONDITIONS.items():
            wanted = query.get(parameter)
            if wanted and wanted[0] != str(obj[attribute]):
                error = {
                    "code": 412,
                    "message": "At least one of the pre-conditions you specified did not hold.",
                }
                body = json.dumps({"error": error}).encode()
                self.send_response(412)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return True
        return False


@dataclass
class GCSEmulator:
    """A running emulator: its URL, its bucket, and the requests it has seen."""

    bucket: str = EMULATOR_BUCKET
    host: str = "127.0.0.1"
    port: int = 0
    #: (method, path) of every request, in order.
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: Seconds to stall each request, to make concurrent callers overlap.
    delay: float = 0.0
    _storage: EmulatorStorage = field(init=False)
    _httpd: HTTPServer | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._storage = EmulatorStorage(use_memory_fs=True)
        buckets.create_bucket(self.bucket, self._storage)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Listen (again, on the same port after a stop), keeping stored objects."""
        handler = type("Handler", (_RecordingHandler,), {"emulator": self})
        # The emulator's own server is single-threaded too; keep its behaviour.
        self._httpd = HTTPServer((self.host, self.port), partial(handler, self._storage))
        self.port = self._httpd.server_address[1]
        # A short poll interval: stop() waits for it, once per test.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listening socket: new connections are refused, like an outage."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def count(self, method: str, fragment: str = "") -> int:
        """How many requests had this method and a path containing `fragment`."""
        return sum(1 for m, path in self.requests if m == method and fragment in path)

    def object_names(self) -> list[str]:
        return sorted(self._storage.objects.get(self.bucket, {}))

    def objects(self, bucket: str) -> dict[str, dict[str, Any]]:
        """The bucket's object resources by name, as the emulator keeps them."""
        found: dict[str, dict[str, Any]] = self._storage.objects.get(bucket, {})
        return found

    def backdate(self, name: str, seconds: float) -> None:
        """Make an object look stored (or last refreshed) `seconds` ago.

        A test of the orphan sweep cannot wait an hour for an object to age.
        """
        obj = self.objects(self.bucket)[name]
        obj["updated"] = obj["timeCreated"] = _timestamp(time.time() - seconds)


@pytest.fixture
def gcs_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GCSEmulator]:
    emulator = GCSEmulator()
    emulator.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    try:
        yield emulator
    finally:
        emulator.stop()
