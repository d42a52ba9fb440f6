"""The worker's blob cache: LRU within its size bound, and one fetch when processes race for a blob."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from app.blobcache import BlobCache


def _writer(content: bytes):
    def fetch(target: Path) -> None:
        target.write_bytes(content)

    return fetch


def test_hits_reuse_the_copy_and_eviction_drops_the_least_recently_used(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=250)
    a = cache.get("datasets/aa/a.parquet", _writer(b"a" * 100))
    b = cache.get("datasets/bb/b.parquet", _writer(b"b" * 100))
    assert (cache.hits, cache.misses) == (0, 2)
    old = time.time() - 100
    os.utime(a, (old, old))
    os.utime(b, (old + 1, old + 1))
    # Using a makes it the most recent: b is now the least recently used.
    assert cache.get("datasets/aa/a.parquet", _writer(b"never called")) == a and cache.hits == 1
    c = cache.get("datasets/cc/c.parquet", _writer(b"c" * 100))
    assert a.exists() and c.exists() and not b.exists()
    assert a.read_bytes() == b"a" * 100
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_a_blob_larger_than_the_cache_is_still_handed_out(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10)
    path = cache.get("models/m.pt", _writer(b"m" * 100))
    assert path.read_bytes() == b"m" * 100


def test_a_failed_fetch_leaves_nothing(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=1000)

    def broken(target: Path) -> None:
        target.write_bytes(b"half")
        raise ConnectionError("store went away")

    with pytest.raises(ConnectionError):
        cache.get("datasets/aa/a.parquet", broken)
    assert not cache.path_for("datasets/aa/a.parquet").exists()
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def _fetch_in_process(root: str, log: str, start: float) -> None:
    cache = BlobCache(Path(root), max_bytes=10**9)

    def slow_fetch(target: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # both processes are inside get() by now
        target.write_bytes(b"x" * 1000)

    while time.time() < start:
        time.sleep(0.01)
    path = cache.get("datasets/ab/abc.parquet", slow_fetch)
    assert path.read_bytes() == b"x" * 1000


def test_two_processes_wanting_the_same_blob_fetch_it_once(tmp_path) -> None:
    log = tmp_path / "fetches.log"
    start = time.time() + 3.0
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_fetch_in_process, args=(str(tmp_path / "cache"), str(log), start)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().splitlines()) == 1
