"""Streaming multipart reader for firmware uploads.

The body is parsed as it arrives (python-multipart's push parser over the
request's body messages): the firmware part goes to a spool file on disk,
written and hashed on a thread of its own (receiver/spool.py), and text fields
stay small, so an upload costs one pass and almost no memory.

Every limit is enforced as the bytes arrive, not after the fact: the firmware
size, the whole body (the firmware limit plus a small allowance for the
fields, counted whether or not a Content-Length was sent), the time without
a byte, and the time for the whole body.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from otaship.firmware.tally import ImageFacts
from otaship.receiver.fields import quoted
from otaship.receiver.intake.spool import MAX_BACKLOG, SpoolWriter
from otaship.receiver.intake.spool_files import SpoolFile, sweep

log = logging.getLogger("otaship.upload")

MAX_FIELD_BYTES = 4096
MAX_PARTS = 32
# Multipart framing and the small text fields ride on top of the file itself.
ENVELOPE_ALLOWANCE = 64 * 1024


def body_limit(max_file_bytes: int) -> int:
    """The most bytes a whole upload body may carry."""
    return max_file_bytes + ENVELOPE_ALLOWANCE


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


class UploadTooLarge(Exception):
    """The firmware, or the body around it, went past its limit; the message says which."""

    @classmethod
    def firmware(cls, max_file_bytes: int) -> UploadTooLarge:
        return cls(f"Firmware is larger than the limit of {max_file_bytes} bytes ({_mib(max_file_bytes)})")

    @classmethod
    def body(cls, max_file_bytes: int) -> UploadTooLarge:
        return cls(
            f"The request body is larger than the limit of {body_limit(max_file_bytes)} bytes: "
            f"a firmware of at most {max_file_bytes} bytes ({_mib(max_file_bytes)}) "
            f"and {ENVELOPE_ALLOWANCE} bytes of form fields"
        )


class UploadTimedOut(Exception):
    """The body stopped moving, or took too long as a whole; the message says which."""


class MalformedUpload(ValueError):
    """The body is not a readable form; the message says why."""


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    file_path: Path | None = None
    file_size: int = 0
    file_name: str | None = None
    # Taken as the bytes arrived, so validation need not hash the file again.
    facts: ImageFacts | None = None

    # Holds file_path against other workers' sweeps until discard().
    spool: SpoolFile | None = None

    def discard(self) -> None:
        if self.spool is not None:
            # Its file is file_path: removed first, then its lock dropped.
            self.spool.remove()
            self.spool = None
        elif self.file_path is not None:
            self.file_path.unlink(missing_ok=True)
        self.file_path = None


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    disposition: bytes = b""
    text: bytearray = field(default_factory=bytearray)
    sink: SpoolWriter | None = None


class _FormCollector:
    def __init__(
        self, upload: Upload, spool_dir: Path, file_field: str, max_file_bytes: int, flush_to_disk: bool
    ) -> None:
        self.upload = upload
        self.spool_dir = spool_dir
        self.file_field = file_field
        self.max_file_bytes = max_file_bytes
        self.flush_to_disk = flush_to_disk
        self.part = _Part()
        self.parts = 0
        # The file part's writer, from its headers until the body is done.
        self.writer: SpoolWriter | None = None
        self.file_done = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise MalformedUpload(f"Too many form fields (at most {MAX_PARTS})")
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part.header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self.part.header_field).strip().lower() == b"content-disposition":
            self.part.disposition = bytes(self.part.header_value)
        self.part.header_field.clear()
        self.part.header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.disposition)
        self.part.name = options.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        self.part.filename = None if raw_filename is None else raw_filename.decode("utf-8", "replace")
        if self.part.filename is None:
            return
        # Only the firmware is a file: anything else would be read for nothing.
        if self.part.name != self.file_field:
            raise MalformedUpload(
                f"Unexpected file part {quoted(self.part.name)}: only {self.file_field!r} carries a file"
            )
        if self.upload.file_path is not None:
            raise MalformedUpload(f"A second file part {self.file_field!r}: send one firmware file")
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        spool = SpoolFile.create(self.spool_dir, "upload")
        self.upload.spool = spool
        self.upload.file_path = spool.path
        self.part.sink = SpoolWriter(spool, flush_to_disk=self.flush_to_disk)
        self.writer = self.part.sink
        self.upload.file_name = self.part.filename

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.sink is not None:
            self.upload.file_size += end - start
            if self.upload.file_size > self.max_file_bytes:
                raise UploadTooLarge.firmware(self.max_file_bytes)
            # A view, not a copy: the parser's chunk is immutable bytes, kept
            # alive by the view until the writer thread is done with it.
            self.part.sink.write(memoryview(data)[start:end])
        else:
            self.part.text += data[start:end]
            if len(self.part.text) > MAX_FIELD_BYTES:
                raise MalformedUpload(
                    f"Form field {quoted(self.part.name)} is too long (at most {MAX_FIELD_BYTES} bytes)"
                )

    def on_part_end(self) -> None:
        if self.part.sink is not None:
            self.part.sink = None
            self.file_done = True
        elif self.part.name:
            # The first value of a repeated field wins, as in most form parsers.
            self.upload.fields.setdefault(self.part.name, bytes(self.part.text).decode("utf-8", "replace"))

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


class _Body:
    """The request's body, chunk by chunk, within a time without bytes and a time in all."""

    def __init__(self, request: Request, *, idle_timeout: float | None, total_timeout: float | None) -> None:
        self.receive = request.receive
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout
        self.deadline = math.inf if total_timeout is None else time.monotonic() + total_timeout
        self.received = 0
        self.complete = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while not self.complete:
            message = await self._next()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            if message["type"] != "http.request":
                continue
            self.complete = not message.get("more_body", False)
            chunk: bytes = message.get("body", b"")
            if chunk:
                self.received += len(chunk)
                yield chunk

    async def _next(self) -> Message:
        left = self.deadline - time.monotonic()
        wait = min(left, math.inf if self.idle_timeout is None else self.idle_timeout)
        if wait > 0:
            with anyio.move_on_after(wait):
                return await self.receive()
        if self.deadline <= time.monotonic():
            raise UploadTimedOut(f"The upload took longer than {self.total_timeout:g} seconds in all")
        raise UploadTimedOut(f"The upload stalled: no bytes arrived for {self.idle_timeout:g} seconds")


