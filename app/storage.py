"""Where datasets and models live: local files, or an S3-compatible object store.

``RNNLAB_STORAGE_URL`` picks the backend: ``file:///path`` (the default, ``$RNNLAB_HOME/storage``)
or ``s3://bucket/prefix`` (AWS S3, MinIO, any S3-compatible store; ``RNNLAB_S3_ENDPOINT_URL`` for
the latter). Keys are relative POSIX paths (``datasets/ab/abcd….parquet``, ``models/<job>-<n>.pt``),
and every blob under a key is immutable: datasets are content-addressed by their SHA-256, models
by job and attempt. So a blob fetched once can be kept: :meth:`Storage.local_path` hands readers
(the API's previews and predictions, a worker's training data) a local file, which for an object
store is a copy in the machine's :class:`~app.blobcache.BlobCache`.

Writes are all-or-nothing: a local write goes to a temporary file renamed into place; an object
store write is one PUT or a multipart upload that is completed only when every part arrived and is
aborted on any error, so no reader ever sees half a blob.

Errors: a key that is not there raises :class:`KeyNotFound` (a :class:`FileNotFoundError`); a
store that cannot be reached, refuses us, or has no such bucket raises :class:`StorageUnavailable`,
which the API answers with 503 ``storage_unavailable`` and the worker treats as a reason to retry the
job later. A local file that is missing (the cache directory deleted under us) stays a plain
FileNotFoundError: only the store's own answer means the blob is missing.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import urlparse

from app.blobcache import BlobCache, CacheBusy, IncompleteFetch
from app.config import Settings, get_settings
from app.errors import Unavailable

# Parts of a multipart upload: memory per upload in flight is PART_BYTES x (MAX_CONCURRENT_PARTS + 1).
# 5 MiB is S3's smallest part; 8 MiB parts with 4 in flight took a 256 MiB upload's server peak RSS
# past 256 MiB (bench/upload_memory.py --storage s3) and were no faster against one store.
PART_BYTES = 5 * 1024 * 1024
MAX_CONCURRENT_PARTS = 2
READ_CHUNK_BYTES = 1024 * 1024
# How long a store that answered a listing counts as having its bucket (see S3Storage._check_bucket).
BUCKET_CHECK_SECONDS = 60.0

log = logging.getLogger(__name__)

T = TypeVar("T")


class KeyNotFound(FileNotFoundError):
    """The store answered that it has no object under the key (the bucket is there)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no stored object under {key!r}")
        self.key = key


class StorageUnavailable(Unavailable):
    """The object store did not answer, or refused the request (network, credentials, bucket)."""

    def __init__(self, action: str, key: str, cause: BaseException) -> None:
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(
            "storage_unavailable",
            f"the storage (RNNLAB_STORAGE_URL) could not {action} {key!r}: {first_line[:300]}; "
            "nothing was stored; try again once the storage is reachable",
            {"key": key},
        )


class Storage(Protocol):
    """What the API and the workers need from a store."""

    url: str
    temp_dir: Path  # local scratch space of this machine (upload spools, conversions)

    def temp_path(self, suffix: str = "") -> Path: ...
    def put_file(self, source: Path, key: str) -> None: ...
    def start_put(self, source: Path, key: str, growing: GrowingSource) -> StreamedPut | None: ...
    def open_writer(self, key: str) -> Any: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def iter_bytes(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]: ...
    def local_path(self, key: str) -> Path: ...
    def read_local(self, key: str, reader: Callable[[Path], T]) -> T: ...
    def presigned_url(self, key: str, expires_seconds: int) -> str | None: ...
    def remove_stale_temp_files(self, max_age_seconds: float) -> int: ...


class GrowingSource(Protocol):
    """A file still being written, read as it grows: ``read`` waits for more bytes, returns an empty
    buffer once the writer finished and raises once it gave up; ``abort`` makes reads raise."""

    def read(self, size: int = -1, /) -> Any: ...
    def abort(self) -> None: ...


