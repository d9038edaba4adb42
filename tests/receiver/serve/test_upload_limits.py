"""The upload limits over real sockets, on every server `otaship serve` runs on.

tests/receiver/intake/test_upload_limits.py checks the limits on the ASGI app
itself; here the server between the socket and the app must pass the answer on
while the client is still sending: a 413 for a body declared or sent past the
limit, a 408 for a stalled one, each with `Connection: close`, and no spool
file or stored object left behind.
"""

from __future__ import annotations

import select
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import multipart
from tests.esp_image import build_image
from tests.raw_upload import Answer, RawUpload, Tenant, tenants_in
from tests.receiver_process import SERVERS, ReceiverProcess, cli_env
from tests.waiting import eventually

LIMIT = 2 * 1024 * 1024
IDLE_TIMEOUT = 1
PIECE = 64 * 1024


@pytest.fixture(params=SERVERS)
def receiver(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[ReceiverProcess, Tenant, Path]]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (tenant,) = tenants_in(f"sqlite:///{data_dir / 'otaship.db'}", ("uploader",)).values()
    env = cli_env(
        data_dir,
        server=request.param,
        OTASHIP_MAX_FIRMWARE_BYTES=str(LIMIT),
        OTASHIP_UPLOAD_IDLE_TIMEOUT=str(IDLE_TIMEOUT),
        OTASHIP_LOG_LEVEL="warning",
    )
    process = ReceiverProcess(env).start()
    try:
        yield process, tenant, data_dir
    finally:
        process.stop()


def left_behind(data_dir: Path) -> list[Path]:
    """Spool files and stored objects: an upload that was refused leaves neither."""
    return [p for folder in ("tmp", "objects") for p in (data_dir / folder).rglob("*") if p.is_file()]


def send_until_answered(upload: RawUpload, *pieces: bytes) -> Answer:
    """Send the pieces, in 64 KiB writes, until the server answers; then read
    the answer. Stopping at the first answer keeps the client from writing
    into a connection the server is closing, whose reset could lose it."""
    for piece in pieces:
        for start in range(0, len(piece), PIECE):
            readable, _, _ = select.select([upload.sock], [], [], 0)
            if readable:
                return upload.answer(timeout=10)
            try:
                upload.send(piece[start : start + PIECE])
            except (BrokenPipeError, ConnectionResetError):
                # The server answered and closed between the check and the
                # write: its answer is already in this socket's buffer.
                return upload.answer(timeout=10)
    return upload.answer(timeout=10)


def form_head(tenant: Tenant) -> bytes:
    return (
        b"".join(multipart.field_part(k, v) for k, v in tenant.fields("1.0.0").items())
        + multipart.file_head()
    )


def test_a_declared_length_over_the_limit_is_413_before_the_body(
    receiver: tuple[ReceiverProcess, Tenant, Path],
) -> None:
    process, tenant, data_dir = receiver
    upload = RawUpload(process.url, tenant.api_key, content_length=64 * 1024 * 1024)
    try:
        answer = upload.answer(timeout=10)
        assert answer.status == 413, answer
        assert answer.body == (
            b'{"message":"The request body is larger than the limit of 2162688 bytes: a firmware of at most '
            b'2097152 bytes (2.0 MiB) and 65536 bytes of form fields"}'
        )
        assert answer.headers["connection"] == "close"
        assert upload.closed_by_server(timeout=5)
    finally:
        upload.close()
    assert left_behind(data_dir) == []


def test_a_chunked_firmware_past_the_limit_is_413_while_it_is_sent(
    receiver: tuple[ReceiverProcess, Tenant, Path],
) -> None:
    process, tenant, data_dir = receiver
    upload = RawUpload(process.url, tenant.api_key)
    try:
        answer = send_until_answered(upload, form_head(tenant), build_image("1.0.0"), bytes(2 * LIMIT))
        assert answer.status == 413, answer
        assert answer.body == b'{"message":"Firmware is larger than the limit of 2097152 bytes (2.0 MiB)"}'
        assert answer.headers["connection"] == "close"
        assert upload.closed_by_server(timeout=5)
    finally:
        upload.close()
    eventually(lambda: left_behind(data_dir) == [], "the spool file removed", 10)


def test_a_stalled_upload_is_408(receiver: tuple[ReceiverProcess, Tenant, Path]) -> None:
    process, tenant, data_dir = receiver
    upload = RawUpload(process.url, tenant.api_key)
    try:
        upload.send(form_head(tenant) + build_image("1.0.0")[:1024])
        answer = upload.answer(timeout=IDLE_TIMEOUT + 10)
        assert answer.status == 408, answer
        assert answer.body == b'{"message":"The upload stalled: no bytes arrived for 1 seconds"}'
        assert answer.headers["connection"] == "close"
        assert upload.closed_by_server(timeout=5)
    finally:
        upload.close()
    eventually(lambda: left_behind(data_dir) == [], "the spool file removed", 10)
