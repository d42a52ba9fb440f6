"""The blob cache under faults: eviction racing readers, a deleted cache directory, damaged copies,
and a store that hangs (a fetch that stalls must not hold every thread)."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.blobcache import BlobCache, CacheBusy, IncompleteFetch


def _writer(content: bytes, calls: list[str] | None = None):
    def fetch(target: Path) -> None:
        if calls is not None:
            calls.append(target.name)
        target.write_bytes(content)

    return fetch


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


# -- 1. eviction and concurrent readers -------------------------------------------------------------
def test_eviction_spares_blobs_used_within_the_grace_period(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=250, grace_seconds=60)
    a = cache.get("datasets/aa/a.parquet", _writer(b"a" * 100))
    b = cache.get("datasets/bb/b.parquet", _writer(b"b" * 100))
    c = cache.get("datasets/cc/c.parquet", _writer(b"c" * 100))
    # All three were used just now: the cache is over its bound rather than pull one from a reader.
    assert a.exists() and b.exists() and c.exists()
    _age(a, 120)
    _age(b, 90)
    assert cache.evict() == 1
    assert not a.exists() and b.exists() and c.exists()
    assert not cache._meta_path("datasets/aa/a.parquet").exists()  # its sidecar goes with it


def test_readers_racing_eviction_always_open_what_they_were_handed(tmp_path) -> None:
    """The reviewer's repro in small: 8 blobs, a cache too small for them, readers in threads and in
    two caches on one directory (two processes), each opening its path twice after get(). The grace
    is short and the readers slow enough that blobs *are* evicted and fetched again meanwhile."""
    root = tmp_path / "cache"
    caches = [BlobCache(root, max_bytes=3000, grace_seconds=1.0) for _ in range(2)]
    contents = {f"datasets/{i:02d}/{i}.parquet": bytes([65 + i]) * 750 for i in range(8)}
    errors: list[BaseException] = []

    def read(n: int) -> None:
        cache = caches[n % 2]
        try:
            for i in range(16):
                key = list(contents)[(n + i) % 8]
                path = cache.get(key, _writer(contents[key]))
                assert path.read_bytes()[:1] == contents[key][:1]  # the schema
                assert path.read_bytes() == contents[key]  # then the table
                time.sleep(0.3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(c.misses for c in caches) > len(contents)  # some blob was evicted and fetched again


def test_get_verified_fetches_again_when_the_copy_is_gone_before_it_is_read(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10**6)
    calls: list[str] = []
    key = "models/j-1.pt"
    first = True

    def reader(path: Path) -> bytes:
        nonlocal first
        if first:  # another process's eviction won the race
            first = False
            path.unlink()
        return path.read_bytes()

    assert cache.get_verified(key, _writer(b"m" * 10, calls), reader) == b"m" * 10
    assert len(calls) == 2


# -- 3. a deleted cache directory -------------------------------------------------------------------
def test_a_cache_directory_deleted_under_a_running_process_is_made_again(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10**6)
    cache.get("datasets/aa/a.parquet", _writer(b"a" * 10))
    shutil.rmtree(tmp_path / "cache")
    path = cache.get("datasets/aa/a.parquet", _writer(b"a" * 10))
    assert path.read_bytes() == b"a" * 10
    shutil.rmtree(tmp_path / "cache")
    other = cache.get("datasets/bb/b.parquet", _writer(b"b" * 10))
    assert other.read_bytes() == b"b" * 10


# -- 4. damaged copies --------------------------------------------------------------------------------
def test_a_truncated_copy_is_fetched_again(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10**6)
    calls: list[str] = []
    path = cache.get("datasets/aa/a.parquet", _writer(b"a" * 100, calls))
    with path.open("r+b") as f:
        f.truncate(40)
    assert cache.get("datasets/aa/a.parquet", _writer(b"a" * 100, calls)).read_bytes() == b"a" * 100
    assert len(calls) == 2


def test_flipped_bytes_are_found_by_the_next_process_to_use_the_copy(tmp_path) -> None:
    calls: list[str] = []
    path = BlobCache(tmp_path / "cache", max_bytes=10**6).get("models/j-1.pt", _writer(b"m" * 100, calls))
    path.write_bytes(b"m" * 50 + b"X" + b"m" * 49)  # same size, one byte changed
    later = BlobCache(tmp_path / "cache", max_bytes=10**6)  # another process: it reads the copy whole once
    assert later.get("models/j-1.pt", _writer(b"m" * 100, calls)).read_bytes() == b"m" * 100
    assert len(calls) == 2
    assert later.get("models/j-1.pt", _writer(b"never", calls)).read_bytes() == b"m" * 100
    assert len(calls) == 2


def test_a_copy_without_its_sidecar_is_fetched_again(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10**6)
    calls: list[str] = []
    cache.get("models/j-1.pt", _writer(b"m" * 10, calls))
    cache._meta_path("models/j-1.pt").unlink()  # e.g. a copy from before sidecars existed
    assert cache.get("models/j-1.pt", _writer(b"m" * 10, calls)).read_bytes() == b"m" * 10
    assert len(calls) == 2


def test_a_copy_that_fails_to_read_is_dropped_and_fetched_once_more(tmp_path) -> None:
    """A reader error on a copy damaged since this process checked it (same size, other bytes): the
    copy is fetched again and read again. On a copy that still matches its SHA-256 the error is the
    reader's answer about what the store holds: raised, with no new download (an NPZ of object arrays
    was downloaded again on every request)."""
    cache = BlobCache(tmp_path / "cache", max_bytes=10**6)
    calls: list[str] = []
    reads: list[bytes] = []
    key = "models/j-1.pt"

    def reader(path: Path) -> bytes:
        data = path.read_bytes()
        reads.append(data)
        if data != b"m" * 10:
            raise RuntimeError("PytorchStreamReader failed reading zip archive")
        return data

    path = cache.get(key, _writer(b"m" * 10, calls))
    path.write_bytes(b"x" * 10)  # damaged on disk after this process checked it
    assert cache.get_verified(key, _writer(b"m" * 10, calls), reader) == b"m" * 10
    assert len(calls) == 2 and len(reads) == 2

    def refuses(path: Path) -> bytes:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")

    for _ in range(3):
        with pytest.raises(ValueError, match="Object arrays"):
            cache.get_verified(key, _writer(b"m" * 10, calls), refuses)
    assert len(calls) == 2  # intact: never downloaded again


def test_a_download_shorter_than_the_store_said_is_not_kept(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10**6)

    def short(target: Path) -> dict[str, int]:
        target.write_bytes(b"x" * 10)
        return {"size": 20}

    with pytest.raises(IncompleteFetch):
        cache.get("models/j-1.pt", short)
    assert not cache.path_for("models/j-1.pt").exists()
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_an_adopted_file_is_kept_with_its_size(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10**6)
    source = tmp_path / "upload.parquet"
    source.write_bytes(b"u" * 30)
    cache.adopt("datasets/uu/u.parquet", source)
    path = cache.get("datasets/uu/u.parquet", _writer(b"never called"))
    assert path.read_bytes() == b"u" * 30 and cache.hits == 1


# -- 5. a store that hangs ----------------------------------------------------------------------------
def _hanging(started: threading.Event, release: threading.Event):
    def fetch(target: Path) -> None:
        started.set()
        release.wait(30)
        target.write_bytes(b"late")

    return fetch


@contextlib.contextmanager
def _fetch_hanging(cache: BlobCache, key: str) -> Iterator[None]:
    """Another thread's fetch of ``key`` that writes nothing until the block ends."""
    started, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=cache.get, args=(key, _hanging(started, release)))
    holder.start()
    try:
        assert started.wait(10)
        yield
    finally:
        release.set()
        holder.join()


