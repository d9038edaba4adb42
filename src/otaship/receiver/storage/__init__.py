"""Firmware storage backends, chosen by URL scheme and imported lazily."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from otaship.receiver.storage.base import (
    FIRMWARE_PREFIX,
    ObjectNotFound,
    Storage,
    StorageError,
    StoredObject,
    is_firmware_key,
    object_key,
)

__all__ = [
    "FIRMWARE_PREFIX",
    "ObjectNotFound",
    "Storage",
    "StorageError",
    "StoredObject",
    "create_storage",
    "is_firmware_key",
    "object_key",
]


def create_storage(url: str, *, cache_dir: Path) -> Storage:
    """Build the backend for `url`: `file:///path` or `gs://bucket[/prefix]`."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from otaship.receiver.storage.local import LocalStorage

        return LocalStorage(Path(unquote(parsed.netloc + parsed.path)))
    if parsed.scheme == "gs":
        from otaship.receiver.storage.gcs import GCSStorage

        return GCSStorage(bucket=parsed.netloc, prefix=parsed.path.strip("/"), cache_dir=cache_dir)
    raise ValueError(f"Unsupported storage URL scheme {parsed.scheme!r}: use file:// or gs://")
