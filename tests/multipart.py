"""multipart/form-data bodies written by hand, for tests that send them as they please
(chunked, in pieces, stalled, or with parts no ordinary client would send)."""

from __future__ import annotations

BOUNDARY = "otashipTestBoundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def field_part(name: str, value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data + b"\r\n"


def file_head(name: str = "firmware", filename: str = "firmware.bin") -> bytes:
    """A file part's delimiter and headers: its bytes follow."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def file_part(data: bytes, name: str = "firmware", filename: str = "firmware.bin") -> bytes:
    return file_head(name, filename) + data + b"\r\n"


def closing() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


def form(fields: dict[str, str], firmware: bytes | None = None) -> bytes:
    body = b"".join(field_part(name, value) for name, value in fields.items())
    if firmware is not None:
        body += file_part(firmware)
    return body + closing()
