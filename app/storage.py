"""File storage under one directory; keys are relative POSIX paths.

Writes go to a temporary file in the same directory tree and are renamed into place, so a crash
never leaves a half-written file under a real key.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from app.config import get_settings


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        resolved = (self.root / key).resolve()
        if self.root.resolve() not in resolved.parents:
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        return resolved

    def temp_path(self, suffix: str = "") -> Path:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", suffix=suffix)
        os.close(fd)
        return Path(name)

    def put_file(self, source: Path, key: str) -> None:
        """Move ``source`` (a file on the same filesystem, e.g. from :meth:`temp_path`) to ``key``."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)

    def remove_stale_temp_files(self, max_age_seconds: float) -> int:
        """Delete temp files a crashed process left behind (older than any upload in flight)."""
        cutoff = time.time() - max_age_seconds
        removed = 0
        for path in (self.root / "tmp").iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def get_storage() -> LocalStorage:
    return LocalStorage(get_settings().storage_root)