async def receive_upload(
    request: Request,
    *,
    spool_dir: Path,
    max_file_bytes: int,
    file_field: str = "firmware",
    flush_to_disk: bool = False,
    idle_timeout: float | None = None,
    total_timeout: float | None = None,
) -> Upload:
    """Read the request body into an Upload. The caller must `discard()` it.

    `flush_to_disk`: push the file's bytes to disk as they come, for a spool
    file that will be kept as it is (see receiver/spool.py).
    `idle_timeout`, `total_timeout`: seconds without a byte, and for the whole
    body, before UploadTimedOut.
    """
    content_type, params = parse_options_header(request.headers.get("content-type"))
    upload = Upload()
    max_body = body_limit(max_file_bytes)

    declared = request.headers.get("content-length", "").strip()
    if declared.isascii() and declared.isdigit() and (len(declared) > 20 or int(declared) > max_body):
        raise UploadTooLarge.body(max_file_bytes)

    body = _Body(request, idle_timeout=idle_timeout, total_timeout=total_timeout)
    if content_type == b"application/x-www-form-urlencoded":
        # No file can travel this way, but the fields still get their proper errors.
        upload.fields = await _urlencoded_fields(body)
        return upload
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        return upload

    collector = _FormCollector(upload, spool_dir, file_field, max_file_bytes, flush_to_disk)
    parser = MultipartParser(params[b"boundary"], collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in body.chunks():
            # The chunk first: a firmware over its own limit is named as such.
            parser.write(chunk)
            if body.received > max_body:
                # Past the fields' allowance: bytes around the parts, which the
                # parser skips, still count.
                raise UploadTooLarge.body(max_file_bytes)
            writer = collector.writer
            if writer is not None and writer.backlog > MAX_BACKLOG:
                # The disk is slower than the network: stop reading until it catches up.
                await run_in_threadpool(writer.wait_for_backlog, MAX_BACKLOG // 2)
        parser.finalize()
        if collector.writer is not None:
            if not collector.file_done:
                raise MalformedUpload("The multipart body ended before the firmware file did")
            upload.facts = await run_in_threadpool(collector.writer.finish)
    except FormParserError as exc:
        collector.abort()
        upload.discard()
        raise MalformedUpload(f"The multipart body could not be read: {exc}") from None
    except BaseException:
        collector.abort()
        upload.discard()
        raise
    return upload


async def _urlencoded_fields(body: _Body) -> dict[str, str]:
    data = bytearray()
    async for chunk in body.chunks():
        data += chunk
        if len(data) > ENVELOPE_ALLOWANCE:
            raise UploadTooLarge(f"The form is larger than the limit of {ENVELOPE_ALLOWANCE} bytes")
    try:
        pairs = parse_qsl(
            data.decode("utf-8", "replace"),
            keep_blank_values=True,
            max_num_fields=MAX_PARTS,
            encoding="utf-8",
            errors="replace",
        )
    except ValueError:
        raise MalformedUpload(f"Too many form fields (at most {MAX_PARTS})") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if len(value.encode()) > MAX_FIELD_BYTES:
            raise MalformedUpload(f"Form field {quoted(name)} is too long (at most {MAX_FIELD_BYTES} bytes)")
        fields.setdefault(name, value)
    return fields


def spool_dir_ready(spool_dir: Path) -> None:
    """The spool folder, made if missing, without the leftovers of a crash; the
    files other live workers hold are theirs (spool_files.py)."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    removed = sweep(spool_dir)
    if removed:
        log.info("removed %d spool file(s) left by a stopped receiver", removed)
