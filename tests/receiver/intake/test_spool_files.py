"""Spool files are held by their process: a starting worker clears what a
crashed one left, never what a live one is still using.

The end-to-end test runs two real `otaship serve` processes on one data folder,
as granian's workers (and replicas sharing a volume) do: the second one's start
came while the first was receiving an upload, and once deleted that upload's
file under it, a 500.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from otaship.receiver.intake.spool_files import SpoolFile, sweep
from tests import multipart
from tests.esp_image import build_image
from tests.raw_upload import RawUpload, tenants_in
from tests.receiver_process import ReceiverProcess, cli_env
from tests.waiting import eventually


def names(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


def test_a_held_file_survives_a_sweep_and_a_leftover_does_not(tmp_path: Path) -> None:
    held = SpoolFile.create(tmp_path, "upload")
    held_github = SpoolFile.create(tmp_path, "github")
    for leftover in ("upload-0123456789abcdef.part", "github-0123456789abcdef.part"):
        (tmp_path / leftover).write_bytes(b"half an image")
    # Not a spool file: another program's, or the storage's.
    (tmp_path / "notes.txt").write_bytes(b"mine")
    (tmp_path / "upload-0123456789abcdef.bin").write_bytes(b"mine")

    assert sweep(tmp_path) == 2
    assert names(tmp_path) == {
        held.path.name,
        held_github.path.name,
        "notes.txt",
        "upload-0123456789abcdef.bin",
    }
    assert held.path.name.startswith("upload-") and held.path.suffix == ".part"
    assert held_github.path.name.startswith("github-")

    held.remove()
    held.remove()  # a second time changes nothing
    held_github.remove()
    assert names(tmp_path) == {"notes.txt", "upload-0123456789abcdef.bin"}
    assert sweep(tmp_path) == 0


def test_a_file_written_through_another_descriptor_stays_held(tmp_path: Path) -> None:
    # The spool writer and the GitHub download open the path again to write it.
    held = SpoolFile.create(tmp_path, "upload")
    with held.path.open("wb") as out:
        out.write(b"firmware")
    assert sweep(tmp_path) == 0
    assert held.path.read_bytes() == b"firmware"
    held.remove()


HOLDER = """
import sys
from pathlib import Path
from otaship.receiver.intake.spool_files import SpoolFile
held = SpoolFile.create(Path(sys.argv[1]), "upload")
print(held.path, flush=True)
sys.stdin.read()
"""


def test_the_file_of_a_killed_process_is_swept_and_a_live_ones_is_not(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            path = Path(holder.stdout.readline().strip())
            assert path.exists()
            assert sweep(tmp_path) == 0
            assert path.exists()
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
    # The kernel dropped its lock with the process.
    assert sweep(tmp_path) == 1
    assert not path.exists()


def test_a_file_swept_before_its_creator_locked_it_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_flock: Callable[[int, int], None] = fcntl.flock
    raced: list[str] = []

    def sweep_first(fd: int, operation: int) -> None:
        if not raced:
            # A sweep listed the new file and removed it between its creation and its lock.
            (path,) = tmp_path.glob("upload-*.part")
            raced.append(path.name)
            path.unlink()
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", sweep_first)
    held = SpoolFile.create(tmp_path, "upload")
    monkeypatch.undo()
    assert held.path.exists() and held.path.name != raced[0]
    assert sweep(tmp_path) == 0
    held.remove()
    assert list(tmp_path.iterdir()) == []


def test_a_receiver_starting_beside_another_leaves_its_upload_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (owner,) = tenants_in(f"sqlite:///{data / 'otaship.db'}", ("ada",)).values()
    env = cli_env(data)
    first = ReceiverProcess(env).start()
    upload = RawUpload(first.url, owner.api_key)
    second: ReceiverProcess | None = None
    spool = data / "tmp"
    leftover = spool / "upload-00000000deadbeef.part"
    try:
        image = build_image("1.4.0")
        head = b"".join(multipart.field_part(k, v) for k, v in owner.fields("1.4.0").items())
        upload.send(head + multipart.file_head() + image[:1024])
        eventually(lambda: len(list(spool.glob("upload-*.part"))) == 1, "the upload's spool file")
        leftover.write_bytes(b"left by a receiver that crashed")

        second = ReceiverProcess(env).start()
        assert not leftover.exists()
        (receiving,) = spool.glob("upload-*.part")

        upload.send(image[1024:] + b"\r\n" + multipart.closing())
        upload.sock.sendall(b"0\r\n\r\n")
        answer = upload.answer(timeout=30)
        assert answer.status == 201, answer
        deployed = json.loads(answer.body)
        assert (deployed["deployed"], deployed["ota"]["version"]) == (True, "1.4.0")
        assert not receiving.exists()
    finally:
        upload.close()
        logs = first.stop() + (second.stop() if second is not None else "")
    assert "unhandled error" not in logs
    assert "removed 1 spool file(s) left by a stopped receiver" in logs
    assert os.listdir(spool) == []
