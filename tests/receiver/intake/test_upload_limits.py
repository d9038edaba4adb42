"""The limits of an upload body, streamed into the real app as a client sends it.

httpx's ASGITransport hands the app each chunk when the app asks for it (the
TestClient reads the whole body first), so these tests see how much of a body
the receiver read before it answered. The socket itself (uvicorn, a client
that stalls) is covered in tests/faults/test_stalled_upload.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from otaship.receiver.app import create_app
from otaship.receiver.intake.multipart import ENVELOPE_ALLOWANCE, MAX_FIELD_BYTES
from otaship.receiver.intake.slots import UploadSlots
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from tests import multipart
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image

MiB = 1024 * 1024
CHUNK = 64 * 1024
EXTRA = 48 * MiB


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # Nothing here reaches the database past the owner and group lookups.
    return f"sqlite:///{tmp_path / 'otaship.db'}"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(upload_idle_timeout=0.5, upload_timeout=2.0, max_uploads_per_owner=2)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def app(settings: Settings, services: Services) -> AsyncIterator[Starlette]:
    built = create_app(settings, services=services)
    # With its lifespan, as a server runs it: the app's stop waits for the
    # work it left running (the keys' last-use writes).
    async with built.router.lifespan_context(built):
        yield built


class Body:
    """A request body handed over in chunks, counting what the app took."""

    def __init__(self, *pieces: bytes | Iterator[bytes], stall: bool = False, every: float = 0) -> None:
        self.pieces = pieces
        self.stall = stall
        self.every = every
        self.sent = 0
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            for chunk in [piece] if isinstance(piece, bytes) else piece:
                for start in range(0, len(chunk), CHUNK):
                    if self.every:
                        await anyio.sleep(self.every)
                    part = chunk[start : start + CHUNK]
                    self.sent += len(part)
                    yield part
        if self.stall:
            await anyio.sleep(3600)
        self.finished = True


def zeros(size: int) -> Iterator[bytes]:
    # Generated as it is sent: 48 MiB never sits in the test's memory.
    block = bytes(CHUNK)
    for _ in range(size // CHUNK):
        yield block


def fields(owner: Owner, fleet: Fleet) -> dict[str, str]:
    group = fleet.group(owner)
    return {"group": group.id, "token": group.token, "version": "1.0.0"}


async def send(app: Starlette, owner: Owner, body: Body) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        return await http.post(
            "/v1/ota/group",
            content=body,
            headers={**owner.headers, "Content-Type": multipart.CONTENT_TYPE},
        )


def nothing_left(settings: Settings) -> bool:
    objects = settings.data_dir / "objects"
    stored = [p for p in objects.rglob("*") if p.is_file()] if objects.exists() else []
    return list(settings.tmp_dir.iterdir()) == [] and stored == []


# --- size ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_bytes_past_the_form_end_count_and_get_413_early(
    app: Starlette, fleet: Fleet, settings: Settings
) -> None:
    owner = fleet.owner()
    # A valid form, then 48 MiB the multipart parser skips: once read to the end, a 201.
    body = Body(multipart.form(fields(owner, fleet), build_image("1.0.0")), zeros(EXTRA))
    response = await send(app, owner, body)
    assert response.status_code == 413
    assert response.json() == {
        "message": "The request body is larger than the limit of 2162688 bytes: a firmware of at most "
        "2097152 bytes (2.0 MiB) and 65536 bytes of form fields"
    }
    assert response.headers["connection"] == "close"
    assert not body.finished
    assert body.sent <= settings.max_firmware_bytes + ENVELOPE_ALLOWANCE + CHUNK
    assert nothing_left(settings)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            multipart.file_head("extra", "junk.bin"),
            "Unexpected file part 'extra': only 'firmware' carries a file",
        ),
        (
            multipart.file_head("firmware", "again.bin"),
            "A second file part 'firmware': send one firmware file",
        ),
        (multipart.file_head("", "x.bin"), "Unexpected file part '': only 'firmware' carries a file"),
        (
            multipart.field_part("notes", "")[:-2],
            f"Form field 'notes' is too long (at most {MAX_FIELD_BYTES} bytes)",
        ),
    ],
)
async def test_a_48_mib_extra_part_is_refused_at_once(
    app: Starlette, fleet: Fleet, settings: Settings, extra: bytes, expected: str
) -> None:
    owner = fleet.owner()
    valid = multipart.form(fields(owner, fleet), build_image("1.0.0")).removesuffix(multipart.closing())
    body = Body(valid, extra, zeros(EXTRA))
    response = await send(app, owner, body)
    assert response.status_code == 400
    assert response.json() == {"message": expected}
    assert body.sent <= len(valid) + len(extra) + CHUNK
    assert nothing_left(settings)


@pytest.mark.anyio
async def test_a_chunked_firmware_over_the_limit_is_named_as_such(
    app: Starlette, fleet: Fleet, settings: Settings
) -> None:
    owner = fleet.owner()
    head = (
        b"".join(multipart.field_part(k, v) for k, v in fields(owner, fleet).items()) + multipart.file_head()
    )
    body = Body(head, build_image("1.0.0"), zeros(EXTRA))
    response = await send(app, owner, body)
    assert response.status_code == 413
    assert response.json() == {"message": "Firmware is larger than the limit of 2097152 bytes (2.0 MiB)"}
    assert body.sent <= settings.max_firmware_bytes + len(head) + CHUNK
    assert nothing_left(settings)


@pytest.mark.anyio
async def test_an_endless_part_header_is_400(app: Starlette, fleet: Fleet, settings: Settings) -> None:
    # python-multipart bounds each header line (4 KiB) and their number.
    owner = fleet.owner()
    head = f"--{multipart.BOUNDARY}\r\nX-Filler: ".encode()
    body = Body(head, (b"a" * CHUNK for _ in range(EXTRA // CHUNK)))
    response = await send(app, owner, body)
    assert response.status_code == 400
    assert response.json() == {
        "message": "The multipart body could not be read: Maximum header size exceeded"
    }
    assert body.sent <= len(head) + CHUNK


@pytest.mark.anyio
async def test_an_urlencoded_body_is_bounded_too(app: Starlette, fleet: Fleet, settings: Settings) -> None:
    owner = fleet.owner()
    body = Body(b"group=", (b"a" * CHUNK for _ in range(EXTRA // CHUNK)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        response = await http.post(
            "/v1/ota/group",
            content=body,
            headers={**owner.headers, "Content-Type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 413
    assert response.json() == {"message": f"The form is larger than the limit of {ENVELOPE_ALLOWANCE} bytes"}
    assert body.sent <= ENVELOPE_ALLOWANCE + CHUNK


@pytest.mark.anyio
async def test_urlencoded_fields_still_get_their_errors(app: Starlette, fleet: Fleet) -> None:
    owner = fleet.owner()
    form = fields(owner, fleet)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        no_file = {
            "message": "No file uploaded",
            "hint": "send the image as a file in the form field firmware (curl -F firmware=@firmware.bin)",
        }
        for data, expected in (
            ({**form, "group": "x"}, {"message": "Group ID is not valid"}),
            (form, no_file),
            (
                {**form, "version": "1" * (MAX_FIELD_BYTES + 1)},
                {"message": f"Form field 'version' is too long (at most {MAX_FIELD_BYTES} bytes)"},
            ),
        ):
            response = await http.post("/v1/ota/group", data=data, headers=owner.headers)
            assert (response.status_code, response.json()) == (400, expected)
        many = "&".join(f"f{n}=1" for n in range(40))
        response = await http.post(
            "/v1/ota/group",
            content=many,
            headers={**owner.headers, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert (response.status_code, response.json()) == (
            400,
            {"message": "Too many form fields (at most 32)"},
        )


# --- time ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_stalled_body_is_408_and_its_spool_file_removed(
    app: Starlette, fleet: Fleet, settings: Settings
) -> None:
    owner = fleet.owner()
    head = (
        b"".join(multipart.field_part(k, v) for k, v in fields(owner, fleet).items()) + multipart.file_head()
    )
    body = Body(head, build_image("1.0.0")[:1024], stall=True)
    started = time.monotonic()
    response = await send(app, owner, body)
    assert response.status_code == 408
    assert response.json() == {"message": "The upload stalled: no bytes arrived for 0.5 seconds"}
    assert response.headers["connection"] == "close"
    assert 0.5 <= time.monotonic() - started < 5
    assert nothing_left(settings)


@pytest.mark.anyio
async def test_a_trickle_is_408_at_the_deadline(app: Starlette, fleet: Fleet, settings: Settings) -> None:
    owner = fleet.owner()
    head = (
        b"".join(multipart.field_part(k, v) for k, v in fields(owner, fleet).items()) + multipart.file_head()
    )
    image = build_image("1.0.0")
    # 5 bytes every 0.1 s: never idle for the 0.5 s idle timeout, and never done.
    trickle = (image[i : i + 5] for i in range(0, len(image), 5))
    body = Body(head, trickle, every=0.1)
    started = time.monotonic()
    response = await send(app, owner, body)
    assert response.status_code == 408
    assert response.json() == {"message": "The upload took longer than 2 seconds in all"}
    assert 2 <= time.monotonic() - started < 6
    assert nothing_left(settings)


# --- concurrent uploads per owner -----------------------------------------------------


@pytest.mark.anyio
async def test_an_owner_over_the_cap_gets_429_and_others_are_served(
    app: Starlette, fleet: Fleet, services: Services, settings: Settings
) -> None:
    greedy, other = fleet.owner(), fleet.owner()
    greedy_fields = fields(greedy, fleet)
    head = b"".join(multipart.field_part(k, v) for k, v in greedy_fields.items()) + multipart.file_head()
    answers: list[int] = []

    async def stall() -> None:
        answers.append((await send(app, greedy, Body(head, b"\xe9" * 1024, stall=True))).status_code)

    async with anyio.create_task_group() as tasks:
        for _ in range(2):
            tasks.start_soon(stall)
        with anyio.fail_after(5):
            while services.upload_slots.in_flight(greedy.user.id) < 2:
                await anyio.sleep(0.01)
        refused = await send(app, greedy, Body(multipart.form(greedy_fields, build_image("1.0.0"))))
        assert refused.status_code == 429
        assert refused.json() == {
            "message": "Too many uploads in flight for this account (at most 2 at a time): try again shortly"
        }
        assert refused.headers["retry-after"] == "5"
        served = await send(app, other, Body(multipart.form(fields(other, fleet), build_image("1.0.0"))))
        assert served.status_code == 201, served.text
    assert answers == [408, 408]
    assert services.upload_slots.in_flight(greedy.user.id) == 0
    # The slots are free again: the next upload goes through.
    again = await send(app, greedy, Body(multipart.form(greedy_fields, build_image("1.0.0"))))
    assert again.status_code == 201, again.text
    assert list(settings.tmp_dir.iterdir()) == []


def test_upload_slots_count_per_owner() -> None:
    slots = UploadSlots(2)
    with slots.hold("a") as first, slots.hold("a") as second, slots.hold("b") as third:
        assert (first, second, third) == (True, True, True)
        with slots.hold("a") as fourth:
            assert fourth is False
            assert slots.in_flight("a") == 2
        assert slots.in_flight("b") == 1
    assert slots.in_flight("a") == slots.in_flight("b") == 0
    with pytest.raises(RuntimeError), slots.hold("a"):
        raise RuntimeError("the upload failed")
    assert slots.in_flight("a") == 0


def test_the_upload_limits_are_settings() -> None:
    from otaship.receiver.settings import SettingsError

    defaults = Settings.from_env({})
    assert (defaults.upload_idle_timeout, defaults.upload_timeout, defaults.max_uploads_per_owner) == (
        30,
        600,
        8,
    )
    chosen = Settings.from_env(
        {
            "OTASHIP_UPLOAD_IDLE_TIMEOUT": "5",
            "OTASHIP_UPLOAD_TIMEOUT": "60",
            "OTASHIP_MAX_UPLOADS_PER_OWNER": "2",
        }
    )
    assert (chosen.upload_idle_timeout, chosen.upload_timeout, chosen.max_uploads_per_owner) == (5, 60, 2)
    for name in ("OTASHIP_UPLOAD_IDLE_TIMEOUT", "OTASHIP_UPLOAD_TIMEOUT", "OTASHIP_MAX_UPLOADS_PER_OWNER"):
        with pytest.raises(SettingsError, match=f"^{name} must be at least 1, not 0$"):
            Settings.from_env({name: "0"})