@functools.cache
def _host_tag() -> str:
    """``HOST.PIDNS``: where this process's PIDs mean something (a container has its own PID namespace,
    even with the host's network and name). Read once: a forked process keeps both."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-")[:64] or "host"
    try:
        namespace = "".join(c for c in os.readlink("/proc/self/ns/pid") if c.isdigit())
    except OSError:  # not Linux
        namespace = "0"
    return f"{host}.{namespace}"


def temp_owner() -> str:
    """The prefix of this process's temp names: ``~HOST.PIDNS~PID~``, so that a later cleanup on the
    same host and in the same PID namespace can tell a dead process's leftovers (a crash mid-upload)
    from files still being written."""
    return f"~{_host_tag()}~{os.getpid()}~"


def _new_temp_path(directory: Path, suffix: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, suffix=suffix, prefix=temp_owner())
    os.close(fd)
    return Path(name)


def _owner_is_gone(name: str) -> bool:
    """A temp name made by a process of this host that no longer runs. Names from other hosts (a
    volume several machines or containers mount) are never judged by PID: their PIDs mean nothing here."""
    _, host, pid, *_ = [*name.split("~", 3), "", "", ""]
    if not name.startswith("~") or host != _host_tag() or not pid.isdecimal():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (another user's): alive
        return False
    return False


def _remove_stale(directory: Path, max_age_seconds: float) -> int:
    """Delete temp files a crashed process left behind: any whose process (on this host) is gone, and
    any older than ``max_age_seconds`` (longer than any upload in flight)."""
    cutoff = time.time() - max_age_seconds
    removed = 0
    if not directory.exists():
        return 0
    for path in directory.iterdir():
        try:
            if _owner_is_gone(path.name) or path.stat().st_mtime < cutoff:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


class LocalStorage:
    """Blobs as files under one directory (one machine, or a volume every process mounts)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()
        self.temp_dir = root / "tmp"
        self.temp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        resolved = (self.root / key).resolve()
        if self.root.resolve() not in resolved.parents:
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        return resolved

    def temp_path(self, suffix: str = "") -> Path:
        return _new_temp_path(self.temp_dir, suffix)

    def put_file(self, source: Path, key: str) -> None:
        """Move ``source`` (a file on the same filesystem, e.g. from :meth:`temp_path`) to ``key``."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)

    def start_put(self, source: Path, key: str, growing: GrowingSource) -> StreamedPut | None:
        return None  # put_file is a rename: nothing to send ahead

    @contextmanager
    def open_writer(self, key: str) -> Iterator[IO[bytes]]:
        """A file to write ``key``'s content into; it appears under ``key`` only if the block ends cleanly."""
        tmp = self.temp_path(".part")
        try:
            with tmp.open("wb") as f:
                yield f
            self.put_file(tmp, key)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError as exc:
            raise KeyNotFound(key) from exc

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def iter_bytes(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        with self.path(key).open("rb") as f:
            while chunk := f.read(chunk_bytes):
                yield chunk

    def local_path(self, key: str) -> Path:
        path = self.path(key)
        if not path.exists():
            raise KeyNotFound(key)
        return path

    def read_local(self, key: str, reader: Callable[[Path], T]) -> T:
        """``reader`` of the stored file (KeyNotFound when there is none)."""
        path = self.local_path(key)
        try:
            return reader(path)
        except FileNotFoundError as exc:  # deleted since the check
            if not path.exists():
                raise KeyNotFound(key) from exc
            raise

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        return None  # files are served by the API itself

    def remove_stale_temp_files(self, max_age_seconds: float) -> int:
        return _remove_stale(self.temp_dir, max_age_seconds)


class S3Storage:
    """Blobs as objects in an S3-compatible bucket, through ``obstore`` (chosen by bench/storage.py).

    Credentials and region are read as the AWS SDKs read them from the environment
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``), with
    the instance or container role (IMDS, ECS, web identity) when those are unset.
    """

    def __init__(self, url: str, settings: Settings) -> None:
        from obstore.store import S3Store

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"RNNLAB_STORAGE_URL must look like s3://bucket/prefix, got {url!r}")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        config: dict[str, Any] = {}
        endpoint = settings.s3_endpoint_url
        if endpoint:
            config["endpoint"] = endpoint
            # MinIO and most self-hosted stores serve buckets as paths, not as subdomains.
            config["virtual_hosted_style_request"] = False
        if not os.environ.get("AWS_REGION"):  # the SDKs' older name too, then their default
            config["region"] = os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        client_options: dict[str, Any] = {
            "allow_http": endpoint.startswith("http://"),
            "connect_timeout": timedelta(seconds=settings.s3_connect_timeout_seconds),
            "timeout": timedelta(seconds=settings.s3_timeout_seconds),
        }
        retry = {
            "max_retries": settings.s3_max_retries,
            "retry_timeout": timedelta(seconds=settings.s3_retry_timeout_seconds),
        }
        self._store = S3Store(
            self.bucket,
            prefix=self.prefix or None,
            client_options=client_options,  # type: ignore[arg-type]
            retry_config=retry,  # type: ignore[arg-type]
            **config,
        )
        self.temp_dir = settings.home / "tmp"
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.cache = BlobCache(settings.cache_root, settings.cache_max_bytes)
        self._bucket_seen_at = -BUCKET_CHECK_SECONDS  # time.monotonic() of the last listing that worked

    # -- helpers --------------------------------------------------------------------------------
    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """A missing key becomes KeyNotFound; every other store error becomes StorageUnavailable.

        obstore raises its own error classes for most failures and a plain OSError for some (a part
        upload that failed, seen when the writer closes). It maps every 404 to FileNotFoundError, a
        missing bucket's too: a 404 on a write, or one whose body says NoSuchBucket, is the store's
        fault (StorageUnavailable). A HEAD's 404 has no body: :meth:`size` checks the bucket itself.
        Only obstore calls run inside: a FileNotFoundError here is the store's answer, never a local
        file's."""
        from obstore.exceptions import BaseError

        try:
            yield
        except FileNotFoundError as exc:
            if action == "write" or "NoSuchBucket" in str(exc):
                raise StorageUnavailable(action, key, exc) from exc
            raise KeyNotFound(key) from exc
        except (BaseError, OSError) as exc:
            raise StorageUnavailable(action, key, exc) from exc

    def _check_bucket(self, action: str, key: str) -> None:
        """Raise StorageUnavailable unless the bucket answers a listing (one request, at most once
        every BUCKET_CHECK_SECONDS)."""
        import obstore
        from obstore.exceptions import BaseError

        if time.monotonic() - self._bucket_seen_at < BUCKET_CHECK_SECONDS:
            return
        try:
            next(iter(obstore.list(self._store, prefix=key, chunk_size=1)), None)
        except (BaseError, OSError) as exc:
            raise StorageUnavailable(action, key, exc) from exc
        self._bucket_seen_at = time.monotonic()

    def check(self) -> str | None:
        """None when the bucket answers a listing, else the reason (for a readiness check)."""
        try:
            self._bucket_seen_at = -BUCKET_CHECK_SECONDS
            self._check_bucket("list", "~readiness-probe")
        except StorageUnavailable as exc:
            return f"storage unreachable: {exc.message}"
        return None

    def temp_path(self, suffix: str = "") -> Path:
        return _new_temp_path(self.temp_dir, suffix)

    # -- writing --------------------------------------------------------------------------------
    @contextmanager
    def open_writer(self, key: str) -> Iterator[_ObjectWriter]:
        """A writable file whose content becomes ``key``: one PUT when small, a multipart upload
        (parts of PART_BYTES, a few in flight) when large. An error inside the block aborts it."""
        import obstore

        with self._errors("write", key):
            writer = obstore.open_writer(self._store, key, buffer_size=PART_BYTES, max_concurrency=MAX_CONCURRENT_PARTS)
        try:
            yield _ObjectWriter(writer, self, key)
        except BaseException as exc:
            self._abort(writer, key, exc)
            raise
        try:
            with self._errors("write", key):
                writer.close()  # completes the upload: only now does the object exist
        except StorageUnavailable as exc:
            self._abort(writer, key, exc)
            raise

    def _abort(self, writer: Any, key: str, exc: BaseException) -> None:
        """Abort the multipart upload (no part stays behind); if the store cannot be reached for that,
        say so: the parts stay in the bucket until a lifecycle rule (AbortIncompleteMultipartUpload)
        removes them. obstore does not tell the upload's id; ListMultipartUploads on the key shows it."""
        try:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        except Exception as abort_error:
            log.warning(
                "the upload of %s (s3://%s/%s) failed (%s) and could not be aborted (%s): an incomplete "
                "multipart upload may stay in the bucket (upload id not known to obstore; list the "
                "bucket's multipart uploads for this key) until an AbortIncompleteMultipartUpload "
                "lifecycle rule removes it",
                key,
                self.bucket,
                f"{self.prefix}/{key}" if self.prefix else key,
                _first_line(exc),
                _first_line(abort_error),
            )

    def put_file(self, source: Path, key: str) -> None:
        """Upload the local file ``source`` to ``key`` (streamed, bounded memory).

        ``source`` then becomes this machine's cached copy of ``key`` (the API previews and checks
        a dataset right after its upload: no download for that).
        """
        import pyarrow as pa

        # Chunks are read into Arrow's memory pool: the writer keeps the parts in flight referenced
        # (up to PART_BYTES x (MAX_CONCURRENT_PARTS + 1)), and they need not sit on Python's heap.
        from app.datasets.early_conversion import conversion_memory_pool

        with self.open_writer(key) as out, pa.OSFile(str(source), "rb", memory_pool=conversion_memory_pool()) as f:
            while (chunk := f.read_buffer(READ_CHUNK_BYTES)).size:
                out.write(memoryview(chunk).cast("B"))
        self.cache.adopt(key, source)

    def start_put(self, source: Path, key: str, growing: GrowingSource) -> StreamedPut | None:
        """Start sending ``source`` to ``key`` while it is still being written (read through
        ``growing``); the object appears only on :meth:`StreamedPut.complete`."""
        return StreamedPut(self, source, key, growing)

    def delete(self, key: str) -> None:
        import obstore

        with (
            suppress(KeyNotFound),
            self._cache_errors(key, "delete"),
            self.cache.store_slot(key),
            self._errors("delete", key),
        ):
            obstore.delete(self._store, key)
        self.cache.discard(key)

    # -- reading --------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        import obstore

        try:
            with self._cache_errors(key), self.cache.store_slot(key), self._errors("read", key):
                size = int(obstore.head(self._store, key)["size"])
        except KeyNotFound:  # a missing bucket answers a HEAD with the same bodiless 404
            self._check_bucket("read", key)
            raise
        self._bucket_seen_at = time.monotonic()
        return size

    def iter_bytes(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        """The object's content in chunks (for streaming it to a client or into a file)."""
        import obstore

        with self._errors("read", key):
            result = obstore.get(self._store, key)
            for chunk in result.stream(min_chunk_size=chunk_bytes):
                yield bytes(chunk)

    def download(self, key: str, target: Path) -> dict[str, Any]:
        """Write the object to ``target``; returns its ``size`` and ``e_tag`` as the store announced them."""
        import obstore

        with target.open("wb") as f:  # a local error (disk full) is not the store's
            with self._errors("read", key):
                result = obstore.get(self._store, key)
                chunks = iter(result.stream(min_chunk_size=PART_BYTES))
            while True:
                with self._errors("read", key):
                    chunk = next(chunks, None)
                if chunk is None:
                    break
                f.write(chunk)
        return {"size": int(result.meta["size"]), "e_tag": result.meta.get("e_tag")}

    def local_path(self, key: str) -> Path:
        """A local copy of ``key`` from this machine's cache, fetched from the store on a miss."""
        with self._cache_errors(key):
            return self.cache.get(key, lambda target: self.download(key, target))

    def read_local(self, key: str, reader: Callable[[Path], T]) -> T:
        """``reader`` of a local copy of ``key``; a copy that fails to read (damaged on this machine's
        disk) or vanishes before it is read is fetched once more."""
        with self._cache_errors(key):
            return self.cache.get_verified(key, lambda target: self.download(key, target), reader)

    @contextmanager
    def _cache_errors(self, key: str, action: str = "read") -> Iterator[None]:
        """A busy cache (too many requests to the store in flight, or a stalled fetch) and a short
        download are the store's fault."""
        try:
            yield
        except (CacheBusy, IncompleteFetch) as exc:
            raise StorageUnavailable(action, key, exc) from exc

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        import obstore

        with self._errors("sign", key):
            return str(obstore.sign(self._store, "GET", key, timedelta(seconds=expires_seconds)))

    def remove_stale_temp_files(self, max_age_seconds: float) -> int:
        return _remove_stale(self.temp_dir, max_age_seconds)


class StreamedPut:
    """:meth:`S3Storage.put_file` of a file that is still being written, started early.

    A thread reads the file as it grows and sends it as a multipart upload of ``key``; once it has
    sent everything it waits for :meth:`complete` (the upload is completed: only now does the
    object exist, and the file becomes this machine's cached copy) or :meth:`abort` (the multipart
    upload is aborted: no object, no part left behind). An upload of a dataset's Parquet thus
    overlaps its encoding, and its row is still committed before the blob appears.

    A store error is kept and raised by :meth:`complete`, where put_file would have raised it.
    """

    def __init__(self, storage: S3Storage, source: Path, key: str, growing: GrowingSource) -> None:
        self.source = source
        self.key = key
        self._storage = storage
        self._growing = growing
        self._decided = threading.Event()
        self._commit = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="streamed-put", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._storage.open_writer(self.key) as out:
                while (chunk := self._growing.read(READ_CHUNK_BYTES)).size:
                    if self._decided.is_set() and not self._commit:
                        raise _PutAbandoned
                    out.write(memoryview(chunk).cast("B"))
                self._decided.wait()
                if not self._commit:
                    raise _PutAbandoned  # the writer aborts the multipart upload
        except _PutAbandoned:
            pass
        except BaseException as exc:  # the file was abandoned, or the store failed
            self._error = exc

    def complete(self) -> None:
        """Complete the upload once the whole file was sent; raises what went wrong (StorageUnavailable)."""
        self._commit = True
        self._decided.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        self._storage.cache.adopt(self.key, self.source)

    def abort(self) -> None:
        """Abandon the upload (a no-op once completed)."""
        if not self._decided.is_set():
            self._decided.set()
            self._growing.abort()
        self._thread.join()


class _PutAbandoned(Exception):
    pass


class _ObjectWriter:
    """The writer handed out by :meth:`S3Storage.open_writer`; store errors become StorageUnavailable."""

    def __init__(self, writer: Any, storage: S3Storage, key: str) -> None:
        self._writer = writer
        self._storage = storage
        self._key = key

    def write(self, data: Any) -> int:
        with self._storage._errors("write", self._key):
            return int(self._writer.write(data))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def storage_ready() -> str | None:
    """None when this process's store answers (always, for local files), else the reason: for a
    readiness check. On S3, one LIST request to the bucket."""
    storage = get_storage()
    return storage.check() if isinstance(storage, S3Storage) else None


def storage_from_settings(settings: Settings) -> Storage:
    url = settings.storage_url
    if url.startswith("s3://"):
        return S3Storage(url, settings)
    if url.startswith("file://"):
        return LocalStorage(Path(urlparse(url).path))
    raise ValueError(f"RNNLAB_STORAGE_URL must start with file:// or s3://, got {url!r}")


_current: tuple[Settings, Storage] | None = None


def get_storage() -> Storage:
    """This process's store (one client per settings object: its connection pool is reused)."""
    global _current
    settings = get_settings()
    if _current is None or _current[0] is not settings:
        _current = (settings, storage_from_settings(settings))
    return _current[1]
