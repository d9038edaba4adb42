"""Stalled and trickling uploads against a real `otaship serve`, over real sockets.

One owner opens 50 uploads that stop 1 KiB into the firmware, a second one
trickles 5 bytes a second, and a third deploys meanwhile. Every upload gets
its answer (429 above the owner's cap, 408 once stalled or past the
deadline), the server closes each of those connections, the third owner's
deploy goes through, and the spool folder ends empty.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests import multipart
from tests.esp_image import build_image
from tests.raw_upload import RawUpload, Tenant, tenants_in
from tests.receiver_process import ReceiverProcess, cli_env
from tests.waiting import eventually

# The trickle's gaps are 0.2 s: the idle timeout leaves a loaded machine room
# to be late with a byte without the trickle counting as stalled. A shared
# machine in CI once held the trickle back 4 s; the trickle's longest gap is
# in the failure message when it does.
IDLE_TIMEOUT = 8
UPLOAD_TIMEOUT = 16
CAP = 4
STALLED = 50


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[ReceiverProcess, dict[str, Tenant], Path]]:
    env = cli_env(
        tmp_path / "data",
        OTASHIP_UPLOAD_IDLE_TIMEOUT=str(IDLE_TIMEOUT),
        OTASHIP_UPLOAD_TIMEOUT=str(UPLOAD_TIMEOUT),
        OTASHIP_MAX_UPLOADS_PER_OWNER=str(CAP),
        OTASHIP_LOG_LEVEL="warning",
    )
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tenants = tenants_in(f"sqlite:///{data_dir / 'otaship.db'}", ("staller", "trickler", "bystander"))
    process = ReceiverProcess(env).start()
    try:
        yield process, tenants, tmp_path / "data" / "tmp"
    finally:
        process.stop()


def spool_files(spool: Path) -> int:
    return len(list(spool.glob("upload-*.part")))


def spool_held(spool: Path, count: int) -> bool:
    return spool_files(spool) == count


def test_stalled_and_trickling_uploads_time_out_and_free_their_spool(
    receiver: tuple[ReceiverProcess, dict[str, Tenant], Path],
) -> None:
    process, tenants, spool = receiver
    image = build_image("1.0.0")
    staller = tenants["staller"]
    head = (
        b"".join(multipart.field_part(k, v) for k, v in staller.fields("1.0.0").items())
        + multipart.file_head()
    )

    # The owner's first uploads each take a slot and a spool file, then stop sending.
    uploads = []
    sent_at = []
    for opened in range(1, STALLED + 1):
        upload = RawUpload(process.url, staller.api_key)
        sent_at.append(time.monotonic())
        upload.send(head + image[:1024])
        uploads.append(upload)
        if opened <= CAP:
            eventually(partial(spool_held, spool, opened), f"{opened} spool files", 10)

    # The trickle: never idle long enough for the idle timeout, so the deadline ends it.
    trickler = tenants["trickler"]
    trickle_head = (
        b"".join(multipart.field_part(k, v) for k, v in trickler.fields("1.0.0").items())
        + multipart.file_head()
    )
    trickle_started = time.monotonic()
    trickle = RawUpload(process.url, trickler.api_key)
    trickle.send(trickle_head)
    stop = threading.Event()

    sent: list[float] = []

    def drip() -> None:
        # 5 bytes a second, a byte at a time: far inside the idle timeout, even on a busy machine.
        for start in range(len(image)):
            if stop.wait(0.2):
                return
            try:
                trickle.send(image[start : start + 1])
            except OSError:
                return
            sent.append(time.monotonic())

    def longest_gap() -> str:
        gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
        return f"the trickle's longest gap between bytes was {max(gaps, default=0):.1f} s"

    dripping = threading.Thread(target=drip, daemon=True)
    dripping.start()

    try:
        # Above the cap: refused at once, before the body, with a hint when to come back.
        for upload in uploads[CAP:]:
            answer = upload.answer(timeout=5)
            assert answer.status == 429, answer
            assert answer.headers["retry-after"] == "5"
            assert answer.headers["connection"] == "close"
            assert upload.closed_by_server(timeout=5)
        eventually(lambda: spool_files(spool) == CAP + 1, "the trickle's spool file", 10)

        # Another owner deploys as usual meanwhile.
        bystander = tenants["bystander"]
        response = httpx.post(
            f"{process.url}/v1/ota/group",
            headers={"Authorization": f"Bearer {bystander.api_key}"},
            data=bystander.fields("1.0.0"),
            files={"firmware": ("firmware.bin", image)},
            timeout=10,
        )
        assert response.status_code == 201, response.text

        # The stalled ones: a 408 once no byte came for the idle timeout.
        for upload, since in zip(uploads[:CAP], sent_at, strict=False):
            answer = upload.answer(timeout=IDLE_TIMEOUT + 10)
            assert time.monotonic() - since >= IDLE_TIMEOUT
            assert answer.status == 408, answer
            assert answer.body == (
                b'{"message":"The upload stalled: no bytes arrived for %d seconds"}' % IDLE_TIMEOUT
            )
            assert answer.headers["connection"] == "close"
            assert upload.closed_by_server(timeout=5)

        answer = trickle.answer(timeout=UPLOAD_TIMEOUT + 10)
        assert answer.status == 408, answer
        assert (
            answer.body == b'{"message":"The upload took longer than %d seconds in all"}' % UPLOAD_TIMEOUT
        ), longest_gap()
        assert time.monotonic() - trickle_started >= UPLOAD_TIMEOUT
        assert trickle.closed_by_server(timeout=5)
    finally:
        stop.set()
        dripping.join()
        for upload in [*uploads, trickle]:
            upload.close()

    assert spool_files(spool) == 0
    assert list(spool.iterdir()) == []
    # The slots were given back: the owner deploys as usual.
    response = httpx.post(
        f"{process.url}/v1/ota/group",
        headers={"Authorization": f"Bearer {staller.api_key}"},
        data=staller.fields("1.0.0"),
        files={"firmware": ("firmware.bin", image)},
        timeout=10,
    )
    assert response.status_code == 201, response.text
