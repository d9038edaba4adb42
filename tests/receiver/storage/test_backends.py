"""The storage contract, run against both backends, then what only GCS has: the cache
and its behaviour during an outage.

GCS runs the real google-cloud-storage client against gcp-storage-emulator.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from google.api_core import exceptions as api_exceptions

import otaship.receiver.storage.local as local_module
from otaship.receiver.storage import (
    FIRMWARE_PREFIX,
    ObjectNotFound,
    Storage,
    StorageError,
    StoredObject,
    create_storage,
    object_key,
)
from otaship.receiver.storage.gcs import GCSStorage
from otaship.receiver.storage.local import LocalStorage

if TYPE_CHECKING:
    # Imported by pytest_plugins below, so that pytest rewrites its asserts.
    from tests.gcs_emulator import GCSEmulator

# Provides the gcs_emulator fixture.
pytest_plugins = ["tests.gcs_emulator"]

KiB = 1024
MiB = 1024 * KiB


@dataclass
class Backend:
    storage: Storage
    #: Every file or object the backend holds, temp files included.
    stored: Callable[[], list[str]]
    emulator: GCSEmulator | None = None


def _files_under(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(params=["local", "gcs"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        root = tmp_path / "objects"
        # The lock file is the folder's own, like the folder itself.
        lock = local_module.LOCK_NAME
        yield Backend(LocalStorage(root), lambda: [f for f in _files_under(root) if f != lock])
        return
    emulator: GCSEmulator = request.getfixturevalue("gcs_emulator")
    cache = tmp_path / "cache"
    storage = GCSStorage(emulator.bucket, "otaship", cache)
    yield Backend(storage, lambda: emulator.object_names() + _files_under(cache), emulator)
    storage.close()


def _image(tmp_path: Path, size: int, name: str = "firmware.bin") -> tuple[str, Path, bytes]:
    data = os.urandom(size)
    source = tmp_path / name
    source.write_bytes(data)
    return object_key(hashlib.sha256(data).hexdigest()), source, data


class _FailingSource(io.FileIO):
    """A file whose read fails once `fail_at` bytes would be passed, like a disk I/O error."""

    def __init__(self, path: str, fail_at: int) -> None:
        super().__init__(path, "rb")
        self._fail_at = fail_at

    def read(self, size: int | None = -1) -> bytes:
        wanted = size if size is not None and size >= 0 else os.fstat(self.fileno()).st_size
        if self.tell() + wanted > self._fail_at:
            raise OSError(errno.EIO, "Input/output error")
        return super().read(size)

    def readinto(self, buffer: Any) -> int:
        if self.tell() + len(buffer) > self._fail_at:
            raise OSError(errno.EIO, "Input/output error")
        return super().readinto(buffer)


@pytest.fixture
def failing_source(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, int], None]:
    """Make `open(path, "rb")` return a file that fails mid-read.

    No portable file fails half-way by itself, and both backends open the source by
    name, so the only seam is open().
    """

    def arm(path: Path, fail_at: int) -> None:
        real_open = builtins.open

        def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(path):
                return _FailingSource(str(path), fail_at)
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fake_open)

    return arm


# -- the contract, for both backends ---------------------------------------------


def test_put_then_local_path_returns_identical_bytes(backend: Backend, tmp_path: Path) -> None:
    key, source, data = _image(tmp_path, 300 * KiB)
    storage = backend.storage
    assert not storage.exists(key)

    storage.put(key, source)

    assert storage.exists(key)
    assert storage.local_path(key).read_bytes() == data
    # The caller's file is untouched: it still owns it.
    assert source.read_bytes() == data


def test_put_of_an_existing_key_is_fine(backend: Backend, tmp_path: Path) -> None:
    key, source, data = _image(tmp_path, 10 * KiB)
    backend.storage.put(key, source)
    backend.storage.put(key, source)
    assert backend.storage.local_path(key).read_bytes() == data


def test_missing_key(backend: Backend) -> None:
    key = object_key("0" * 64)
    assert not backend.storage.exists(key)
    with pytest.raises(ObjectNotFound):
        backend.storage.local_path(key)
    backend.storage.delete(key)  # not an error


def test_delete(backend: Backend, tmp_path: Path) -> None:
    key, source, _ = _image(tmp_path, 10 * KiB)
    backend.storage.put(key, source)
    backend.storage.local_path(key)  # cached, for GCS

    backend.storage.delete(key)

    assert not backend.storage.exists(key)
    with pytest.raises(ObjectNotFound):
        backend.storage.local_path(key)
    assert backend.stored() == []


def test_nonexistent_source_leaves_nothing(backend: Backend, tmp_path: Path) -> None:
    # A missing source is the caller's bug, raised as it is, not a storage failure.
    with pytest.raises(FileNotFoundError):
        backend.storage.put(object_key("1" * 64), tmp_path / "missing.bin")
    assert backend.stored() == []


def test_source_failing_mid_read_leaves_nothing(
    backend: Backend,
    tmp_path: Path,
    failing_source: Callable[[Path, int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, source, _ = _image(tmp_path, 3 * MiB)
    failing_source(source, int(1.5 * MiB))
    # The local backend would hard-link and never read: make it copy, as it
    # does when the spool folder is on another filesystem.
    monkeypatch.setattr("os.link", _cross_device_link)

    with pytest.raises(OSError, match="Input/output error"):
        backend.storage.put(key, source)

    assert not backend.storage.exists(key)
    assert backend.stored() == []


def _cross_device_link(src: object, dst: object) -> None:
    raise OSError(errno.EXDEV, "Invalid cross-device link")


def test_local_put_links_the_source_instead_of_copying(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "objects")
    key, source, data = _image(tmp_path, 300 * KiB)
    storage.put(key, source)
    stored = storage.local_path(key)
    assert stored.read_bytes() == data
    assert stored.stat().st_ino == source.stat().st_ino
    source.unlink()  # the upload spool goes away; the object stays
    assert storage.local_path(key).read_bytes() == data
    assert _files_under(tmp_path / "objects" / ".tmp") == []


def test_local_put_copies_when_it_cannot_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.link", _cross_device_link)
    storage = LocalStorage(tmp_path / "objects")
    key, source, data = _image(tmp_path, 300 * KiB)
    storage.put(key, source)
    stored = storage.local_path(key)
    assert stored.read_bytes() == data
    assert stored.stat().st_ino != source.stat().st_ino


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside.bin",
    "firmware/../../outside.bin",
    "firmware//x.bin",
    "firmware/./x.bin",
    ".tmp/x.bin",
    "firmware\\x.bin",
    "firmware/x\x00.bin",
    "x" * 1100,
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_rejected(backend: Backend, tmp_path: Path, key: str) -> None:
    _, source, _ = _image(tmp_path, 1 * KiB)
    storage = backend.storage
    with pytest.raises(ValueError):
        storage.put(key, source)
    for operation in (storage.exists, storage.local_path, storage.delete):
        with pytest.raises(ValueError):
            operation(key)
    assert backend.stored() == []
    assert not (tmp_path / "outside.bin").exists()


def test_check_ok(backend: Backend) -> None:
    backend.storage.check()


def test_factory_picks_the_backend_by_scheme(tmp_path: Path) -> None:
    local = create_storage(f"file://{tmp_path}/objects", cache_dir=tmp_path / "cache")
    assert isinstance(local, LocalStorage) and local.root == tmp_path / "objects"
    gcs = create_storage("gs://fleet-firmware/prod/ota", cache_dir=tmp_path / "cache")
    assert isinstance(gcs, GCSStorage)
    assert (gcs.bucket_name, gcs.prefix) == ("fleet-firmware", "prod/ota")


# -- listing, refresh and conditional delete: what the orphan sweep uses ----------


def _backdate(backend: Backend, key: str, seconds: float) -> None:
    """Make an object look stored `seconds` ago; a test cannot wait an hour."""
    storage = backend.storage
    if isinstance(storage, LocalStorage):
        then = time.time() - seconds
        os.utime(storage.root / key, (then, then))
    else:
        assert backend.emulator is not None and isinstance(storage, GCSStorage)
        backend.emulator.backdate(f"{storage.prefix}/{key}", seconds)


def _listed(backend: Backend, key: str) -> StoredObject:
    (found,) = [obj for obj in backend.storage.list_objects(FIRMWARE_PREFIX) if obj.key == key]
    return found


def test_list_objects_gives_each_object_with_its_size_and_age(backend: Backend, tmp_path: Path) -> None:
    storage = backend.storage
    assert storage.list_objects(FIRMWARE_PREFIX) == []
    before = time.time()
    small_key, small, _ = _image(tmp_path, 10 * KiB, "small.bin")
    large_key, large, _ = _image(tmp_path, 300 * KiB, "large.bin")
    storage.put(small_key, small)
    storage.put(large_key, large)
    storage.put("notes/readme.txt", small)  # not under the prefix
    storage.local_path(small_key)  # cached, for GCS: the cache is no object
    after = time.time()

    listed = storage.list_objects(FIRMWARE_PREFIX)

    assert sorted((obj.key, obj.size) for obj in listed) == sorted(
        [(small_key, 10 * KiB), (large_key, 300 * KiB)]
    )
    for obj in listed:
        assert before - 0.01 <= obj.modified <= after + 0.01
    assert len({obj.version for obj in listed}) == 2
    assert sorted(obj.key for obj in storage.list_objects("")) == sorted(
        [small_key, large_key, "notes/readme.txt"]
    )


def test_a_linked_upload_is_as_old_as_its_store_not_its_bytes(backend: Backend, tmp_path: Path) -> None:
    # The local backend hard-links the spool file, which keeps the upload's time.
    key, source, _ = _image(tmp_path, 10 * KiB)
    then = time.time() - 7200
    os.utime(source, (then, then))
    before = time.time()
    backend.storage.put(key, source)
    assert _listed(backend, key).modified >= before - 0.01


def test_refresh_makes_an_object_young_again(backend: Backend, tmp_path: Path) -> None:
    storage = backend.storage
    key, source, data = _image(tmp_path, 10 * KiB)
    storage.put(key, source)
    _backdate(backend, key, 7200)
    old = _listed(backend, key)
    assert old.modified < time.time() - 7000

    before = time.time()
    assert storage.refresh(key) is True

    new = _listed(backend, key)
    assert new.modified >= before - 0.01
    assert new.version != old.version
    assert storage.local_path(key).read_bytes() == data
    assert storage.refresh(object_key("2" * 64)) is False


def test_delete_if_unchanged_removes_the_object_listed(backend: Backend, tmp_path: Path) -> None:
    storage = backend.storage
    key, source, _ = _image(tmp_path, 10 * KiB)
    storage.put(key, source)
    storage.local_path(key)  # cached, for GCS
    listed = _listed(backend, key)

    assert storage.delete_if_unchanged(listed) is True

    assert not storage.exists(key)
    assert backend.stored() == []
    assert storage.delete_if_unchanged(listed) is False  # gone: another sweep's


def test_delete_if_unchanged_keeps_an_object_refreshed_since_listed(backend: Backend, tmp_path: Path) -> None:
    storage = backend.storage
    key, source, data = _image(tmp_path, 10 * KiB)
    storage.put(key, source)
    listed = _listed(backend, key)
    assert storage.refresh(key)

    assert storage.delete_if_unchanged(listed) is False

    assert storage.local_path(key).read_bytes() == data


def test_delete_if_unchanged_keeps_an_object_stored_again_since_listed(
    backend: Backend, tmp_path: Path
) -> None:
    storage = backend.storage
    key, source, data = _image(tmp_path, 10 * KiB)
    storage.put(key, source)
    listed = _listed(backend, key)
    storage.delete(key)
    storage.put(key, source)

    assert storage.delete_if_unchanged(listed) is False

    assert storage.local_path(key).read_bytes() == data


def test_a_refresh_racing_a_delete_never_loses_a_refreshed_object(backend: Backend, tmp_path: Path) -> None:
    # Whichever comes first wins, and the outcome always says which: an object
    # refreshed is never removed, and a refresh after the delete says so.
    storage = backend.storage
    key, source, _ = _image(tmp_path, 1 * KiB)
    rounds = 150 if backend.emulator is None else 30

    def refresh(barrier: threading.Barrier) -> bool:
        barrier.wait()
        return storage.refresh(key)

    def delete(barrier: threading.Barrier, listed: StoredObject) -> bool:
        barrier.wait()
        return storage.delete_if_unchanged(listed)

    with ThreadPoolExecutor(2) as pool:
        for _ in range(rounds):
            storage.put(key, source)
            barrier = threading.Barrier(2)
            refreshed = pool.submit(refresh, barrier)
            deleted = pool.submit(delete, barrier, _listed(backend, key))
            outcome = (refreshed.result(), deleted.result())
            assert outcome in {(True, False), (False, True)}
            assert storage.exists(key) is outcome[0]


def test_the_listing_holds_no_temp_or_lock_files(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    storage = LocalStorage(root)
    key, source, _ = _image(tmp_path, 1 * KiB)
    storage.put(key, source)
    storage.refresh(key)
    (root / ".tmp" / "crashed.part").write_bytes(b"half")
    (root / "firmware" / "sha256" / ".hidden").write_bytes(b"x")
    assert (root / local_module.LOCK_NAME).exists()
    assert [obj.key for obj in storage.list_objects("")] == [key]


def test_gcs_delete_if_unchanged_is_conditional_at_gcs(gcs_emulator: GCSEmulator, tmp_path: Path) -> None:
    # The check and the delete are one request: GCS itself refuses a changed object.
    storage = GCSStorage(gcs_emulator.bucket, "otaship", tmp_path / "cache")
    key, source, _ = _image(tmp_path, 10 * KiB)
    storage.put(key, source)
    (listed,) = storage.list_objects(FIRMWARE_PREFIX)
    generation, metageneration = listed.version.split(":")
    storage.refresh(key)

    assert storage.delete_if_unchanged(listed) is False

    deletes = [path for method, path in gcs_emulator.requests if method == "DELETE"]
    assert len(deletes) == 1
    assert f"ifGenerationMatch={generation}" in deletes[0]
    assert f"ifMetagenerationMatch={metageneration}" in deletes[0]
    storage.close()


# -- local ---------------------------------------------------------------------


def test_local_creates_root_on_first_use(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "objects"
    key, source, data = _image(tmp_path, 1 * KiB)
    LocalStorage(root).put(key, source)
    assert (root / key).read_bytes() == data


def test_local_disk_full_is_a_storage_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "objects"
    storage = LocalStorage(root)
    key, source, _ = _image(tmp_path, 2 * MiB)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="No space left on device"):
        storage.put(key, source)
    assert _files_under(root) == []


def test_local_check_root_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    root.write_text("not a directory")
    with pytest.raises(StorageError, match="not a directory"):
        LocalStorage(root).check()


def test_local_check_root_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A read-only mount; chmod would not do, tests may run as root.
    def read_only(*args: Any, **kwargs: Any) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(StorageError, match="not writable: Read-only file system"):
        LocalStorage(tmp_path / "objects").check()


# -- GCS: the cache -------------------------------------------------------------


def _media_gets(emulator: GCSEmulator) -> int:
    return emulator.count("GET", "alt=media")


def test_gcs_put_and_cache_miss_are_one_request_each(gcs_emulator: GCSEmulator, tmp_path: Path) -> None:
    storage = GCSStorage(gcs_emulator.bucket, "", tmp_path / "cache")
    key, source, _ = _image(tmp_path, 10 * KiB)
    storage.put(key, source)
    storage.local_path(key)
    # The emulator answers one request at a time: once a request of ours, sent
    # after the library's, is answered, every request the library sent is seen.
    assert httpx.get(f"{gcs_emulator.url}/sentinel").status_code == 501  # a path the emulator lacks
    methods = [method for method, path in gcs_emulator.requests if path != "/sentinel"]
    assert methods == ["POST", "GET"], gcs_emulator.requests
    assert _media_gets(gcs_emulator) == 1
    assert gcs_emulator.object_names() == [key]


def test_gcs_cache_hit_does_not_read_gcs_again(gcs_emulator: GCSEmulator, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    storage = GCSStorage(gcs_emulator.bucket, "otaship", cache)
    key, source, data = _image(tmp_path, 100 * KiB)
    storage.put(key, source)
    first = storage.local_path(key)
    assert _media_gets(gcs_emulator) == 1

    gcs_emulator.stop()  # any GCS call from here on would fail
    assert storage.local_path(key) == first
    assert first.read_bytes() == data
    # A restarted replica finds the completed download on disk.
    restarted = GCSStorage(gcs_emulator.bucket, "otaship", cache)
    assert restarted.local_path(key).read_bytes() == data
    assert _media_gets(gcs_emulator) == 1


def test_gcs_concurrent_callers_share_one_download(gcs_emulator: GCSEmulator, tmp_path: Path) -> None:
    storage = GCSStorage(gcs_emulator.bucket, "otaship", tmp_path / "cache")
    key, source, data = _image(tmp_path, 1 * MiB)
    storage.put(key, source)
    gcs_emulator.delay = 0.3  # the download is still running when the others ask
    start = threading.Barrier(8)

    def device() -> Path:
        start.wait()
        return storage.local_path(key)

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: device(), range(8)))

    assert len(set(paths)) == 1
    assert paths[0].read_bytes() == data
    assert _media_gets(gcs_emulator) == 1


def _cached(storage: GCSStorage) -> list[Path]:
    return [p for p in storage.cache_dir.iterdir() if not p.name.startswith(".")]


def test_gcs_evicts_least_recently_used(gcs_emulator: GCSEmulator, tmp_path: Path) -> None:
    size = 100 * KiB
    storage = GCSStorage(
        gcs_emulator.bucket,
        "otaship",
        tmp_path / "cache",
        cache_bytes=int(2.5 * size),
        evict_grace=0,
    )
    keys = []
    for name in "abc":
        key, source, _ = _image(tmp_path, size, name)
        storage.put(key, source)
        keys.append(key)
    a, b, c = keys

    path_a = storage.local_path(a)
    path_b = storage.local_path(b)
    storage.local_path(a)  # a is now more recent than b
    path_c = storage.local_path(c)

    assert sorted(_cached(storage)) == sorted([path_a, path_c])
    assert sum(p.stat().st_size for p in _cached(storage)) <= storage.cache_bytes
    assert not path_b.exists()
    storage.local_path(b)  # evicted, so read again
    assert _media_gets(gcs_emulator) == 4


def test_gcs_keeps_files_just_handed_out(gcs_emulator: GCSEmulator, tmp_path: Path) -> None:
    # Within the grace window a file may not be open yet: the cache runs over its
    # limit rather than pull it from under the caller.
    size = 100 * KiB
    storage = GCSStorage(gcs_emulator.bucket, "otaship", tmp_path / "cache", cache_bytes=size, evict_grace=60)
    paths = []
    for name in "ab":
        key, source, _ = _image(tmp_path, size, name)
        storage.put(key, source)
        paths.append(storage.local_path(key))
    assert all(p.exists() for p in paths)


def test_gcs_large_object_goes_through_a_resumable_upload(
    gcs_emulator: GCSEmulator, tmp_path: Path, failing_source: Callable[[Path, int], None]
) -> None:
    storage = GCSStorage(gcs_emulator.bucket, "otaship", tmp_path / "cache")
    key, source, data = _image(tmp_path, 9 * MiB, "big.bin")
    storage.put(key, source)
    assert gcs_emulator.count("POST", "uploadType=resumable") == 1
    assert storage.local_path(key).read_bytes() == data

    # The first 8 MiB chunk reaches GCS, then the source fails: nothing is visible.
    key2, source2, _ = _image(tmp_path, 9 * MiB, "big2.bin")
    failing_source(source2, int(8.5 * MiB))
    with pytest.raises(OSError):
        storage.put(key2, source2)
    assert not storage.exists(key2)
    assert gcs_emulator.object_names() == [f"otaship/{key}"]


def test_gcs_existing_object_is_a_successful_put(
    gcs_emulator: GCSEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real GCS answers 412 to if_generation_match=0 when the key exists; the
    # emulator ignores preconditions, so the answer is simulated.
    from google.cloud.storage import Blob

    def exists_already(*args: Any, **kwargs: Any) -> None:
        assert kwargs["if_generation_match"] == 0
        raise api_exceptions.PreconditionFailed("conditionNotMet")  # type: ignore[no-untyped-call]

    monkeypatch.setattr(Blob, "upload_from_filename", exists_already)
    key, source, _ = _image(tmp_path, 1 * KiB)
    GCSStorage(gcs_emulator.bucket, "otaship", tmp_path / "cache").put(key, source)


def test_gcs_check_missing_bucket(gcs_emulator: GCSEmulator, tmp_path: Path) -> None:
    storage = GCSStorage("no-such-bucket", "", tmp_path / "cache")
    with pytest.raises(StorageError, match=r"no-such-bucket.*does not exist"):
        storage.check()


# -- GCS: outages ---------------------------------------------------------------


def _storage_errors(
    calls: dict[str, Callable[[], object]],
) -> dict[str, tuple[StorageError, float]]:
    """Run the calls at once, as a burst of requests would; each must fail with StorageError."""

    def timed(call: Callable[[], object]) -> tuple[StorageError, float]:
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            call()
        return info.value, time.monotonic() - started

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(timed, call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}


def test_gcs_outage_is_a_storage_error_within_seconds(gcs_emulator: GCSEmulator, tmp_path: Path) -> None:
    storage = GCSStorage(gcs_emulator.bucket, "otaship", tmp_path / "cache")
    key, source, data = _image(tmp_path, 10 * KiB)
    storage.put(key, source)
    (listed,) = storage.list_objects(FIRMWARE_PREFIX)
    new_key, new_source, _ = _image(tmp_path, 10 * KiB, "new.bin")
    gcs_emulator.stop()

    started = time.monotonic()
    results = _storage_errors(
        {
            "put": lambda: storage.put(new_key, new_source),
            "check": storage.check,
            "exists": lambda: storage.exists(key),
            "refresh": lambda: storage.refresh(key),
            "list_objects": lambda: storage.list_objects(FIRMWARE_PREFIX),
            "delete_if_unchanged": lambda: storage.delete_if_unchanged(listed),
            # Five devices want the uncached image: they share one failing download
            # instead of queueing for one retry deadline each.
            **{f"local_path{i}": (lambda: storage.local_path(key)) for i in range(5)},
        }
    )
    elapsed = time.monotonic() - started

    for name, (error, seconds) in results.items():
        assert type(error) is StorageError, name  # not ObjectNotFound, not a vendor error
        assert "cannot connect" in str(error)
        assert not isinstance(error.__cause__, StorageError)
        assert seconds < 8, (name, seconds)
    assert elapsed < 8
    assert _files_under(storage.cache_dir) == []

    gcs_emulator.start()  # recovery needs nothing but the endpoint back
    assert storage.local_path(key).read_bytes() == data


@pytest.fixture
def hung_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An endpoint that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{listener.getsockname()[1]}")
    yield
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_gcs_hung_endpoint_times_out(hung_endpoint: None, tmp_path: Path) -> None:
    # The timeouts reach every call; with the library's defaults this would hang 60 s.
    storage = GCSStorage("otaship-test", "otaship", tmp_path / "cache", read_timeout=0.5, retry_deadline=1.0)
    key, source, _ = _image(tmp_path, 10 * KiB)
    results = _storage_errors(
        {
            "put": lambda: storage.put(key, source),
            "check": storage.check,
            "local_path": lambda: storage.local_path(key),
        }
    )
    for name, (error, seconds) in results.items():
        assert "timed out" in str(error), name
        assert seconds < 4, (name, seconds)
    storage.close()
