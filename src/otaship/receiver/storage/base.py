"""The firmware storage interface and its errors.

Objects are immutable and content-addressed (see `object_key`): a key is written
once and never changes, so a record that points to it, a download in progress
and a cached copy can never disagree about its bytes.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from pathlib import Path

# Every object the receiver writes lives under this prefix; nothing else in the
# bucket or folder is ever its to delete.
FIRMWARE_PREFIX = "firmware/sha256/"
_FIRMWARE_KEY = re.compile(r"firmware/sha256/[0-9a-f]{64}\.bin")


class StorageError(Exception):
    """The storage backend failed; the message is safe to show to a client."""


class ObjectNotFound(StorageError):
    """No object under that key."""


def object_key(sha256: str) -> str:
    """Where the bytes of a firmware image live, whatever group deploys them."""
    return f"{FIRMWARE_PREFIX}{sha256}.bin"


def is_firmware_key(key: str) -> bool:
    """Whether `key` is one that `object_key` makes."""
    return _FIRMWARE_KEY.fullmatch(key) is not None


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing saw it."""

    key: str
    size: int
    # When it was stored or last refreshed, in seconds since the epoch.
    modified: float
    # Changes whenever the object is stored again or refreshed; opaque, it only
    # lets a delete make sure that it removes exactly what the listing saw.
    version: str


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

    def refresh(self, key: str) -> bool:
        """Make the object count as stored just now; False when there is none.

        A deploy that finds its object already stored refreshes it, so that the
        orphan sweep (which removes only objects older than its grace period)
        cannot take it away while the deploy's record is being written. A
        backend that cannot list its objects is never swept: there, whether the
        object exists is all that matters.
        """
        return self.exists(key)

    def list_objects(self, prefix: str) -> list[StoredObject]:
        """Every complete object whose key starts with `prefix`.

        Optional, with `delete_if_unchanged`: both backends here have them; a
        backend without them still stores and serves, and the orphan sweep
        stops with one warning instead of guessing what it may delete.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot list its objects")

    def delete_if_unchanged(self, stored: StoredObject) -> bool:
        """Remove the object only if it is still the version that was listed.

        False when it is gone already or was stored again or refreshed since:
        someone is using it. Atomic against `put` and `refresh`, in this
        process and in any other.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot delete by version")

    @abc.abstractmethod
    def check(self) -> None:
        """Raise StorageError when the backend cannot be used right now."""

    def close(self) -> None:  # noqa: B027  (optional: most backends hold nothing)
        """Release clients and connections."""