def test_a_stalled_fetch_makes_waiters_for_the_same_blob_give_up(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10**6, stall_seconds=0.5)
    with _fetch_hanging(cache, "models/j-1.pt"):
        began = time.monotonic()
        with pytest.raises(CacheBusy, match="no progress"):
            cache.get("models/j-1.pt", _writer(b"never called"))
        assert time.monotonic() - began < 5


def test_a_fetch_that_makes_progress_is_waited_for(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10**6, stall_seconds=0.5)
    started = threading.Event()

    def slow(target: Path) -> None:  # 2 s in all, but writing all along
        started.set()
        with target.open("wb") as f:
            for _ in range(10):
                f.write(b"s" * 10)
                f.flush()
                time.sleep(0.2)

    holder = threading.Thread(target=cache.get, args=("models/j-1.pt", slow))
    holder.start()
    assert started.wait(10)
    assert cache.get("models/j-1.pt", _writer(b"never called")).read_bytes() == b"s" * 100
    holder.join()


def test_past_its_fetch_slots_a_process_gives_up_at_once_and_hits_still_answer(tmp_path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10**6, max_fetchers=1, slot_wait_seconds=0.2)
    cached = cache.get("datasets/aa/a.parquet", _writer(b"a" * 10))
    with _fetch_hanging(cache, "models/j-1.pt"):
        began = time.monotonic()
        with pytest.raises(CacheBusy, match="too many fetches"):
            cache.get("models/other.pt", _writer(b"o"))
        assert time.monotonic() - began < 2
        assert cache.get("datasets/aa/a.parquet", _writer(b"never called")) == cached  # a hit needs no slot


def test_threads_waiting_for_a_download_in_progress_hold_no_store_slot(tmp_path) -> None:
    """Waiters for one blob that this process is already downloading wait for it (it makes progress)
    instead of taking store slots: 20 waiters for one slow download took all 8 and got 503s."""
    cache = BlobCache(tmp_path / "cache", max_bytes=10**6, max_fetchers=2, slot_wait_seconds=0.2)
    calls: list[int] = []

    def slow(target: Path) -> None:
        calls.append(1)
        with target.open("wb") as f:
            for _ in range(6):  # 0.6 s, a byte at a time: progress the waiters can see
                f.write(b"x")
                f.flush()
                time.sleep(0.1)

    errors: list[BaseException] = []

    def get() -> None:
        try:
            assert cache.get("datasets/00/slow.parquet", slow).read_bytes() == b"x" * 6
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=get) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and calls == [1]
