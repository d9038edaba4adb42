"""The baselines: the least a Starlette app under uvicorn does for the same requests.

- `GET /json`: a constant JSON, what `latest` answers.
- `GET /file`: a `FileResponse` of the firmware image (BENCH_FILE).
- `POST /upload`: the multipart body streamed through python-multipart's push
  parser, the file part written to disk (BENCH_UPLOAD_DIR), then 201.
- `POST /upload-hashed`: the same, also hashing the file (SHA-256 and MD5)
  inline and syncing it to disk before the 201.

Served with `uvicorn --factory bench.baseline_app:create_app --workers 1`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route


class _FileSink:
    """Callbacks for python-multipart: parts with a filename go to one file on disk.

    `diligent`: also what any OTA receiver owes its devices, done the plain
    way, inline: SHA-256 and MD5 of the file, and an fsync before the answer.
    """

    def __init__(self, folder: Path, *, diligent: bool = False) -> None:
        self.folder = folder
        self.diligent = diligent
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.is_file = False
        self.sink: BinaryIO | None = None
        self.size = 0
        self.paths: list[Path] = []

    def on_part_begin(self) -> None:
        self.is_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_field.lower() == b"content-disposition" and b"filename=" in self.header_value:
            self.is_file = True
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        if self.is_file:
            path = self.folder / f"{secrets.token_hex(8)}.bin"
            self.paths.append(path)
            self.sink = open(path, "wb")  # noqa: SIM115  (open for the whole upload)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.sink is not None:
            chunk = data[start:end]
            self.sink.write(chunk)
            self.size += end - start
            if self.diligent:
                self.sha256.update(chunk)
                self.md5.update(chunk)

    def on_part_end(self) -> None:
        if self.sink is not None:
            if self.diligent:
                self.sink.flush()
                os.fsync(self.sink.fileno())
            self.sink.close()
            self.sink = None


def create_app() -> Starlette:
    file_path = os.environ.get("BENCH_FILE")
    upload_dir = Path(os.environ.get("BENCH_UPLOAD_DIR") or ".")

    async def constant_json(request: Request) -> Response:
        return JSONResponse({"ver": "1.0.0"})

    async def file(request: Request) -> Response:
        assert file_path is not None, "BENCH_FILE is not set"
        return FileResponse(file_path, media_type="application/octet-stream")

    async def upload(request: Request) -> Response:
        _, params = parse_options_header(request.headers["content-type"])
        sink = _FileSink(upload_dir, diligent=request.url.path == "/upload-hashed")
        parser = MultipartParser(
            params[b"boundary"],
            {
                "on_part_begin": sink.on_part_begin,
                "on_header_field": sink.on_header_field,
                "on_header_value": sink.on_header_value,
                "on_header_end": sink.on_header_end,
                "on_headers_finished": sink.on_headers_finished,
                "on_part_data": sink.on_part_data,
                "on_part_end": sink.on_part_end,
            },
        )
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        for path in sink.paths:  # the bench only times the upload; keep the disk clean
            path.unlink(missing_ok=True)
        return JSONResponse({"message": "stored", "size": sink.size}, status_code=201)

    return Starlette(
        routes=[
            Route("/json", constant_json),
            Route("/upload-hashed", upload, methods=["POST"]),
            Route("/file", file, methods=["GET", "HEAD"]),
            Route("/upload", upload, methods=["POST"]),
        ]
    )
