"""Uploading a file much larger than the memory allowed for it: the upload streams end to end."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from app.main import create_app
from app.storage import get_storage
from tests.conftest import make_key
from tests.datasets.conftest import UPLOAD_URL, multipart_chunks, stream_request

FILE_BYTES = 256 * 1024 * 1024
WARM_UP_FILE_BYTES = 16 * 1024 * 1024
PYTHON_PEAK_LIMIT_BYTES = 16 * 1024 * 1024
# Arrow's allocator and thread pools take a fixed ~100-150 MiB on first use whatever the file size,
# so process memory is measured after a warm-up upload: past that, a streaming upload barely grows
# it, while holding the file would grow it by at least the file's size.
RSS_GROWTH_LIMIT_BYTES = FILE_BYTES // 2


def write_csv(path: Path, size_bytes: int) -> int:
    """A CSV of about ``size_bytes`` (one generated block, repeated); returns its row count."""
    block_rows = 20_000
    block = "".join(
        f"{i},s{i % 17},{i * 0.37:.3f},{'true' if i % 3 else 'false'}\n" for i in range(block_rows)
    ).encode()
    blocks = max(1, size_bytes // len(block))
    with path.open("wb") as f:
        f.write(b"step,series,value,flag\n")
        for _ in range(blocks):
            f.write(block)
    return blocks * block_rows


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssSampler(threading.Thread):
    """The process's peak resident memory, sampled every few milliseconds while running."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = rss_bytes()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_upload_larger_than_allowed_memory_streams(sqlite_env, tmp_path, storage, request) -> None:
    if storage == "s3":  # moto's S3 server: the Parquet goes to the bucket as a multipart upload
        request.getfixturevalue("s3_storage_env")
    warm_up = tmp_path / "warm_up.csv"
    write_csv(warm_up, WARM_UP_FILE_BYTES)
    source = tmp_path / "big.csv"
    rows = write_csv(source, FILE_BYTES)
    size = source.stat().st_size
    headers = {
        "authorization": f"Bearer {make_key('alpha')}",
        "content-type": "multipart/form-data; boundary=memtestboundary",
    }
    app = create_app()
    body = multipart_chunks(b"memtestboundary", "warm_up.csv", warm_up)
    assert asyncio.run(stream_request(app, UPLOAD_URL, headers, body)).status == 201

    baseline_rss = rss_bytes()
    sampler = RssSampler()
    sampler.start()
    tracemalloc.start()
    try:
        body = multipart_chunks(b"memtestboundary", "big.csv", source)
        result = asyncio.run(stream_request(app, UPLOAD_URL, headers, body))
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        peak_rss = sampler.stop()

    warm_up.unlink()
    source.unlink()  # 256 MiB is worth not leaving behind in pytest's kept temporary directories
    assert result.status == 201, result.body
    dataset = result.json()
    assert dataset["size_bytes"] == size and dataset["num_rows"] == rows
    assert [c["dtype"] for c in dataset["columns"]] == ["int64", "string", "float64", "bool"]
    key = f"datasets/{dataset['sha256'][:2]}/{dataset['sha256']}.parquet"
    stored = get_storage().local_path(key)
    assert pq.ParquetFile(stored).metadata.num_rows == rows
    assert get_storage().size(key) == stored.stat().st_size
    get_storage().delete(key)

    assert python_peak < PYTHON_PEAK_LIMIT_BYTES, f"Python peak {python_peak / 2**20:.1f} MiB"
    growth = peak_rss - baseline_rss
    print(f"python peak {python_peak / 2**20:.1f} MiB, RSS growth {growth / 2**20:.1f} MiB")
    assert growth < RSS_GROWTH_LIMIT_BYTES, f"RSS grew {growth / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file"
