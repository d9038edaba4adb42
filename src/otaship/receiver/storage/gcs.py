"""Firmware objects in Google Cloud Storage, served from a bounded local cache.

Devices download through the receiver (their HTTP client does not follow
redirects), so every download would be a GCS read without a cache. Keys are
content-addressed and immutable, so a cached file never goes stale: a burst of
devices costs one GCS read per image per replica.

Credentials are Application Default Credentials. When STORAGE_EMULATOR_HOST is set
the library itself points at the emulator and uses anonymous credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import NoReturn

import google.auth.exceptions
import requests
import urllib3.exceptions
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.cloud import storage as gcs
from google.cloud.storage import exceptions as gcs_exceptions
from google.cloud.storage.retry import DEFAULT_RETRY

from otaship.receiver.storage.base import ObjectNotFound, Storage, StorageError, StoredObject
from otaship.receiver.storage.durable import durable_write
from otaship.receiver.storage.local import validate_key

MiB = 1024 * 1024
DEFAULT_CACHE_BYTES = 512 * MiB

# The library defaults are a 60 s socket timeout and 120 s of retries: a GCS outage
# would hold every request for two minutes. These bound a refused or unreachable
# endpoint to about RETRY_DEADLINE and a hung one to about READ_TIMEOUT, so the
# receiver answers 500 within seconds. The read timeout is per socket read, not per
# transfer, so a large image on a slow but live link still completes.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
RETRY_DEADLINE = 5.0

# Above 8 MiB the library switches to a resumable upload; without a chunk size it
# reads 100 MiB chunks into memory. 8 MiB is a multiple of the required 256 KiB.
_UPLOAD_CHUNK_BYTES = 8 * MiB
# A file handed out by local_path within this window is never evicted: the caller
# opens it a moment after we return it, and only an *open* file survives unlink.
EVICT_GRACE_SECONDS = 10.0
_TMP_PREFIX = ".tmp-"
# Custom metadata that `refresh` sets; its value is only there to be new.
_REFRESHED_METADATA = "otaship-refreshed"
_STALE_TMP_SECONDS = 3600.0
# google-cloud-storage 3.x starts a background thread per bucket that calls
# buckets.get (with the default 120 s retry) to decorate telemetry spans, and
# another on every 404. That is an extra GCS read, needs storage.buckets.get, and
# keeps retrying through an outage. This is the library's own switch for it.
_DISABLE_BUCKET_METADATA_ENV = "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"

# Everything the client stack raises for a failed call. Anything else (a bug, a
# source file that cannot be read) propagates unchanged.
_VENDOR_ERRORS: tuple[type[BaseException], ...] = (
    api_exceptions.GoogleAPIError,  # HTTP errors, and RetryError once the deadline passes
    google.auth.exceptions.GoogleAuthError,  # no ADC, token refresh failed
    requests.RequestException,  # connection refused, DNS, timeouts
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    gcs_exceptions.InvalidResponse,
    gcs_exceptions.DataCorruption,  # checksum mismatch
)


def _reason(exc: BaseException) -> str:
    """A short cause for a client-facing message; the full chain stays in __cause__."""
    if isinstance(exc, api_exceptions.RetryError) and exc.cause is not None:
        return f"{_reason(exc.cause)} (gave up retrying)"
    if isinstance(exc, google.auth.exceptions.TransportError) and exc.args:
        inner = exc.args[0]
        if isinstance(inner, BaseException):
            return _reason(inner)
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"HTTP {exc.code}: {exc.message[:160]}"
    if isinstance(exc, google.auth.exceptions.DefaultCredentialsError):
        return "no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS or attach a service account"
    if isinstance(exc, google.auth.exceptions.GoogleAuthError):
        return "could not obtain Google credentials"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect"
    if isinstance(exc, gcs_exceptions.DataCorruption):
        return "checksum mismatch"
    return type(exc).__name__


def _modified(blob: gcs.Blob) -> float:
    """When the object was stored or last refreshed; GCS always says, but an
    object whose time is unknown must look young, never old enough to remove."""
    when = blob.updated or blob.time_created
    return when.timestamp() if when is not None else float("inf")


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"cannot write the download cache: {exc.strerror}") from exc


def _raise_storage_error(action: str, exc: BaseException) -> NoReturn:
    raise StorageError(f"Cloud Storage {action} failed: {_reason(exc)}") from exc


class GCSStorage(Storage):
    """Objects at `gs://<bucket>/<prefix>/<key>`, read through a local LRU cache."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        cache_dir: Path,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        retry_deadline: float = RETRY_DEADLINE,
        evict_grace: float = EVICT_GRACE_SECONDS,
    ) -> None:
        if not bucket:
            raise ValueError("a GCS storage URL needs a bucket: gs://<bucket>[/<prefix>]")
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.cache_dir = Path(cache_dir)
        self.cache_bytes = cache_bytes
        self.evict_grace = evict_grace
        self._timeout = (connect_timeout, read_timeout)
        # Retries stop once the next back-off would pass the deadline. Connection
        # errors, 429 and 5xx are retried; other 4xx are not.
        self._retry: Retry = DEFAULT_RETRY.with_delay(initial=0.25, maximum=2.0, multiplier=2.0).with_timeout(
            retry_deadline
        )
        self._client_lock = threading.Lock()
        self._client: gcs.Client | None = None
        self._bucket: gcs.Bucket | None = None
        # One download per key at a time; concurrent callers wait on its Future and
        # share its outcome. Sharing the failure matters as much as the success:
        # with a plain lock, a burst during an outage would retry one after another.
        self._inflight_lock = threading.Lock()
        self._inflight: dict[str, Future[Path]] = {}
        self._evict_lock = threading.Lock()

    # -- client ---------------------------------------------------------------

    def _gcs_bucket(self) -> gcs.Bucket:
        # Built lazily so that create_storage never blocks on credential discovery
        # (which probes the metadata server off GCP); the first call pays for it.
        with self._client_lock:
            if self._bucket is None:
                os.environ.setdefault(_DISABLE_BUCKET_METADATA_ENV, "true")
                try:
                    # project=None: no project discovery; object calls do not need one.
                    self._client = gcs.Client(project=None)
                except google.auth.exceptions.GoogleAuthError as exc:
                    _raise_storage_error("client setup", exc)
                self._bucket = self._client.bucket(self.bucket_name)
            return self._bucket

    def _object_name(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- Storage --------------------------------------------------------------

    def put(self, key: str, source: Path) -> None:
        name = self._object_name(key)
        blob = self._gcs_bucket().blob(name, chunk_size=_UPLOAD_CHUNK_BYTES)
        try:
            # One request up to 8 MiB, a resumable session above; either way the
            # object appears only once GCS has all of it and has checked the
            # checksum. if_generation_match=0 makes the upload idempotent, which is
            # what lets the library retry it.
            blob.upload_from_filename(
                str(source),
                content_type="application/octet-stream",
                if_generation_match=0,
                checksum="auto",
                timeout=self._timeout,
                retry=self._retry,
            )
        except api_exceptions.PreconditionFailed:
            return  # already stored, and a key names its bytes
        except _VENDOR_ERRORS as exc:
            _raise_storage_error("upload", exc)

    def exists(self, key: str) -> bool:
        name = self._object_name(key)
        try:
            return bool(self._gcs_bucket().blob(name).exists(timeout=self._timeout, retry=self._retry))
        except _VENDOR_ERRORS as exc:
            _raise_storage_error("lookup", exc)

    def local_path(self, key: str) -> Path:
        name = self._object_name(key)
        path = self._cache_path(name)
        if self._touch(path):
            return path
        with self._inflight_lock:
            future = self._inflight.get(name)
            owner = future is None
            if future is None:
                future = self._inflight[name] = Future()
        if not owner:
            return future.result()
        try:
            # Checked again: another caller may have finished between our miss and
            # taking the lock.
            if not self._touch(path):
                self._download(name, path)
                self._evict(keep=path)
            future.set_result(path)
            return path
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._inflight_lock:
                del self._inflight[name]

    def delete(self, key: str) -> None:
        name = self._object_name(key)
        try:
            self._gcs_bucket().blob(name).delete(timeout=self._timeout, retry=self._retry)
        except api_exceptions.NotFound:
            pass
        except _VENDOR_ERRORS as exc:
            _raise_storage_error("delete", exc)
        # Other replicas keep their cached copy until it is evicted; that is
        # harmless, a deleted key is one no record points to any more.
        with contextlib.suppress(FileNotFoundError):
            self._cache_path(name).unlink()

    def refresh(self, key: str) -> bool:
        name = self._object_name(key)
        blob = self._gcs_bucket().blob(name)
        # A metadata change is what gives an object a new `updated` time and
        # metageneration without rewriting its bytes.
        blob.metadata = {_REFRESHED_METADATA: str(time.time_ns())}
        try:
            blob.patch(timeout=self._timeout, retry=self._retry)
        except api_exceptions.NotFound:
            return False
        except _VENDOR_ERRORS as exc:
            _raise_storage_error("refresh", exc)
        return True

    def list_objects(self, prefix: str) -> list[StoredObject]:
        base = f"{self.prefix}/" if self.prefix else ""
        bucket = self._gcs_bucket()
        try:
            # Paged; every page is a request, so the errors come while iterating.
            return [
                StoredObject(
                    key=blob.name[len(base) :],
                    size=int(blob.size or 0),
                    modified=_modified(blob),
                    version=f"{blob.generation}:{blob.metageneration}",
                )
                for blob in bucket.client.list_blobs(
                    bucket, prefix=base + prefix, timeout=self._timeout, retry=self._retry
                )
            ]
        except _VENDOR_ERRORS as exc:
            _raise_storage_error("listing", exc)

    def delete_if_unchanged(self, stored: StoredObject) -> bool:
        name = self._object_name(stored.key)
        generation, _, metageneration = stored.version.partition(":")
        try:
            # The preconditions make GCS itself refuse the delete when the object
            # was stored again (new generation) or refreshed (new metageneration)
            # after the listing; they also make a retried delete safe.
            self._gcs_bucket().blob(name).delete(
                if_generation_match=int(generation),
                if_metageneration_match=int(metageneration),
                timeout=self._timeout,
                retry=self._retry,
            )
        except (api_exceptions.NotFound, api_exceptions.PreconditionFailed):
            return False
        except _VENDOR_ERRORS as exc:
            _raise_storage_error("delete", exc)
        with contextlib.suppress(FileNotFoundError):
            self._cache_path(name).unlink()
        return True

    def check(self) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.cache_dir, prefix=_TMP_PREFIX)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageError(f"cache directory {self.cache_dir} is not usable: {exc.strerror}") from exc
        bucket = self._gcs_bucket()
        try:
            # Listing one object needs only storage.objects.list, which a service
            # account with object-level roles has; buckets.get often is not granted.
            blobs = bucket.client.list_blobs(
                bucket,
                prefix=f"{self.prefix}/" if self.prefix else None,
                max_results=1,
                timeout=self._timeout,
                retry=self._retry,
            )
            list(blobs)
        except api_exceptions.NotFound as exc:
            raise StorageError(f"GCS bucket {self.bucket_name!r} does not exist") from exc
        except _VENDOR_ERRORS as exc:
            _raise_storage_error("check", exc)

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()  # closes the HTTP session and its pooled sockets
            self._client = None
            self._bucket = None

    # -- cache ----------------------------------------------------------------

    def _cache_path(self, name: str) -> Path:
        # Hashed so that any object name maps to one flat, safe file name. The bucket
        # is part of it so that two storages may share a cache directory.
        digest = hashlib.sha256(f"{self.bucket_name}/{name}".encode()).hexdigest()
        return self.cache_dir / f"{digest}.bin"

    @staticmethod
    def _touch(path: Path) -> bool:
        """Mark a cached file as just used; False when it is not cached.

        The LRU clock is the file's mtime, so it is shared by every process using
        this cache directory and survives a restart. An explicit timestamp, because
        the kernel's own is coarse (a few ms) and would tie recent uses.
        """
        now = time.time_ns()
        try:
            os.utime(path, ns=(now, now))
        except FileNotFoundError:
            return False
        return True

    def _download(self, name: str, path: Path) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot write the download cache: {exc.strerror}") from exc
        # A cached file is trusted after a restart, so it must be complete on disk
        # before it gets its final name.
        with durable_write(
            self.cache_dir,
            lambda tmp: _replace(tmp, path),
            what="write the download cache",
            prefix=_TMP_PREFIX,
        ) as file:
            try:
                # One GET; the library checks the bytes against the CRC32C or MD5
                # that GCS sends with them.
                self._gcs_bucket().blob(name).download_to_file(
                    file, checksum="auto", timeout=self._timeout, retry=self._retry
                )
            except api_exceptions.NotFound as exc:
                raise ObjectNotFound(f"no object {name}") from exc
            except _VENDOR_ERRORS as exc:
                _raise_storage_error("download", exc)
        self._touch(path)

    def _evict(self, keep: Path) -> None:
        """Delete least recently used files until the cache fits in cache_bytes.

        Eviction is safe for a download in progress: on POSIX an open file survives
        unlink and the device gets every byte. Files used within the grace window
        are kept even over the limit, so a path just handed out is still there when
        its caller opens it. A single object larger than the limit stays too: it
        must be served.
        """
        with self._evict_lock:
            now = time.time()
            entries: list[tuple[float, int, str]] = []
            with os.scandir(self.cache_dir) as it:
                for entry in it:
                    try:
                        stat = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # evicted by another process meanwhile
                    if entry.name.startswith(_TMP_PREFIX):
                        # Left by a crashed process; a live download is far younger.
                        if stat.st_mtime < now - _STALE_TMP_SECONDS:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(entry.path)
                        continue
                    entries.append((stat.st_mtime, stat.st_size, entry.path))
            total = sum(size for _, size, _ in entries)
            for mtime, size, file_path in sorted(entries):
                if total <= self.cache_bytes:
                    break
                if file_path == str(keep) or mtime > now - self.evict_grace:
                    continue
                try:
                    # Looked at again: a caller may have just been handed this file.
                    if os.stat(file_path).st_mtime > now - self.evict_grace:
                        continue
                    os.unlink(file_path)
                except FileNotFoundError:
                    pass  # another process evicted it
                total -= size
