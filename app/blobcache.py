"""A machine's local copies of stored blobs: size-bounded, least recently used evicted first.

Keys name immutable content (datasets by SHA-256, models by job and attempt), so a copy never goes
stale: a worker fetches a sweep's dataset once and every later job of the sweep on that machine
reads it from local disk. Several processes (a worker's pool, the API's processes) share one cache
directory safely:

- a fetch writes a temporary file and renames it into place, so a reader sees a whole blob or none;
- a per-key file lock makes two processes wanting the same missing blob fetch it once: the second
  waits for the first and then finds the blob there;
- using a blob sets its modification time, the LRU order that eviction follows; the blob just
  fetched is never evicted by its own fetch, and a blob evicted while a reader has it open stays
  readable to that reader (POSIX keeps an unlinked file's data while it is open).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)


class BlobCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.blobs = root / "blobs"
        self._locks = root / "locks"
        self._tmp = root / "tmp"
        for directory in (self.blobs, self._locks, self._tmp):
            directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_fetches()
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        path = (self.blobs / key).resolve()
        if self.blobs.resolve() not in path.parents:
            raise ValueError(f"cache key escapes the cache: {key!r}")
        return path

    def get(self, key: str, fetch: Callable[[Path], None]) -> Path:
        """The local copy of ``key``; on a miss ``fetch(target)`` writes the blob's content to ``target``."""
        path = self.path_for(key)
        if self._touch(path):
            self.hits += 1
            return path
        with FileLock(self._locks / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock"):
            if self._touch(path):  # another process fetched it while we waited
                self.hits += 1
                return path
            fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".fetch")
            os.close(fd)
            tmp = Path(name)
            try:
                fetch(tmp)
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        self.misses += 1
        self.evict(keep=path)
        return path

    def adopt(self, key: str, source: Path) -> None:
        """Keep the local file ``source`` (just written to the store under ``key``) as its copy."""
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, path)
        except OSError:  # another filesystem: the next reader fetches it instead
            source.unlink(missing_ok=True)
            return
        self.evict(keep=path)

    def discard(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    def evict(self, keep: Path | None = None) -> int:
        """Delete least recently used blobs until the cache fits ``max_bytes``; returns how many."""
        entries = []
        total = 0
        for path in self.blobs.rglob("*"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path.is_file():
                entries.append((stat.st_mtime, stat.st_size, path))
                total += stat.st_size
        removed = 0
        for _, size, path in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        if removed:
            log.info("blob cache: evicted %d blob(s) to stay under %d bytes", removed, self.max_bytes)
        return removed

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
