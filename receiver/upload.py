"""Streaming multipart reader for firmware uploads.

The body is parsed as it arrives (python-multipart's push parser over
`request.stream()`): the firmware part goes to a spool file on disk, written
and hashed on a thread of its own (receiver/spool.py), and text fields stay
small, so an upload costs one pass and almost no memory. The size limit is
enforced as the bytes arrive, not after the fact.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from receiver.image_tally import ImageFacts
from receiver.spool import MAX_BACKLOG, SpoolWriter

MAX_FIELD_BYTES = 4096
MAX_PARTS = 32
# Multipart framing and the small text fields ride on top of the file itself.
ENVELOPE_ALLOWANCE = 64 * 1024


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


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

    def discard(self) -> None:
        if self.file_path is not None:
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
        if (
            self.part.name == self.file_field
            and self.part.filename is not None
            and self.upload.file_path is None
        ):
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            path = self.spool_dir / f"upload-{secrets.token_hex(8)}.part"
            self.part.sink = SpoolWriter(path, flush_to_disk=self.flush_to_disk)
            self.writer = self.part.sink
            self.upload.file_path = path
            self.upload.file_name = self.part.filename

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.sink is not None:
            self.upload.file_size += end - start
            if self.upload.file_size > self.max_file_bytes:
                raise UploadTooLarge(self.max_file_bytes)
            # A view, not a copy: the parser's chunk is immutable bytes, kept
            # alive by the view until the writer thread is done with it.
            self.part.sink.write(memoryview(data)[start:end])
        elif self.part.filename is None:
            self.part.text += data[start:end]
            if len(self.part.text) > MAX_FIELD_BYTES:
                raise MalformedUpload(f"Form field {self.part.name!r} is too long")
        # A second file, or a file under another name, is read and dropped.

    def on_part_end(self) -> None:
        if self.part.sink is not None:
            self.part.sink = None
            self.file_done = True
        elif self.part.filename is None and self.part.name:
            # The first value of a repeated field wins, as in most form parsers.
            self.upload.fields.setdefault(
                self.part.name, bytes(self.part.text).decode("utf-8", "replace")
            )

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


async def receive_upload(
    request: Request,
    *,
    spool_dir: Path,
    max_file_bytes: int,
    file_field: str = "firmware",
    flush_to_disk: bool = False,
) -> Upload:
    """Read the request body into an Upload. The caller must `discard()` it.

    `flush_to_disk`: push the file's bytes to disk as they come, for a spool
    file that will be kept as it is (see receiver/spool.py).
    """
    content_type, params = parse_options_header(request.headers.get("content-type"))
    upload = Upload()

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_file_bytes + ENVELOPE_ALLOWANCE:
        raise UploadTooLarge(max_file_bytes)

    if content_type == b"application/x-www-form-urlencoded":
        # No file can travel this way, but the fields still get their proper errors.
        form = await request.form(max_files=0, max_fields=MAX_PARTS, max_part_size=MAX_FIELD_BYTES)
        upload.fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return upload
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        return upload

    collector = _FormCollector(upload, spool_dir, file_field, max_file_bytes, flush_to_disk)
    parser = MultipartParser(params[b"boundary"], collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
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


def spool_dir_ready(spool_dir: Path) -> None:
    spool_dir.mkdir(parents=True, exist_ok=True)
    # Leftovers from a crash are never in use by a live request.
    for stale in spool_dir.glob("upload-*.part"):
        try:
            os.unlink(stale)
        except OSError:
            pass
