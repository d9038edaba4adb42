"""Downloads through a real `otaship serve`, on each server, from local storage and from GCS.

What an ESP32's HTTPUpdate reads: the status, `Content-Length` (it refuses a
chunked body), `x-MD5`, and every byte of the image. On granian a whole image
goes out through the ASGI `http.response.pathsend` extension, read from the
local file (for GCS, the receiver's cache file) by the server itself; a range
has no pathsend form and goes through the app. The proof is the trace-level
log, which lists every ASGI message the app sends (uvicorn's message logger,
around the app on both servers).
"""

from __future__ import annotations

import hashlib
import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.esp_image import build_image
from tests.receiver_process import SERVERS, ReceiverProcess, migrated_env, otaship_json
from tests.waiting import eventually

if TYPE_CHECKING:
    from tests.gcs_emulator import GCSEmulator

pytest_plugins = ["tests.gcs_emulator"]

PATHSEND = "'type': 'http.response.pathsend'"
BODY = "'type': 'http.response.body'"


@dataclass
class Served:
    receiver: ReceiverProcess
    image: bytes
    path: str

    def get(
        self, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request over a plain HTTP/1.1 connection: the status, the raw headers, the body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.receiver.port, timeout=30)
        try:
            connection.request(method, self.path, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()


@pytest.fixture(params=["local", "gcs"])
def storage(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "local":
        yield {}
        return
    # The emulator's address reaches the server through STORAGE_EMULATOR_HOST.
    emulator: GCSEmulator = request.getfixturevalue("gcs_emulator")
    yield {"OTASHIP_STORAGE_URL": f"gs://{emulator.bucket}/downloads"}


@pytest.fixture(params=SERVERS)
def served(request: pytest.FixtureRequest, storage: dict[str, str], tmp_path: Path) -> Iterator[Served]:
    env = migrated_env(tmp_path / "data", server=request.param, OTASHIP_LOG_LEVEL="trace", **storage)
    user = otaship_json(env, "user", "create", "ada@example.com", "--plan", "pro")
    group = otaship_json(env, "group", "create", "fleet", "--owner", "ada@example.com")
    receiver = ReceiverProcess(env).start()
    try:
        image = build_image("1.0.0", code_size=300_000)
        httpx.post(
            f"{receiver.url}/v1/ota/group",
            headers={"Authorization": f"Bearer {user['api_key']}"},
            data={"group": group["id"], "token": group["token"], "version": "1.0.0"},
            files={"firmware": ("firmware.bin", image)},
            timeout=30,
        ).raise_for_status()
        yield Served(receiver, image, f"/v1/ota/group/download/{group['id']}{group['token']}")
    finally:
        receiver.stop()


def _lines(receiver: ReceiverProcess) -> list[str]:
    assert receiver.log is not None
    receiver.log.seek(0)
    return receiver.log.read().decode(errors="replace").splitlines()


def _sent(receiver: ReceiverProcess) -> list[str]:
    """The trace lines of the messages the app sent so far, from the server's log."""
    return [line for line in _lines(receiver) if " Send {" in line and "http.response" in line]


def _logged_requests(receiver: ReceiverProcess, request: str) -> int:
    """How many access lines name `request` ("GET /path"). The log is written by
    a thread of its own, in order: once a request's access line is in the file,
    so is every line logged before it, its trace lines included."""
    return sum(1 for line in _lines(receiver) if "otaship.access" in line and request in line)


def test_a_whole_image_has_its_length_md5_and_etag_and_no_chunks(served: Served) -> None:
    image = served.image
    # The fixture's upload, fully logged, before counting what this test adds.
    eventually(
        lambda: _logged_requests(served.receiver, "POST /v1/ota/group") == 1, "the upload's log lines", 10
    )
    before = len(_sent(served.receiver))
    status, headers, body = served.get()
    assert status == 200
    assert body == image
    assert headers["content-length"] == str(len(image))
    assert "transfer-encoding" not in headers
    assert headers["x-md5"] == hashlib.md5(image).hexdigest()
    assert headers["etag"] == f'"{hashlib.sha256(image).hexdigest()}"'
    assert headers["content-type"] == "application/octet-stream"
    assert headers["accept-ranges"] == "bytes"
    assert headers["x-content-type-options"] == "nosniff"
    eventually(
        lambda: _logged_requests(served.receiver, "GET /v1/ota/group/download/") == 1,
        "the download's log lines",
        10,
    )
    sent = _sent(served.receiver)[before:]
    server = served.receiver.env["OTASHIP_SERVER"]
    if server == "granian":
        # The server read the file: the app sent the start and the path, no bytes.
        assert [PATHSEND in line for line in sent] == [False, True], sent
        assert not any(BODY in line for line in sent)
    else:
        assert not any(PATHSEND in line for line in sent)
        assert any(BODY in line for line in sent)

    # HEAD: the same headers, no body.
    status, head, body = served.get("HEAD")
    assert (status, body) == (200, b"")
    assert {k: head[k] for k in ("content-length", "x-md5", "etag")} == {
        k: headers[k] for k in ("content-length", "x-md5", "etag")
    }


def test_a_range_is_exact_and_one_past_the_end_is_416(served: Served) -> None:
    image = served.image
    status, headers, body = served.get(headers={"Range": "bytes=1000-4999"})
    assert status == 206
    assert body == image[1000:5000]
    assert headers["content-length"] == "4000"
    assert headers["content-range"] == f"bytes 1000-4999/{len(image)}"
    assert "transfer-encoding" not in headers
    assert headers["x-md5"] == hashlib.md5(image).hexdigest()

    # The rest of an interrupted download, from an offset to the end.
    status, headers, body = served.get(headers={"Range": f"bytes={len(image) - 10}-"})
    assert (status, body) == (206, image[-10:])
    assert headers["content-length"] == "10"

    # If-Range with the image's ETag resumes; with another, the whole image comes.
    etag = f'"{hashlib.sha256(image).hexdigest()}"'
    assert served.get(headers={"Range": "bytes=0-9", "If-Range": etag})[2] == image[:10]
    status, _, body = served.get(headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert (status, body) == (200, image)

    status, headers, _ = served.get(headers={"Range": f"bytes={len(image)}-"})
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(image)}"
