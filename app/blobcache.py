"""A machine's local copies of stored blobs: size-bounded, least recently used evicted first.

Keys name immutable content (datasets by SHA-256, models by job and attempt), so a copy never goes
stale: a worker fetches a sweep's dataset once and every later job of the sweep on that machine
reads it from local disk. Several processes (a worker's pool, the API's processes) share one cache
directory safely:

- a fetch writes a temporary file and renames it into place, so a reader sees a whole blob or none;
- a per-key file lock makes two processes wanting the same missing blob fetch it once: the second
  waits for the first and then finds the blob there. It waits only while the first one's download
  makes progress: a fetch whose temporary file has not grown for ``stall_seconds`` (a store that
  hangs) makes the waiters give up with :class:`CacheBusy`;
- at most ``max_fetchers`` threads of a process fetch or wait for a fetch at once; the next one
  waits ``slot_wait_seconds`` for a place and then gives up with :class:`CacheBusy`, so a store that
  hangs holds a few of a server's threads, never all of them;
- using a blob sets its modification time, the LRU order that eviction follows. Eviction never
  deletes a blob used (handed out or fetched) within the last ``grace_seconds``: a caller opens the
  path it was handed after get() returned, maybe twice (a schema, then the table), and another
  process's eviction must not pull it away in between. The bound ``max_bytes`` may therefore be
  exceeded for a while by blobs in use; they go once they have been idle for ``grace_seconds``. A
  blob evicted while a reader has it open stays readable to that reader (POSIX keeps an unlinked
  file's data while it is open);
- the cache directory may be deleted under a running process: its folders are made again before
  each fetch.

What is verified: each copy has a sidecar (``meta/<key>.json``) with its size and SHA-256, taken
when it was fetched (checked against the size the store announced) or adopted. Every get() checks
the copy's size (a truncated copy is fetched again); the first get() of a copy in each process
reads it whole and checks its SHA-256 (flipped bytes are fetched again); a copy without a sidecar
is fetched again. What is not: bytes that change after a process checked a copy (only the size is
checked again; :meth:`BlobCache.get_verified` fetches once more when reading the copy fails), and the
copy against the store's ETag (for multipart uploads and SSE-KMS an ETag is not the content's MD5;
comparing would cost a request to the store on every use).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

T = TypeVar("T")

GRACE_SECONDS = 60.0
STALL_SECONDS = 30.0
MAX_FETCHERS = 8
SLOT_WAIT_SECONDS = 5.0
HASH_CHUNK_BYTES = 1024 * 1024
# Errors that reading a damaged copy raises: Arrow's (ArrowInvalid is a ValueError, ArrowIOError an
# OSError), torch's (RuntimeError from its zip reader, UnpicklingError), numpy's (BadZipFile, ValueError).
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    RuntimeError,
    EOFError,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
)

# fetch(target) writes the blob to target; it may return what the store said of it: "size" (checked
# against what was written) and "e_tag" (kept in the sidecar, for information).
Fetch = Callable[[Path], Mapping[str, Any] | None]


class CacheBusy(Exception):
    """This process has too many fetches in flight, or another one's fetch of the key stalled."""


class IncompleteFetch(OSError):
    """A fetch wrote fewer or more bytes than the store said the blob has."""


