"""receive_upload (receiver/intake/multipart.py) on its own: an ASGI body in, an Upload or
the exact refusal out, and never a spool file left behind by a refused one."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from otaship.firmware.tally import ImageTally
from otaship.receiver.intake.multipart import (
    ENVELOPE_ALLOWANCE,
    MAX_FIELD_BYTES,
    MAX_PARTS,
    MalformedUpload,
    Upload,
    UploadTimedOut,
    UploadTooLarge,
    receive_upload,
)
from tests import multipart
from tests.esp_image import build_image

MAX_FILE = 256 * 1024
TOO_LARGE_BODY = (
    f"The request body is larger than the limit of {MAX_FILE + ENVELOPE_ALLOWANCE} bytes: a firmware of at "
    f"most {MAX_FILE} bytes (0.2 MiB) and {ENVELOPE_ALLOWANCE} bytes of form fields"
)
FIELDS = {"group": "5e10fc5e77ba18070312e171", "token": "AATluvfLURijoH9d", "version": "1.4.0"}


class Body:
    """An ASGI receive(): the chunks, then the end of the body, or what `then` does instead."""

    def __init__(
        self, chunks: list[bytes], then: Callable[[], Awaitable[dict[str, Any]]] | None = None
    ) -> None:
        self.chunks = list(chunks)
        self.then = then
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.chunks:
            return {"type": "http.request", "body": self.chunks.pop(0), "more_body": True}
        if self.then is not None:
            return await self.then()
        return {"type": "http.request", "body": b"", "more_body": False}


def request(body: Body, content_type: str | None = multipart.CONTENT_TYPE, **headers: str) -> Request:
    raw = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    if content_type is not None:
        raw.append((b"content-type", content_type.encode()))
    scope = {"type": "http", "method": "POST", "path": "/v1/ota/group", "query_string": b"", "headers": raw}
    return Request(scope, body)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "spool"
    yield folder
    # Refused or discarded: nothing outlives its upload.
    assert not folder.exists() or list(folder.iterdir()) == []


def receive(req: Request, spool: Path, **options: Any) -> Upload:
    return asyncio.run(receive_upload(req, spool_dir=spool, max_file_bytes=MAX_FILE, **options))


def refusal(req: Request, spool: Path, **options: Any) -> str:
    with pytest.raises((MalformedUpload, UploadTooLarge, UploadTimedOut)) as refused:
        receive(req, spool, **options)
    return f"{type(refused.value).__name__}: {refused.value}"


# --- what comes through ---------------------------------------------------------------------


@pytest.mark.parametrize("flush_to_disk", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 4096, 1 << 20])
def test_fields_and_firmware_arrive_whole(spool: Path, flush_to_disk: bool, chunk_size: int) -> None:
    image = build_image("1.4.0", code_size=8192)
    body = multipart.form(FIELDS, image)
    chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]

    upload = receive(request(Body(chunks)), spool, flush_to_disk=flush_to_disk)
    try:
        assert upload.fields == FIELDS
        assert upload.file_path is not None and upload.file_path.parent == spool
        assert upload.file_path.name.startswith("upload-") and upload.file_path.suffix == ".part"
        assert upload.file_path.read_bytes() == image
        assert (upload.file_name, upload.file_size) == ("firmware.bin", len(image))
        tally = ImageTally()
        tally.update(image)
        assert upload.facts == tally.facts()
        assert upload.facts is not None and upload.facts.md5 == hashlib.md5(image).hexdigest()
    finally:
        upload.discard()
    assert upload.file_path is None


def test_the_first_of_a_repeated_field_wins_and_nameless_parts_are_skipped(spool: Path) -> None:
    body = (
        multipart.field_part("version", "1.0.0")
        + multipart.field_part("version", "2.0.0")
        + multipart.field_part("", "ignored")
        + multipart.field_part("commit", "")
        + multipart.closing()
    )
    upload = receive(request(Body([body])), spool)
    assert (upload.fields, upload.file_path, upload.facts) == ({"version": "1.0.0", "commit": ""}, None, None)


def test_an_empty_firmware_is_a_file_of_no_bytes(spool: Path) -> None:
    upload = receive(request(Body([multipart.form({}, b"")])), spool)
    try:
        assert upload.file_path is not None and upload.file_path.read_bytes() == b""
        assert upload.file_size == 0 and upload.facts is not None and upload.facts.size == 0
    finally:
        upload.discard()


def test_an_urlencoded_form_gives_its_fields(spool: Path) -> None:
    body = Body([b"group=g1&version=1.0%2B2&version=9&empty=&note=caf%C3%A9"])
    upload = receive(request(body, "application/x-www-form-urlencoded"), spool)
    assert upload.fields == {"group": "g1", "version": "1.0+2", "empty": "", "note": "café"}
    assert upload.file_path is None


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json", "multipart/form-data"])
def test_a_body_that_is_no_form_gives_nothing_and_is_not_read(spool: Path, content_type: str | None) -> None:
    body = Body([b"--x\r\n"])
    upload = receive(request(body, content_type), spool)
    assert (upload.fields, upload.file_path, body.calls) == ({}, None, 0)


# --- the limits -----------------------------------------------------------------------------


def test_a_firmware_over_its_limit(spool: Path) -> None:
    body = multipart.form(FIELDS, b"\xe9" * (MAX_FILE + 1))
    assert refusal(request(Body([body])), spool) == (
        f"UploadTooLarge: Firmware is larger than the limit of {MAX_FILE} bytes (0.2 MiB)"
    )


def test_a_firmware_of_exactly_the_limit_passes(spool: Path) -> None:
    upload = receive(request(Body([multipart.form({}, b"\xe9" * MAX_FILE)])), spool)
    assert upload.file_size == MAX_FILE
    upload.discard()


def test_a_declared_length_over_the_body_limit_is_refused_before_reading(spool: Path) -> None:
    body = Body([multipart.form(FIELDS)])
    declared = str(MAX_FILE + ENVELOPE_ALLOWANCE + 1)
    assert refusal(request(body, content_length=declared), spool) == f"UploadTooLarge: {TOO_LARGE_BODY}"
    assert body.calls == 0
    # Twenty-one digits say too much too, whatever they add up to.
    assert refusal(request(body, content_length="0" * 21), spool) == f"UploadTooLarge: {TOO_LARGE_BODY}"


def test_bytes_around_the_parts_count_towards_the_body_limit(spool: Path) -> None:
    # An epilogue the parser skips, and no Content-Length to go by.
    epilogue = b"x" * (MAX_FILE + ENVELOPE_ALLOWANCE)
    body = Body([multipart.form(FIELDS), epilogue])
    assert refusal(request(body), spool) == f"UploadTooLarge: {TOO_LARGE_BODY}"


def test_an_urlencoded_form_over_its_limit(spool: Path) -> None:
    body = Body([b"a=" + b"b" * ENVELOPE_ALLOWANCE])
    assert refusal(request(body, "application/x-www-form-urlencoded"), spool) == (
        f"UploadTooLarge: The form is larger than the limit of {ENVELOPE_ALLOWANCE} bytes"
    )


def test_too_many_parts(spool: Path) -> None:
    fields = {f"f{n}": "v" for n in range(MAX_PARTS + 1)}
    assert refusal(request(Body([multipart.form(fields)])), spool) == (
        f"MalformedUpload: Too many form fields (at most {MAX_PARTS})"
    )
    assert receive(request(Body([multipart.form(dict(list(fields.items())[:MAX_PARTS]))])), spool).fields


def test_a_field_too_long(spool: Path) -> None:
    body = multipart.form({"version": "1" * (MAX_FIELD_BYTES + 1)}, b"\xe9" * 100)
    assert refusal(request(Body([body])), spool) == (
        f"MalformedUpload: Form field 'version' is too long (at most {MAX_FIELD_BYTES} bytes)"
    )


def test_a_file_in_another_field(spool: Path) -> None:
    body = multipart.file_part(b"\xe9", name="image") + multipart.closing()
    assert refusal(request(Body([body])), spool) == (
        "MalformedUpload: Unexpected file part 'image': only 'firmware' carries a file"
    )


def test_a_second_firmware(spool: Path) -> None:
    body = multipart.file_part(b"\xe9" * 10) + multipart.file_part(b"\xe9" * 10) + multipart.closing()
    assert refusal(request(Body([body])), spool) == (
        "MalformedUpload: A second file part 'firmware': send one firmware file"
    )


def test_a_body_that_ends_inside_the_firmware(spool: Path) -> None:
    body = multipart.file_head() + b"\xe9" * 1000
    assert refusal(request(Body([body])), spool) == (
        "MalformedUpload: The multipart body ended before the firmware file did"
    )


def test_framing_the_parser_cannot_read(spool: Path) -> None:
    body = b"not a multipart body, though it says so"
    message = refusal(request(Body([body])), spool)
    assert message.startswith("MalformedUpload: The multipart body could not be read: ")


# --- a client that stalls, dawdles or leaves ----------------------------------------------


async def never() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def test_a_stalled_upload(spool: Path) -> None:
    body = Body([multipart.field_part("version", "1.0.0"), multipart.file_head(), b"\xe9" * 100], then=never)
    assert refusal(request(body), spool, idle_timeout=0.2) == (
        "UploadTimedOut: The upload stalled: no bytes arrived for 0.2 seconds"
    )


def test_an_upload_slower_than_its_total_time(spool: Path) -> None:
    async def trickle() -> dict[str, Any]:
        # A byte every 50 ms: never idle for long, but never done.
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"\xe9", "more_body": True}

    body = Body([multipart.file_head()], then=trickle)
    assert refusal(request(body), spool, idle_timeout=1, total_timeout=0.4) == (
        "UploadTimedOut: The upload took longer than 0.4 seconds in all"
    )


def test_a_client_that_leaves_mid_firmware(spool: Path) -> None:
    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    body = Body([multipart.file_head(), b"\xe9" * 5000], then=gone)
    with pytest.raises(ClientDisconnect):
        receive(request(body), spool)
