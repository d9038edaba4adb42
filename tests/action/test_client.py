"""The receiver client: streaming upload, retries, and error messages.

The HTTP server is the scripted stand-in of tests/action_fixtures.py, on a real
socket: it answers each request from a list, so the tests can make the network
fail in ways a healthy receiver never does (503s, 429s, dropped connections).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import httpx
import pytest

from otaship.action.client import (
    Deployment,
    ReceiverClient,
    ReceiverRejected,
    ReceiverUnavailable,
    RolloutRequest,
    build_deploy_request,
)
from otaship.action.retry import RetryPolicy
from tests.action_fixtures import Reply, Scripted

DEPLOYMENT = Deployment(
    group="a" * 24,
    token="t" * 16,
    version="1.2.3",
    commit="abc123",
    rollout=RolloutRequest(canary="c" * 24, success_threshold=0.5),
)
CREATED: Reply = (
    201,
    {"message": "Firmware successfully deployed", "deployed": True, "ota": {"_id": "o"}},
    {},
)


def client(
    url: str, sleeps: list[float], attempts: int = 4, messages: list[str] | None = None
) -> ReceiverClient:
    return ReceiverClient(
        url,
        "key-1",
        policy=RetryPolicy(attempts=attempts, base_delay=0.5, max_delay=4),
        sleep=sleeps.append,
        rng=random.Random(3),
        on_retry=(messages if messages is not None else []).append,
    )


@pytest.fixture
def firmware(tmp_path: Path) -> Path:
    path = tmp_path / "firmware.bin"
    path.write_bytes(random.Random(0).randbytes(300 * 1024 + 7))
    return path


class RecordingFile(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int | None] = []

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append(size)
        return super().read(size)


def test_the_upload_streams_the_file_in_chunks_rather_than_reading_it_whole() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    handle = RecordingFile(data)
    with httpx.Client(base_url="http://receiver.invalid") as http:
        request = build_deploy_request(http, DEPLOYMENT, handle, "firmware.bin")
        # Building the request reads nothing: the length comes from seek/tell.
        assert handle.reads == []
        assert int(request.headers["Content-Length"]) > len(data)
        assert not isinstance(request.stream, httpx.ByteStream)
        body = b"".join(request.stream)  # type: ignore[arg-type]
    assert data in body
    assert handle.reads and all(size is not None and 0 < size <= 64 * 1024 for size in handle.reads)
    assert len(body) == int(request.headers["Content-Length"])


def test_form_fields_leave_out_what_is_unset() -> None:
    assert Deployment(group="g", token="t", version="1.0.0").form_fields() == {
        "group": "g",
        "token": "t",
        "version": "1.0.0",
    }
    fields = Deployment(
        group="g",
        token="t",
        version="1.0.0",
        commit="c",
        rollout=RolloutRequest(
            canary="k",
            canary_timeout=60,
            success_threshold=0.8,
            error_threshold=0,
            soak=30,
            auto_promote=False,
        ),
    ).form_fields()
    assert fields == {
        "group": "g",
        "token": "t",
        "version": "1.0.0",
        "commit": "c",
        "canary": "k",
        "canary_timeout": "60",
        "success_threshold": "0.8",
        "error_threshold": "0",
        "soak": "30",
        "auto_promote": "false",
    }


def test_a_503_is_retried_and_every_attempt_sends_the_whole_image(scripted: Scripted, firmware: Path) -> None:
    server = scripted(
        {"POST": [(503, {"message": "busy"}, {}), (502, b"<html>bad gateway</html>", {}), CREATED]}
    )
    sleeps: list[float] = []
    messages: list[str] = []
    with client(server.url, sleeps, messages=messages) as receiver:
        body = receiver.deploy(DEPLOYMENT, firmware)
    assert body["deployed"] is True
    assert len(server.requests) == 3 and len(sleeps) == 2
    data = firmware.read_bytes()
    for method, path, headers, sent in server.requests:
        assert (method, path) == ("POST", "/v1/ota/group")
        assert headers["Authorization"] == "Bearer key-1"
        assert (
            data in sent and b'name="version"\r\n\r\n1.2.3' in sent and b'name="commit"\r\n\r\nabc123' in sent
        )
    assert "503 (busy)" in messages[0] and "attempt 2 of 4" in messages[0]
    assert "502 (<html>bad gateway</html>)" in messages[1]


def test_429_honours_retry_after(scripted: Scripted, firmware: Path) -> None:
    server = scripted({"POST": [(429, {"message": "slow down"}, {"Retry-After": "3"}), CREATED]})
    sleeps: list[float] = []
    with client(server.url, sleeps) as receiver:
        receiver.deploy(DEPLOYMENT, firmware)
    assert sleeps[0] >= 3


def test_retries_give_up_with_the_last_answer(scripted: Scripted, firmware: Path) -> None:
    server = scripted(
        {"POST": [(500, {"message": "Error when uploading firmware file", "error": "disk full"}, {})]}
    )
    sleeps: list[float] = []
    with client(server.url, sleeps, attempts=3) as receiver, pytest.raises(ReceiverUnavailable) as caught:
        receiver.deploy(DEPLOYMENT, firmware)
    assert caught.value.status == 500
    assert (
        "Error when uploading firmware file: disk full" in caught.value.message
        and "3 times" in caught.value.message
    )
    assert len(server.requests) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413])
def test_other_4xx_are_not_retried_and_keep_the_receiver_message(
    scripted: Scripted, firmware: Path, status: int
) -> None:
    server = scripted({"POST": [(status, {"message": f"nope {status}", "commit": "x"}, {})]})
    sleeps: list[float] = []
    with client(server.url, sleeps) as receiver, pytest.raises(ReceiverRejected) as caught:
        receiver.deploy(DEPLOYMENT, firmware)
    assert (caught.value.status, caught.value.message, caught.value.body["commit"]) == (
        status,
        f"nope {status}",
        "x",
    )
    assert len(server.requests) == 1 and sleeps == []


def test_a_dropped_connection_is_retried(scripted: Scripted, firmware: Path) -> None:
    server = scripted({"POST": [(0, b"", {}), CREATED]})
    sleeps: list[float] = []
    with client(server.url, sleeps) as receiver:
        assert receiver.deploy(DEPLOYMENT, firmware)["deployed"] is True
    assert len(sleeps) == 1


def test_an_unreachable_receiver_fails_after_the_retries(firmware: Path) -> None:
    from tests.services import free_port

    sleeps: list[float] = []
    with (
        client(f"http://127.0.0.1:{free_port()}", sleeps, attempts=2) as receiver,
        pytest.raises(ReceiverUnavailable) as caught,
    ):
        receiver.deploy(DEPLOYMENT, firmware)
    assert (
        "could not reach the receiver" in caught.value.message and "after 2 attempts" in caught.value.message
    )
    assert len(sleeps) == 1


def test_rollouts_are_read_under_a_path_prefix(scripted: Scripted) -> None:
    server = scripted({"GET": [(200, {"rollouts": [{"id": "r2"}, {"id": "r1"}, "junk"]}, {})]})
    with ReceiverClient(server.url + "/otaship/", "k") as receiver:
        assert [r["id"] for r in receiver.rollouts("g1")] == ["r2", "r1"]
    assert server.requests[0][1] == "/otaship/v1/rollouts?group=g1"


def test_waves_and_the_failure_rate_are_form_fields() -> None:
    fields = Deployment(
        group="g",
        token="t",
        version="1.0.0",
        rollout=RolloutRequest(waves="a,b", max_failure_rate=0.25, min_devices=4),
    ).form_fields()
    assert fields == {
        "group": "g",
        "token": "t",
        "version": "1.0.0",
        "waves": "a,b",
        "max_failure_rate": "0.25",
        "min_devices": "4",
    }