class BlobCache:
    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        grace_seconds: float = GRACE_SECONDS,
        stall_seconds: float = STALL_SECONDS,
        max_fetchers: int = MAX_FETCHERS,
        slot_wait_seconds: float = SLOT_WAIT_SECONDS,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.grace_seconds = grace_seconds
        self.stall_seconds = stall_seconds
        self.slot_wait_seconds = slot_wait_seconds
        self.blobs = root / "blobs"
        self.meta = root / "meta"
        self._locks = root / "locks"
        self._tmp = root / "tmp"
        self._make_folders()
        self._remove_stale_fetches()
        self._slots = threading.BoundedSemaphore(max_fetchers)
        # Copies this process has read whole and found to match their sidecar: path → (dev, inode, size).
        self._verified: dict[Path, tuple[int, int, int]] = {}
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        path = (self.blobs / key).resolve()
        if self.blobs.resolve() not in path.parents:
            raise ValueError(f"cache key escapes the cache: {key!r}")
        return path

    def _meta_path(self, key: str) -> Path:
        return self.meta / f"{key}.json"

    # -- reading ----------------------------------------------------------------------------------
    def get(self, key: str, fetch: Fetch) -> Path:
        """The local copy of ``key``; on a miss ``fetch(target)`` writes the blob's content to ``target``.

        Raises :class:`CacheBusy` when too many fetches are in flight in this process, or when another
        fetch of ``key`` holds its lock without progress for ``stall_seconds``.
        """
        path = self.path_for(key)
        if self._usable(key, path):
            self.hits += 1
            return path
        # The key's lock first, a store slot only for the thread that downloads: threads waiting for a
        # fetch in progress hold no slot (20 waiters for one slow download took all 8 and got 503s).
        with self._key_lock(key):
            if self._usable(key, path):  # another thread or process fetched it while we waited
                self.hits += 1
                return path
            with self.store_slot(key):
                self._drop(key, path)  # a damaged copy, or one without a sidecar
                self._fetch(key, path, fetch)
        self.misses += 1
        self.evict(keep=path)
        return path

    def get_verified(
        self,
        key: str,
        fetch: Fetch,
        reader: Callable[[Path], T],
        read_errors: tuple[type[BaseException], ...] = READ_ERRORS,
    ) -> T:
        """``reader(path)`` of the local copy of ``key``. When reading fails with one of ``read_errors``
        and the copy no longer matches the SHA-256 it was downloaded with (damaged since this process
        checked it), it is dropped and fetched once more; a copy that still matches is what the store
        holds, so the error is the reader's answer and is raised (an NPZ of object arrays was
        downloaded again on every request). A copy gone before the reader opens it is fetched again."""
        path = self.get(key, fetch)
        identity = _identity(path)
        try:
            return reader(path)
        except FileNotFoundError:
            log.warning("blob cache: the copy of %s went away before it was read; fetching it again", key)
        except read_errors as exc:
            if self._intact(key, path):
                raise
            log.warning("blob cache: reading the copy of %s failed (%s) and it is damaged; fetching it again", key, exc)
            self._drop_if(key, path, identity)
        return reader(self.get(key, fetch))

    def _intact(self, key: str, path: Path) -> bool:
        """The copy matches the size and SHA-256 its sidecar recorded (False when unsure)."""
        meta = self._read_meta(key)
        if meta is None or not meta.get("sha256"):
            return False
        try:
            return path.stat().st_size == meta.get("size") and _sha256(path) == meta["sha256"]
        except FileNotFoundError:
            return False

    def adopt(self, key: str, source: Path) -> None:
        """Keep the local file ``source`` (just written to the store under ``key``) as its copy."""
        path = self.path_for(key)
        try:
            with self._key_lock(key, give_up_seconds=0.0):
                size = source.stat().st_size
                self._write_meta(key, {"size": size, "sha256": None})  # hashed by its first reader
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, path)
        except (OSError, CacheBusy):  # another filesystem, or being fetched: the next reader fetches it
            source.unlink(missing_ok=True)
            return
        self.evict(keep=path)

    def discard(self, key: str) -> None:
        path = self.path_for(key)
        path.unlink(missing_ok=True)
        self._verified.pop(path, None)
        self._meta_path(key).unlink(missing_ok=True)

    def evict(self, keep: Path | None = None) -> int:
        """Delete least recently used blobs until the cache fits ``max_bytes``; returns how many.

        Blobs used within the last ``grace_seconds`` are kept even when that leaves the cache over
        its bound (a reader may be about to open them)."""
        entries = []
        total = 0
        blobs = self.blobs.resolve()
        for path in blobs.rglob("*"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path.is_file():
                entries.append((stat.st_mtime, stat.st_size, path))
                total += stat.st_size
        removed = 0
        recent = time.time() - self.grace_seconds
        for mtime, size, path in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if path == keep or mtime >= recent:
                continue
            try:  # used since it was listed?
                if path.stat().st_mtime >= recent:
                    continue
            except FileNotFoundError:
                total -= size
                continue
            path.unlink(missing_ok=True)
            self._verified.pop(path, None)
            with contextlib.suppress(ValueError):
                self.meta.joinpath(f"{path.relative_to(blobs)}.json").unlink(missing_ok=True)
            total -= size
            removed += 1
        if removed:
            log.info("blob cache: evicted %d blob(s) to stay under %d bytes", removed, self.max_bytes)
        if total > self.max_bytes:
            log.debug("blob cache: %d bytes, over its bound of %d with blobs in use", total, self.max_bytes)
        return removed

    # -- internals --------------------------------------------------------------------------------
    def _make_folders(self) -> None:
        for directory in (self.blobs, self.meta, self._locks, self._tmp):
            directory.mkdir(parents=True, exist_ok=True)

    def _usable(self, key: str, path: Path) -> bool:
        """The copy is there and matches its sidecar (size always; content once per process); touched."""
        meta = self._read_meta(key)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        if meta is None:
            return False
        if stat.st_size != meta.get("size"):
            log.warning(
                "blob cache: the copy of %s has %d bytes, not %s; fetching it again",
                key,
                stat.st_size,
                meta.get("size"),
            )
            return False
        identity = (stat.st_dev, stat.st_ino, stat.st_size)
        if self._verified.get(path) != identity:
            try:
                digest = _sha256(path)
            except FileNotFoundError:
                return False
            expected = meta.get("sha256")
            if expected is None:  # adopted: trusted on first use
                meta["sha256"] = digest
                with contextlib.suppress(OSError):
                    self._write_meta(key, meta)
            elif digest != expected:
                log.warning("blob cache: the copy of %s does not match its SHA-256; fetching it again", key)
                return False
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[path] = identity
        return self._touch(path)

    def _fetch(self, key: str, path: Path, fetch: Fetch) -> None:
        self._make_folders()  # the cache directory may have been deleted under us
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix=f"{_key_hash(key)}.", suffix=".fetch")
        os.close(fd)
        tmp = Path(name)
        try:
            answer = fetch(tmp)
            said = answer if isinstance(answer, Mapping) else {}
            size = tmp.stat().st_size
            if "size" in said and said["size"] is not None and int(said["size"]) != size:
                raise IncompleteFetch(f"fetched {size} bytes of {key!r}; the store said {said['size']}")
            digest = _sha256(tmp)
            self._write_meta(key, {"size": size, "sha256": digest, "e_tag": said.get("e_tag")})
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
            stat = path.stat()
            self._verified[path] = (stat.st_dev, stat.st_ino, stat.st_size)
        finally:
            tmp.unlink(missing_ok=True)

    def _drop(self, key: str, path: Path) -> None:
        """Remove the copy (under the key's lock: nobody fetches it now)."""
        path.unlink(missing_ok=True)
        self._verified.pop(path, None)

    def _drop_if(self, key: str, path: Path, identity: tuple[int, int] | None) -> None:
        """Remove the copy if it is still the file that was read (not one fetched since)."""
        try:
            with self._key_lock(key):
                if identity is not None and _identity(path) == identity:
                    self._drop(key, path)
        except (FileNotFoundError, CacheBusy):
            pass

    def _read_meta(self, key: str) -> dict[str, Any] | None:
        try:
            meta = json.loads(self._meta_path(key).read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def _write_meta(self, key: str, meta: Mapping[str, Any]) -> None:
        target = self._meta_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".meta")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(dict(meta), f)
            os.replace(name, target)
        finally:
            Path(name).unlink(missing_ok=True)

    @contextlib.contextmanager
    def store_slot(self, key: str) -> Iterator[None]:
        """One of this process's ``max_fetchers`` places for a thread that waits on the store (a fetch,
        or another request the caller bounds with it); CacheBusy after ``slot_wait_seconds`` without one."""
        if not self._slots.acquire(timeout=self.slot_wait_seconds):
            raise CacheBusy(f"too many fetches from the store in flight; {key!r} was not fetched")
        try:
            yield
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def _key_lock(self, key: str, give_up_seconds: float | None = None) -> Iterator[None]:
        """The key's file lock; waits while the holder's fetch makes progress, at most
        ``give_up_seconds`` (default ``stall_seconds``) without any."""
        give_up = self.stall_seconds if give_up_seconds is None else give_up_seconds
        self._locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self._locks / f"{_key_hash(key)}.lock")
        progress = self._progress(key)
        since = time.monotonic()
        while True:
            try:
                lock.acquire(timeout=min(0.5, give_up))
                break
            except Timeout:
                now = self._progress(key)
                if now != progress:
                    progress, since = now, time.monotonic()
                elif time.monotonic() - since >= give_up:
                    raise CacheBusy(
                        f"the fetch of {key!r} by another thread or process made no progress for {give_up:.0f} s"
                    ) from None
        try:
            yield
        finally:
            lock.release()

    def _progress(self, key: str) -> frozenset[tuple[str, int]]:
        """The temporary files of fetches of ``key`` in flight and their sizes."""
        prefix = f"{_key_hash(key)}."
        found = set()
        try:
            for entry in os.scandir(self._tmp):
                if entry.name.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        found.add((entry.name, entry.stat().st_size))
        except FileNotFoundError:
            pass
        return frozenset(found)

    def _remove_stale_fetches(self, max_age_seconds: float = 3600.0) -> None:
        """Temporary files of fetches a crashed process left behind (a live fetch writes continuously)."""
        cutoff = time.time() - max_age_seconds
        for path in self._tmp.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                continue

    @staticmethod
    def _touch(path: Path) -> bool:
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        return True


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
