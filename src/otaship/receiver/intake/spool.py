"""The firmware part of an upload, written to disk and tallied off the event loop.

The event loop only parses the multipart framing and hands the chunks over.
Two threads take every chunk in order: one writes it and feeds the SHA-256 and
XOR, the other the MD5 (the slowest hash, and independent of the rest).
Writing and hashing release the GIL, so on a second core they keep pace with
the network instead of adding to it.

When the spool file will itself become the stored object (local storage
hard-links it), the writing thread also pushes the bytes to disk every few
MiB: the fsync before the deploy commits then finds almost nothing to write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable

from otaship.firmware.tally import ImageFacts, ImageTally
from otaship.receiver.intake.spool_files import SpoolFile

log = logging.getLogger("otaship.upload")

# Handed over but not yet written and hashed: past this, the reader waits.
MAX_BACKLOG = 8 * 1024 * 1024
FLUSH_EVERY = 4 * 1024 * 1024


class _Lane:
    """A thread that runs `work` on every chunk, in order, until it gets None."""

    def __init__(
        self, name: str, work: Callable[[memoryview], None], progressed: threading.Condition
    ) -> None:
        self.work = work
        self.done = 0
        self.error: OSError | None = None
        self.aborted = False
        self.finished = threading.Event()
        self._chunks: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._progressed = progressed
        self._last: Callable[[], None] | None = None
        self._after: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(
        self, *, last: Callable[[], None] | None = None, after: Callable[[], None] | None = None
    ) -> None:
        """`last` is part of the work, after the last chunk; `after` runs once
        `finished` is set, and may take its time."""
        self._last = last
        self._after = after
        self._thread.start()

    def put(self, chunk: memoryview | None) -> None:
        self._chunks.put(chunk)

    def _run(self) -> None:
        try:
            while (chunk := self._chunks.get()) is not None:
                if self.error is None and not self.aborted:
                    try:
                        self.work(chunk)
                    except OSError as exc:
                        self.error = exc
                with self._progressed:
                    self.done += len(chunk)
                    self._progressed.notify_all()
            if self._last is not None and self.error is None and not self.aborted:
                try:
                    self._last()
                except OSError as exc:
                    self.error = exc
        finally:
            self.finished.set()
            with self._progressed:
                self._progressed.notify_all()
        if self._after is not None:
            self._after()


class SpoolWriter:
    def __init__(self, spool: SpoolFile, *, flush_to_disk: bool = False) -> None:
        self.path = spool.path
        self.size = 0
        # Into the file the SpoolFile made and holds: never creates or truncates one.
        self._file = open(self.path, "r+b")  # noqa: SIM115 (closed by the writing lane)
        self._tally = ImageTally()
        self._flush_to_disk = flush_to_disk
        self._unflushed = 0
        progressed = threading.Condition()
        self._progressed = progressed
        self._disk = _Lane("upload-spool", self._write, progressed)
        self._md5 = _Lane("upload-md5", self._tally.update_md5, progressed)
        self._lanes = (self._disk, self._md5)
        self._sync_wanted = threading.Event()
        self._syncer: threading.Thread | None = None
        if flush_to_disk:
            self._syncer = threading.Thread(target=self._sync_while_writing, name="upload-sync", daemon=True)
            self._syncer.start()
        self._disk.start(last=self._file.flush, after=self._close_file)
        self._md5.start()

    @property
    def backlog(self) -> int:
        return self.size - min(lane.done for lane in self._lanes)

    def write(self, chunk: memoryview) -> None:
        """Hand a chunk over. Raises the write error met so far, if any."""
        if self._disk.error is not None:
            raise self._disk.error
        self.size += len(chunk)
        for lane in self._lanes:
            lane.put(chunk)

    def wait_for_backlog(self, limit: int) -> None:
        """Block until at most `limit` bytes wait to be written and hashed."""
        with self._progressed:
            self._progressed.wait_for(
                lambda: self.backlog <= limit or any(lane.finished.is_set() for lane in self._lanes)
            )

    def finish(self) -> ImageFacts:
        """Block until every byte is written and tallied; raise the write error, if any.

        The last flush to disk may still be running: whoever needs the bytes
        durable (the storage's own fsync) waits for it there, while
        validation reads them from the page cache in the meantime.
        """
        for lane in self._lanes:
            lane.put(None)
        for lane in self._lanes:
            lane.finished.wait()
        if self._disk.error is not None:
            raise self._disk.error
        return self._tally.facts()

    def abort(self) -> None:
        """Stop without waiting: what is still queued is dropped, the file closed."""
        for lane in self._lanes:
            lane.aborted = True
            lane.put(None)

    def _write(self, chunk: memoryview) -> None:
        self._file.write(chunk)
        self._tally.update_rest(chunk)
        self._unflushed += len(chunk)
        if self._flush_to_disk and self._unflushed >= FLUSH_EVERY:
            # Synced on a third thread, so that writing and hashing go on meanwhile.
            self._unflushed = 0
            self._sync_wanted.set()

    def _sync_while_writing(self) -> None:
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            if self._disk.finished.is_set():
                return
            try:
                os.fdatasync(self._file.fileno())
            except OSError as exc:
                log.debug("flushing the upload spool file failed: %s", exc)

    def _close_file(self) -> None:
        try:
            if self._syncer is not None:
                self._sync_wanted.set()
                self._syncer.join()
            if self._flush_to_disk and self._disk.error is None and not self._disk.aborted:
                os.fdatasync(self._file.fileno())
        except OSError as exc:
            # Not the last word: the storage syncs the file itself and reports it.
            log.debug("flushing the upload spool file failed: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                self._file.close()
