"""The firmware storage interface and its errors.

Objects are immutable and content-addressed (see `object_key`): a key is written
once and never changes, so a record that points to it, a download in progress
and a cached copy can never disagree about its bytes.
"""
from __future__ import annotations

import abc
from pathlib import Path


class StorageError(Exception):
    """The storage backend failed; the message is safe to show to a client."""


class ObjectNotFound(StorageError):
    """No object under that key."""


def object_key(sha256: str) -> str:
    """Where the bytes of a firmware image live, whatever group deploys them."""
    return f"firmware/sha256/{sha256}.bin"


class Storage(abc.ABC):
    """A place for firmware objects. Methods are blocking; call them off the event loop."""

    # `put` keeps the source file's own blocks (a hard link) instead of copying
    # them: whoever writes that file does well to push it to disk early.
    keeps_source_blocks: bool = False

    @abc.abstractmethod
    def put(self, key: str, source: Path) -> None:
        """Store the file `source` under `key`.

        The object becomes visible only once complete; a failure leaves nothing
        under `key`. Writing a key that already exists is allowed (same bytes).
        """

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a complete object is stored under `key`."""

    @abc.abstractmethod
    def local_path(self, key: str) -> Path:
        """A local file holding the object's complete bytes, for serving.

        Raises ObjectNotFound when there is no such object.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise StorageError when the backend cannot be used right now."""

    def close(self) -> None:
        """Release clients and connections."""
