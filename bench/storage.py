"""S3 client libraries compared on this machine, and the worker's blob cache: miss versus hit.

Starts moto's S3 server on 127.0.0.1 (the same one the test suite uses), writes a file of
``--size-mb`` random bytes, and measures, best of ``--repeat``:

- upload and download throughput (MB/s) and the client's CPU seconds, for obstore (the library
  rnnlab uses) and boto3 (the AWS SDK), both with rnnlab's part size and parts in flight;
- ``S3Storage.local_path`` of a dataset-sized blob: the first call (a cache miss: fetched from the
  store) and the next (a hit: the local copy), as a sweep's second job on a machine sees it.

Every figure is measured against a local Python server sharing the machine's cores, so they are
lower bounds of what a real store gives, and ratios between the libraries matter more than the
absolute numbers.

    .venv/bin/python bench/storage.py                 # 64 MiB, best of 3
    .venv/bin/python bench/storage.py --size-mb 256
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.storage import MAX_CONCURRENT_PARTS, PART_BYTES  # noqa: E402
from tests.s3server import CREDENTIALS, moto_server  # noqa: E402

MIB = 1024 * 1024
PART = PART_BYTES  # the part size and concurrency rnnlab uses
CONCURRENCY = MAX_CONCURRENT_PARTS


def best(repeat: int, action: Callable[[], None]) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that run) over ``repeat`` runs."""
    results = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        results.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    size = args.size_mb * MIB

    with tempfile.TemporaryDirectory(prefix="rnnlab-bench-storage-") as tmp, moto_server() as server:
        work = Path(tmp)
        server.create_bucket("bench")
        source = work / "blob.bin"
        source.write_bytes(os.urandom(size))

        import boto3
        import obstore
        from boto3.s3.transfer import TransferConfig
        from obstore.store import S3Store

        s3 = boto3.client("s3", endpoint_url=server.endpoint_url)
        transfer = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=CONCURRENCY)
        store = S3Store("bench", endpoint=server.endpoint_url, client_options={"allow_http": True})

        def obstore_download() -> None:
            with (work / "o.bin").open("wb") as f:
                for chunk in obstore.get(store, "o").stream(min_chunk_size=PART):
                    f.write(chunk)

        rows = {
            "boto3": (
                lambda: s3.upload_file(str(source), "bench", "b", Config=transfer),
                lambda: s3.download_file("bench", "b", str(work / "b.bin"), Config=transfer),
            ),
            "obstore": (
                lambda: obstore.put(store, "o", source, chunk_size=PART, max_concurrency=CONCURRENCY),
                obstore_download,
            ),
        }
        print(f"{args.size_mb} MiB, best of {args.repeat}, against moto_server on 127.0.0.1; load {_load()}")
        print(f"{'library':10} {'upload MB/s':>12} {'cpu s':>6} {'download MB/s':>14} {'cpu s':>6}")
        for name, (upload, download) in rows.items():
            up_s, up_cpu = best(args.repeat, upload)
            down_s, down_cpu = best(args.repeat, download)
            print(f"{name:10} {args.size_mb / up_s:12.1f} {up_cpu:6.2f} {args.size_mb / down_s:14.1f} {down_cpu:6.2f}")

        # The blob cache, through rnnlab's own storage class.
        os.environ.update(
            RNNLAB_HOME=str(work / "home"),
            RNNLAB_STORAGE_URL="s3://bench/rnnlab",
            RNNLAB_S3_ENDPOINT_URL=server.endpoint_url,
        )
        from app.config import get_settings
        from app.storage import S3Storage

        storage = S3Storage("s3://bench/rnnlab", get_settings())
        key = "datasets/ab/abcdef.parquet"
        obstore.put(store, f"rnnlab/{key}", source, chunk_size=PART, max_concurrency=CONCURRENCY)
        misses, hits = [], []
        for _ in range(args.repeat):
            storage.cache.discard(key)
            start = time.perf_counter()
            storage.local_path(key)
            misses.append(time.perf_counter() - start)
            start = time.perf_counter()
            path = storage.local_path(key)
            hits.append(time.perf_counter() - start)
        assert path.stat().st_size == size
        miss, hit = min(misses), min(hits)
        print(
            f"blob cache: miss (fetch {args.size_mb} MiB) {miss * 1000:.0f} ms = {args.size_mb / miss:.0f} MB/s, "
            f"hit {hit * 1000:.2f} ms ({miss / hit:.0f}x faster)"
        )
    return 0


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
