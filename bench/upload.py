"""3. Upload and deploy: CI posting a 4 MiB and a 16 MiB real ESP32 image.

Timed end to end, from the first byte sent until the 201 (the receiver streams,
validates with esptool, stores and commits). Baseline: a bare Starlette route
streaming the same multipart body to disk. Goals: at most 1.5× the baseline's
wall time, and the server's peak RSS growth at most twice the image size. A
second baseline also hashes (SHA-256, MD5) and syncs the file, the least any
OTA receiver must do, for a sense of what is left of the first ratio.
"""

from __future__ import annotations

import http.client
import json
import secrets
import time
from urllib.parse import urlsplit

from bench import servers
from bench.context import Context, MiB, image, mib
from bench.fleet import GroupRef, Owner, create_owner
from bench.results import Figure, Goal, Row
from bench.system import PeakGrowth, memory

NAME = "upload"


def multipart(fields: dict[str, str], firmware: bytes) -> tuple[bytes, str]:
    """The body CI sends (what `curl -F` and the action build), encoded once up front."""
    boundary = secrets.token_hex(16)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="firmware"; filename="firmware.bin"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    body = b"".join(parts) + firmware + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, content_type: str, headers: dict[str, str]) -> tuple[float, int, bytes]:
    """POST on a fresh connection; seconds from the first byte to the whole answer."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=300)
    try:
        started = time.perf_counter()
        conn.request(
            "POST",
            parts.path,
            body=body,
            headers={**headers, "Content-Type": content_type, "Content-Length": str(len(body))},
        )
        response = conn.getresponse()
        answer = response.read()
        return time.perf_counter() - started, response.status, answer
    finally:
        conn.close()


def run(ctx: Context) -> list[Row]:
    folder = ctx.folder("upload")
    env = servers.receiver_env(folder / "data")
    owner, (group,) = create_owner(env, [("fleet", None)])
    spool = folder / "baseline-spool"
    spool.mkdir(exist_ok=True)
    rows: list[Row] = []
    with (
        servers.receiver(env, ctx.log_dir) as receiver,
        servers.baseline(ctx.log_dir, upload_dir=spool) as bare,
    ):
        # One small deploy first: imports, the database and the storage folder are warm.
        _deploy(receiver, owner, group, image("0.0.1", 64 * 1024))
        idle = (memory(receiver.pid).rss, memory(bare.pid).rss)
        for index, size in enumerate(ctx.scale.upload_images):
            rows += _measure(ctx, receiver, bare, owner, group, index, size, idle)
    return rows


def _deploy(
    receiver: servers.Server, owner: Owner, group: GroupRef, firmware: bytes, version: str = "0.0.1"
) -> float:
    body, content_type = multipart({"group": group.id, "token": group.token, "version": version}, firmware)
    seconds, status, answer = post(f"{receiver.url}/v1/ota/group", body, content_type, owner.headers)
    if status != 201:
        raise RuntimeError(f"deploy of {version} answered {status}: {answer[:300]!r}")
    return seconds


def _measure(
    ctx: Context,
    receiver: servers.Server,
    bare: servers.Server,
    owner: Owner,
    group: GroupRef,
    index: int,
    size: int,
    idle: tuple[int, int],
) -> list[Row]:
    ours: list[float] = []
    theirs: list[float] = []
    diligent: list[float] = []
    our_growth: list[int] = []
    their_growth: list[int] = []
    length = 0
    for rep in range(ctx.repetitions):
        # A new version each time: the same version again would deploy nothing.
        version = f"3.{index}.{rep}"
        firmware = image(version, size)
        length = len(firmware)
        body, content_type = multipart(
            {"group": group.id, "token": group.token, "version": version}, firmware
        )
        with PeakGrowth(receiver.pid, idle[0]) as peak:
            seconds, status, answer = post(f"{receiver.url}/v1/ota/group", body, content_type, owner.headers)
        if status != 201 or json.loads(answer).get("deployed") is False:
            raise RuntimeError(f"deploy of {version} answered {status}: {answer[:300]!r}")
        ours.append(seconds)
        our_growth.append(peak.bytes)
        with PeakGrowth(bare.pid, idle[1]) as peak:
            seconds, status, answer = post(f"{bare.url}/upload", body, content_type, {})
        if status != 201 or json.loads(answer)["size"] != length:
            raise RuntimeError(f"baseline upload answered {status}: {answer[:300]!r}")
        theirs.append(seconds)
        their_growth.append(peak.bytes)
        seconds, status, answer = post(f"{bare.url}/upload-hashed", body, content_type, {})
        if status != 201 or json.loads(answer)["size"] != length:
            raise RuntimeError(f"hashing baseline upload answered {status}: {answer[:300]!r}")
        diligent.append(seconds)
    name = mib(length)
    return [
        Row(
            NAME,
            f"3. upload {name}: POST to 201 (s)",
            Figure.of(ours, "s"),
            Figure.of(theirs, "s"),
            "bare Starlette streaming to disk",
            Goal("<=", 1.5),
            [
                f"image of {length:,} bytes (the receiver's limit is 16 MiB = 16,777,216 bytes); "
                f"otaship {length / MiB / min(ours):.0f} MiB/s at best, baseline {length / MiB / min(theirs):.0f} MiB/s"
            ],
            paired=True,
        ),
        Row(
            NAME,
            f"3. upload {name}: POST to 201 vs a route that also hashes and syncs",
            Figure.of(ours, "s"),
            Figure.of(diligent, "s"),
            "bare Starlette streaming to disk + SHA-256 + MD5 + fsync, inline",
            None,
            [
                "what any OTA receiver owes its devices (x-MD5, an integrity hash, bytes on disk "
                "before the 201), done the plain way; otaship also validates the image with esptool "
                "and commits the deploy"
            ],
            paired=True,
        ),
        Row(
            NAME,
            f"3. upload {name}: server peak RSS growth",
            Figure.of([g / MiB for g in our_growth], "MiB"),
            Figure.constant(length / MiB, "MiB"),
            "image size",
            Goal("<=", 2.0),
            [
                f"peak RSS above the idle server's; the bare Starlette route grew by "
                f"{max(their_growth) / MiB:.2f} MiB at most"
            ],
        ),
    ]
