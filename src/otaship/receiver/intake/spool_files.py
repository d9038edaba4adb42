"""Spool files in the receiver's tmp folder, held by the process that uses them.

Every worker of a receiver, and every replica that shares its data folder,
spools into the same folder, and each clears the leftovers of a crash when it
starts. A file that another live worker is still receiving into, checking or
storing is not a leftover. So each spool file is created under an exclusive
`flock` that its process holds until it has removed the file, and the kernel
drops that lock when the process dies: the sweep removes only the files whose
lock it can take.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("otaship.upload")

# upload-*: a POST's firmware part; github-*: a release asset being deployed.
SUFFIX = ".part"
PREFIXES = ("upload", "github")


class SpoolFile:
    """An empty file of our own in `directory`, locked until `remove()`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def create(cls, directory: Path, prefix: str) -> SpoolFile:
        assert prefix in PREFIXES, prefix
        while True:
            path = directory / f"{prefix}-{secrets.token_hex(8)}{SUFFIX}"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue  # never another's file, however unlikely the name
            # A sweep that listed the file before we locked it holds the lock only
            # while it removes the file; once ours, a file with no name was swept.
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                return cls(path, fd)
            os.close(fd)

    def remove(self) -> None:
        """The file removed, then its lock dropped: never a moment unlocked with its name."""
        self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def sweep(directory: Path) -> int:
    """Remove the spool files no live process holds; how many were removed."""
    removed = 0
    for prefix in PREFIXES:
        for path in directory.glob(f"{prefix}-*{SUFFIX}"):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # removed by its owner meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live worker's
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
            except OSError as exc:
                log.warning("a leftover spool file could not be removed: %s: %s", path.name, exc)
            finally:
                os.close(fd)
    return removed
