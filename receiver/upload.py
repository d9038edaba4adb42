"""Streaming multipart reader for firmware uploads.

The body is parsed as it arrives (python-multipart's push parser over
`request.stream()`): the firmware part goes straight into a spool file on disk
and text fields stay small, so an upload costs one pass and almost no memory.
The size limit is enforced as the bytes arrive, not after the fact.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

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
    # Hashed as the bytes arrive, so validation need not read the file again.
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    md5: hashlib._Hash = field(default_factory=lambda: hashlib.md5(usedforsecurity=False))

    @property
    def digests(self) -> tuple[str, str]:
        return self.sha256.hexdigest(), self.md5.hexdigest()

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
    sink: BinaryIO | None = None


class _FormCollector:
    def __init__(self, upload: Upload, spool_dir: Path, file_field: str, max_file_bytes: int) -> None:
        self.upload = upload
        self.spool_dir = spool_dir
        self.file_field = file_field
        self.max_file_bytes = max_file_bytes
        self.part = _Part()
        self.parts = 0
        self.sink: BinaryIO | None = None

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
            self.upload.file_path = path
            self.upload.file_name = self.part.filename
            self.part.sink = open(path, "xb")  # noqa: SIM115 (closed in on_part_end / close)
            self.sink = self.part.sink

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.sink is not None:
            self.upload.file_size += end - start
            if self.upload.file_size > self.max_file_bytes:
                raise UploadTooLarge(self.max_file_bytes)
            chunk = memoryview(data)[start:end]
            self.part.sink.write(chunk)
            self.upload.sha256.update(chunk)
            self.upload.md5.update(chunk)
        elif self.part.filename is None:
            self.part.text += data[start:end]
            if len(self.part.text) > MAX_FIELD_BYTES:
                raise MalformedUpload(f"Form field {self.part.name!r} is too long")
        # A second file, or a file under another name, is read and dropped.

    def on_part_end(self) -> None:
        if self.part.sink is not None:
            self.part.sink.close()
            self.part.sink = None
            self.sink = None
        elif self.part.filename is None and self.part.name:
            # The first value of a repeated field wins, as in most form parsers.
            self.upload.fields.setdefault(
                self.part.name, bytes(self.part.text).decode("utf-8", "replace")
            )

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
            self.sink = None


async def receive_upload(
    request: Request, *, spool_dir: Path, max_file_bytes: int, file_field: str = "firmware"
) -> Upload:
    """Read the request body into an Upload. The caller must `discard()` it."""
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

    collector = _FormCollector(upload, spool_dir, file_field, max_file_bytes)
    parser = MultipartParser(params[b"boundary"], collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        collector.close()
        upload.discard()
        raise MalformedUpload(f"The multipart body could not be read: {exc}") from None
    except BaseException:
        collector.close()
        upload.discard()
        raise
    if collector.sink is not None:
        # The body ended inside the file part.
        collector.close()
        upload.discard()
        raise MalformedUpload("The multipart body ended before the firmware file did")
    return upload


def spool_dir_ready(spool_dir: Path) -> None:
    spool_dir.mkdir(parents=True, exist_ok=True)
    # Leftovers from a crash are never in use by a live request.
    for stale in spool_dir.glob("upload-*.part"):
        try:
            os.unlink(stale)
        except OSError:
            pass
