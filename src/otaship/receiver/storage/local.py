"""Firmware objects as files under a local directory (the embedded default)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from otaship.receiver.storage.base import ObjectNotFound, Storage, StorageError, StoredObject
from otaship.receiver.storage.durable import durable_write

# Temp files live inside root so that os.replace never crosses a filesystem; the
# leading dot keeps them out of the key space (validate_key rejects dot segments).
_TMP_DIR = ".tmp"
_TMP_SUFFIX = ".part"
# A temp file this old was left by a crashed process; a live upload is far younger.
# Several workers may share root, so a fresh temp file is never ours to delete.
_STALE_TMP_SECONDS = 3600.0
_COPY_CHUNK = 1024 * 1024
# Taken shared by whatever gives a key new bytes or a new age (put, refresh) and
# exclusively by a delete that must first check the object is the one it listed.
# POSIX has no "unlink if unchanged"; this lock makes the check and the unlink one
# step for every process sharing root.
LOCK_NAME = ".lock"
_MAX_KEY_BYTES = 1024  # the GCS object name limit, so both backends accept the same keys


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise ValueError.

    Shared by every backend so that a key accepted by one is accepted by all. Segments
    starting with a dot are refused: besides `.` and `..` that reserves hidden names
    for the backends' own files.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > _MAX_KEY_BYTES:
        raise ValueError(f"object key longer than {_MAX_KEY_BYTES} bytes")
    if key.startswith("/") or "\\" in key or any(ord(c) < 0x20 or c == "\x7f" for c in key):
        raise ValueError(f"object key {key!r} must be relative, without backslashes or control characters")
    for segment in key.split("/"):
        if not segment or segment.startswith("."):
            raise ValueError(f"object key {key!r} has an empty or dot segment")
    return key


def _version(st: os.stat_result) -> str:
    # A put publishes a new inode and a refresh sets a new mtime: either changes this.
    return f"{st.st_ino}:{st.st_mtime_ns}"


def _fsync_dir(path: Path) -> None:
    # The rename itself must survive a power cut, not only the file's bytes.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage(Storage):
    """Objects stored as `root/<key>`, each written completely before it appears."""

    keeps_source_blocks = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._tmp = self.root / _TMP_DIR
        self._prepared = False

    def _path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        # validate_key already rules out `..`; this guards against a future rule change.
        if not path.is_relative_to(self.root):
            raise ValueError(f"object key {key!r} escapes the storage root")
        return path

    def _prepare(self) -> None:
        """Create root on first use and clear temp files left by crashed processes."""
        if self._prepared:
            return
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create storage directory {self.root}: {exc.strerror}") from exc
        cutoff = time.time() - _STALE_TMP_SECONDS
        with contextlib.suppress(OSError), os.scandir(self._tmp) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.name.endswith(_TMP_SUFFIX) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
        self._prepared = True

    def put(self, key: str, source: Path) -> None:
        path = self._path(key)
        self._prepare()
        if self._put_by_link(path, source):
            return
        # Opened before the temp file exists: a missing source is the caller's bug,
        # raised as it is, and leaves nothing to clean up.
        with (
            open(source, "rb") as src,
            durable_write(
                self._tmp,
                lambda tmp: self._publish(tmp, path),
                what="store object",
                suffix=_TMP_SUFFIX,
            ) as dst,
        ):
            while chunk := src.read(_COPY_CHUNK):
                # A source that fails to read raises its own error; only failures
                # on our side (disk full, I/O error) are StorageError.
                try:
                    dst.write(chunk)
                except OSError as exc:
                    raise StorageError(f"cannot store object: {exc.strerror}") from exc

    def _put_by_link(self, path: Path, source: Path) -> bool:
        """Store the object as a second name of the source file, without copying.

        An upload is spooled in the data dir, usually on the same filesystem as
        the objects: a hard link saves copying every byte again. The source
        must not change afterwards (uploads never do). False when linking is
        not possible here (another filesystem, no hard links): then copy.
        """
        tmp = self._tmp / f"{secrets.token_hex(8)}{_TMP_SUFFIX}"
        try:
            os.link(source, tmp)
        except FileNotFoundError:
            raise
        except OSError:
            return False
        try:
            try:
                with open(tmp, "rb") as linked:
                    os.fsync(linked.fileno())
            except OSError as exc:
                raise StorageError(f"cannot store object: {exc.strerror}") from exc
            self._publish(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return True

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _publish(self, tmp: Path, path: Path) -> None:
        """Give a complete, synced temp file its key's name, durably."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked(exclusive=False):
                # The object's age starts now, not when its bytes were written
                # (a linked spool file keeps the upload's time).
                now = time.time_ns()
                os.utime(tmp, ns=(now, now))
                # Atomic: readers see no file or the complete one. Overwriting
                # an existing key is harmless, the bytes are the same.
                os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            raise StorageError(f"cannot store object: {exc.strerror}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {key}")
        return path

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete object: {exc.strerror}") from exc

    def refresh(self, key: str) -> bool:
        path = self._path(key)
        self._prepare()
        try:
            with self._locked(exclusive=False):
                now = time.time_ns()
                os.utime(path, ns=(now, now))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot refresh object: {exc.strerror}") from exc
        return True

    def list_objects(self, prefix: str) -> list[StoredObject]:
        if prefix:
            validate_key(prefix.rstrip("/"))
        # Walk only the folder the prefix names, not the whole root.
        start = self.root / prefix.rpartition("/")[0]
        if not start.is_dir():
            return []

        def fail(exc: OSError) -> None:
            raise exc

        found: list[StoredObject] = []
        try:
            for folder, subfolders, names in os.walk(start, onerror=fail):
                # Dot names are the backend's own (temp files, the lock), never objects.
                subfolders[:] = [name for name in subfolders if not name.startswith(".")]
                base = Path(folder).relative_to(self.root).as_posix()
                for name in names:
                    key = name if base == "." else f"{base}/{name}"
                    if name.startswith(".") or not key.startswith(prefix):
                        continue
                    try:
                        st = os.stat(os.path.join(folder, name), follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted since the folder was read
                    if stat.S_ISREG(st.st_mode):
                        found.append(StoredObject(key, st.st_size, st.st_mtime_ns / 1e9, _version(st)))
        except OSError as exc:
            raise StorageError(f"cannot list objects: {exc.strerror}") from exc
        return found

    def delete_if_unchanged(self, stored: StoredObject) -> bool:
        path = self._path(stored.key)
        self._prepare()
        try:
            with self._locked(exclusive=True):
                try:
                    st = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    return False
                if _version(st) != stored.version:
                    return False
                path.unlink()
        except OSError as exc:
            raise StorageError(f"cannot delete object: {exc.strerror}") from exc
        return True

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"storage root {self.root} is not a directory")
        self._prepared = False  # re-create root if it was removed since the last check
        self._prepare()
        # os.access can say yes on a read-only bind mount or for root over NFS;
        # writing a probe file is the only honest answer.
        try:
            fd, probe = tempfile.mkstemp(dir=self._tmp, suffix=_TMP_SUFFIX)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageError(f"storage root {self.root} is not writable: {exc.strerror}") from exc
