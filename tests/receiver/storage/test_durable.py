"""The one temp-file, fsync and rename helper both storage backends write through."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from otaship.receiver.storage import StorageError
from otaship.receiver.storage.durable import durable_write


def _publisher(final: Path, seen: list[Path]) -> Callable[[Path], None]:
    def publish(tmp: Path) -> None:
        seen.append(tmp)
        os.replace(tmp, final)

    return publish


def test_the_name_appears_with_every_byte_and_no_temp_file_is_left(tmp_path: Path) -> None:
    final = tmp_path / "object.bin"
    seen: list[Path] = []
    with durable_write(tmp_path, _publisher(final, seen), what="store object", suffix=".part") as file:
        file.write(b"a" * 100_000)
        assert not final.exists()
    assert final.read_bytes() == b"a" * 100_000
    assert len(seen) == 1 and seen[0].name.endswith(".part")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["object.bin"]


def test_an_error_in_the_body_passes_as_it_is_and_leaves_nothing(tmp_path: Path) -> None:
    seen: list[Path] = []
    with (
        pytest.raises(ValueError, match="source broke"),
        durable_write(tmp_path, _publisher(tmp_path / "x", seen), what="store object") as file,
    ):
        file.write(b"half")
        raise ValueError("source broke")
    assert seen == []
    assert list(tmp_path.iterdir()) == []


def test_a_failing_publish_leaves_no_temp_file(tmp_path: Path) -> None:
    def publish(tmp: Path) -> None:
        assert tmp.read_bytes() == b"complete"
        raise StorageError("cannot store object: the lock is gone")

    with (
        pytest.raises(StorageError, match="the lock is gone"),
        durable_write(tmp_path, publish, what="store object") as file,
    ):
        file.write(b"complete")
    assert list(tmp_path.iterdir()) == []


def test_a_failing_sync_is_a_storage_error_naming_the_action(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    published: list[Path] = []
    with (
        pytest.raises(StorageError, match=r"^cannot write the download cache: No space left on device$"),
        durable_write(tmp_path, published.append, what="write the download cache") as file,
    ):
        file.write(b"bytes")
    assert published == []
    assert list(tmp_path.iterdir()) == []


def test_an_unusable_directory_is_a_storage_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with (
        pytest.raises(StorageError, match=r"^cannot store object: No such file or directory$"),
        durable_write(missing, lambda tmp: None, what="store object"),
    ):
        pytest.fail("the body must not run")
