"""Measure a large CSV upload against the real API: throughput and the server's peak memory.

Generates a CSV of ``--size-mb`` on disk, serves rnnlab with uvicorn in a subprocess (a fresh
RNNLAB_HOME, auth off), streams the file to ``POST /api/v1/datasets`` from disk with httpx, and
reads the server's peak resident memory (VmHWM) from /proc. The upload time runs from the first
byte sent to the response, so it includes the server's CSV → Parquet conversion.

    .venv/bin/python bench/upload_memory.py              # 1 GiB
    .venv/bin/python bench/upload_memory.py --size-mb 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MIB = 1024 * 1024


def write_csv(path: Path, size_bytes: int) -> int:
    """A CSV of ``size_bytes`` or a little less: a 4-column block written over and over."""
    block = "".join(f"{i},s{i % 17},{i * 0.37:.3f},{'true' if i % 3 else 'false'}\n" for i in range(40_000)).encode()
    header = b"step,series,value,flag\n"
    blocks = max(1, (size_bytes - len(header)) // len(block))
    with path.open("wb") as f:
        f.write(header)
        for _ in range(blocks):
            f.write(block)
    return blocks * 40_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def wait_ready(base_url: str, server: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="CSV size in MiB (default 1024)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the CSV and RNNLAB_HOME")
    args = parser.parse_args()

    root = Path(__file__).resolve().parent.parent
    workdir = Path(tempfile.mkdtemp(prefix="rnnlab-bench-", dir=args.workdir))
    server: subprocess.Popen[bytes] | None = None
    try:
        source = workdir / "bench.csv"
        t0 = time.perf_counter()
        rows = write_csv(source, args.size_mb * MIB)
        size = source.stat().st_size
        print(f"generated {source} ({size / MIB:.0f} MiB, {rows} rows) in {time.perf_counter() - t0:.1f} s")

        env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
        env.update(
            RNNLAB_HOME=str(workdir / "home"),
            RNNLAB_AUTH_ENABLED="false",
            RNNLAB_MAX_UPLOAD_BYTES=str(max(size + MIB, 1024**3)),
        )
        subprocess.run([sys.executable, "-m", "app.cli", "migrate"], cwd=root, env=env, check=True)
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=root,
            env=env,
        )
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, server)
        idle_rss = memory_mib(server.pid, "VmRSS")

        with source.open("rb") as f, httpx.Client(timeout=None) as client:
            start = time.perf_counter()
            response = client.post(f"{base_url}/api/v1/datasets", files={"file": ("bench.csv", f, "text/csv")})
            elapsed = time.perf_counter() - start
        if response.status_code != 201:
            print(f"upload failed: {response.status_code} {response.text}", file=sys.stderr)
            return 1
        dataset = response.json()
        assert dataset["num_rows"] == rows, dataset
        peak_rss = memory_mib(server.pid, "VmHWM")
        print(f"server RSS idle {idle_rss:.0f} MB; dataset {dataset['id']}: {dataset['num_rows']} rows")
        print(
            f"upload: {size / MIB:.0f} MB in {elapsed:.1f} s = {size / MIB / elapsed:.1f} MB/s, "
            f"server peak RSS {peak_rss:.0f} MB"
        )
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
