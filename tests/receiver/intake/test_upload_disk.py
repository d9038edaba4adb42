"""An upload the disk refuses part way: a clear 500, nothing half-written left
behind, and a receiver that goes on serving. The refusal is the kernel's own
(RLIMIT_FSIZE makes write() fail with EFBIG), on a real `otaship serve`."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.esp_image import build_image
from tests.receiver_process import ReceiverProcess, migrated_env, otaship_json

LIMIT = 1024 * 1024


def test_a_disk_that_refuses_the_upload_answers_500_and_keeps_nothing(tmp_path: Path) -> None:
    env = migrated_env(tmp_path / "data")
    owner = otaship_json(env, "user", "create", "pro@example.com", "--plan", "pro")
    group = otaship_json(env, "group", "create", "fleet", "--owner", "pro@example.com")
    receiver = ReceiverProcess(env, max_file_bytes=LIMIT).start()
    headers = {"Authorization": f"Bearer {owner['api_key']}"}
    fields = {"group": group["id"], "token": group["token"], "version": "1.0.0"}
    try:
        big = build_image("1.0.0", code_size=3 * LIMIT)
        answer = httpx.post(
            f"{receiver.url}/v1/ota/group",
            headers=headers,
            data=fields,
            files={"firmware": ("firmware.bin", big, "application/octet-stream")},
            timeout=60,
        )
        assert answer.status_code == 500
        assert answer.json() == {
            "message": "Error when uploading firmware file",
            "error": "OSError: [Errno 27] File too large",
        }
        spool = tmp_path / "data" / "tmp"
        assert list(spool.iterdir()) == []
        listing = httpx.get(f"{receiver.url}/v1/ota/group", headers=headers).json()
        assert listing["recordsTotal"] == 0

        # The same receiver takes an image the disk has room for.
        small = build_image("1.0.1", code_size=64 * 1024)
        answer = httpx.post(
            f"{receiver.url}/v1/ota/group",
            headers=headers,
            data={**fields, "version": "1.0.1"},
            files={"firmware": ("firmware.bin", small, "application/octet-stream")},
            timeout=60,
        )
        assert answer.status_code == 201, answer.text
        listing = httpx.get(f"{receiver.url}/v1/ota/group", headers=headers).json()
        assert [o["version"] for o in listing["otas"]] == ["1.0.1"]
        assert list(spool.iterdir()) == []
    finally:
        log = receiver.stop()
    assert "Error when uploading firmware file: OSError: [Errno 27] File too large" in log
