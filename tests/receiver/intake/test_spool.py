"""The upload spool writer: every byte written and tallied in order, by its
two threads, and nothing left running after a finish or an abort.
(A disk refusing bytes: tests/receiver/intake/test_upload_disk.py.)"""

from __future__ import annotations

import random
import secrets
import threading
from pathlib import Path

import pytest

from otaship.firmware.tally import ImageTally
from otaship.receiver.intake.spool import FLUSH_EVERY, SpoolWriter
from otaship.receiver.intake.spool_files import SpoolFile


def spool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("upload-spool", "upload-md5") and t.is_alive()]


@pytest.mark.parametrize("flush_to_disk", [False, True])
def test_every_chunk_is_written_and_tallied_in_order(tmp_path: Path, flush_to_disk: bool) -> None:
    rng = random.Random(7)
    data = rng.randbytes(FLUSH_EVERY + 300_001)
    spool = SpoolFile.create(tmp_path, "upload")
    path = spool.path
    writer = SpoolWriter(spool, flush_to_disk=flush_to_disk)
    position = 0
    while position < len(data):
        step = rng.choice([1, 31, 4096, 65_536, 262_144])
        writer.write(memoryview(data)[position : position + step])
        position += step
    writer.wait_for_backlog(1024 * 1024)
    assert writer.backlog <= 1024 * 1024
    facts = writer.finish()
    expected = ImageTally()
    expected.update(data)
    assert facts == expected.facts()
    assert writer.size == len(data)
    assert writer.backlog == 0
    assert path.read_bytes() == data


def test_an_abort_stops_both_threads_without_waiting(tmp_path: Path) -> None:
    before = len(spool_threads())
    writer = SpoolWriter(SpoolFile.create(tmp_path, "upload"))
    for _ in range(64):
        writer.write(memoryview(bytes(65_536)))
    writer.abort()
    for lane in writer._lanes:
        assert lane.finished.wait(10)
    for thread in spool_threads():
        thread.join(10)
    assert len(spool_threads()) == before
    assert writer._file.closed


def test_a_spool_file_is_never_opened_over_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = tmp_path / "upload-0000000000000000.part"
    taken.write_bytes(b"someone else's")
    names = iter(["0000000000000000", "1111111111111111"])
    monkeypatch.setattr(secrets, "token_hex", lambda _: next(names))
    spool = SpoolFile.create(tmp_path, "upload")
    monkeypatch.undo()
    assert spool.path.name == "upload-1111111111111111.part"
    writer = SpoolWriter(spool)
    writer.write(memoryview(b"mine"))
    writer.finish()
    assert (taken.read_bytes(), spool.path.read_bytes()) == (b"someone else's", b"mine")
    spool.remove()
    # A writer never makes a file of its own: only the SpoolFile's.
    with pytest.raises(FileNotFoundError):
        SpoolWriter(spool)
