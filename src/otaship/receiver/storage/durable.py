"""Writing a file so that its name appears only once all its bytes are on disk.

Both backends need it: the local store for its objects, the GCS backend for its
download cache, which is trusted after a restart. Either a reader finds no file, or
the complete one; a crash or an error at any step leaves no half-written name and
no temp file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from otaship.receiver.storage.base import StorageError


@contextlib.contextmanager
def durable_write(
    directory: Path,
    publish: Callable[[Path], None],
    *,
    what: str,
    prefix: str = "",
    suffix: str = "",
) -> Iterator[BinaryIO]:
    """Yield a temp file in `directory`; once the body is done, sync it and publish it.

    `publish(tmp)` gives the synced, closed temp file its final name (normally an
    `os.replace`, under whatever lock the backend needs). If the body, the sync or
    `publish` raises, the temp file is removed and the exception goes on. Failures of
    our own file operations are `StorageError`s saying "cannot `what`"; errors the
    body raises (a source that fails to read, an object not found) pass as they are.
    """
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    except OSError as exc:
        raise StorageError(f"cannot {what}: {exc.strerror}") from exc
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            try:
                file.flush()
                os.fsync(file.fileno())
            except OSError as exc:
                raise StorageError(f"cannot {what}: {exc.strerror}") from exc
        publish(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
