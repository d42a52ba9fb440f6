"""Measure a large CSV upload against the real API: throughput and the server's peak memory.

Generates a CSV of ``--size-mb`` on disk, serves rnnlab with uvicorn in a subprocess (a fresh
RNNLAB_HOME, auth off), streams the file to ``POST /api/v1/datasets`` from disk with httpx, and
reads the server's peak resident memory (VmHWM) from /proc. The upload time runs from the first
byte sent to the response, so it includes the server's CSV → Parquet conversion.

Next to the server's CPU seconds it prints those of the bench's own client (httpx) and, with
``--storage s3``, of moto's S3 server: on a small machine all three share the cores that the
reference read has to itself, and in production the store is another machine. These are printed
to explain a ratio, not folded into it: the ratio is plain wall-clock time.

The reference, measured in the same run on the same file: pyarrow's own streaming CSV read
(``pyarrow.csv.open_csv``, iterating its batches). The ratio upload / reference is the figure to
watch (goal: >= 0.8 with peak server RSS <= 256 MiB), on file and on S3 storage (``--storage s3``
starts moto's S3 server on 127.0.0.1 for the run).

    .venv/bin/python bench/upload_memory.py              # 1 GiB
    .venv/bin/python bench/upload_memory.py --size-mb 64
    .venv/bin/python bench/upload_memory.py --size-mb 512 --storage s3
    .venv/bin/python bench/upload_memory.py --size-mb 512 --repeat 3   # the median of 3 (busy machine)

With ``--repeat N`` the file is uploaded N times to the same server (the dataset is deleted after
each, so each upload is converted and stored anew), each followed by the reference read; each run's
figures are printed, then the medians. The peak RSS is the server's over all runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pyarrow.csv as pa_csv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
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


def pyarrow_read(path: Path) -> tuple[float, float, int]:
    """pyarrow's streaming CSV read of ``path`` (default options): MB/s, CPU seconds and rows."""
    start, cpu = time.perf_counter(), time.process_time()
    rows = 0
    for batch in pa_csv.open_csv(path):
        rows += batch.num_rows
    return path.stat().st_size / MIB / (time.perf_counter() - start), time.process_time() - cpu, rows


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="CSV size in MiB (default 1024)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the CSV and RNNLAB_HOME")
    parser.add_argument("--storage", choices=["file", "s3"], default="file", help="storage backend (default file)")
    parser.add_argument("--repeat", type=int, default=1, help="uploads in a row, each with its reference read")
    args = parser.parse_args()

    root = ROOT
    workdir = Path(tempfile.mkdtemp(prefix="rnnlab-bench-", dir=args.workdir))
    server: subprocess.Popen[bytes] | None = None
    resources = ExitStack()
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
        store_pid: int | None = None  # the S3 server's process (moto), sharing this machine's cores
        if args.storage == "s3":
            from tests.s3server import moto_server

            s3 = resources.enter_context(moto_server())
            s3.create_bucket("rnnlab-bench")
            store_pid = s3.process.pid
            env.update(s3.env("rnnlab-bench"))
            print(f"storage: s3 (moto_server at {s3.endpoint_url})")
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

        # upload MB/s, reference MB/s, server CPU, reference CPU, the bench's client CPU, the S3 server's CPU
        runs: list[tuple[float, float, float, float, float, float]] = []
        for run in range(1, args.repeat + 1):
            cpu_before = cpu_seconds(server.pid)
            store_before = cpu_seconds(store_pid) if store_pid else 0.0
            with source.open("rb") as f, httpx.Client(timeout=None) as client:
                start, client_before = time.perf_counter(), time.process_time()
                response = client.post(f"{base_url}/api/v1/datasets", files={"file": ("bench.csv", f, "text/csv")})
                elapsed = time.perf_counter() - start
                client_cpu = time.process_time() - client_before
                store_cpu = cpu_seconds(store_pid) - store_before if store_pid else 0.0
                if response.status_code != 201:
                    print(f"upload failed: {response.status_code} {response.text}", file=sys.stderr)
                    return 1
                dataset = response.json()
                assert dataset["num_rows"] == rows, dataset
                server_cpu = cpu_seconds(server.pid) - cpu_before
                client.delete(f"{base_url}/api/v1/datasets/{dataset['id']}").raise_for_status()
            reference, reference_cpu, reference_rows = pyarrow_read(source)
            assert reference_rows == rows
            upload = size / MIB / elapsed
            runs.append((upload, reference, server_cpu, reference_cpu, client_cpu, store_cpu))
            label = f"run {run}/{args.repeat}: " if args.repeat > 1 else ""
            print(
                f"{label}upload: {size / MIB:.0f} MB in {elapsed:.1f} s = {upload:.1f} MB/s; "
                f"reference {reference:.1f} MB/s"
            )
            # On a busy machine wall-clock ratios follow the load; CPU seconds do not.
            print(
                f"{label}CPU: server {server_cpu:.1f} s for the upload, pyarrow's read {reference_cpu:.1f} s "
                f"(ratio {server_cpu / reference_cpu:.2f}); the bench's client {client_cpu:.1f} s"
                + (f", the S3 server {store_cpu:.1f} s" if store_pid else "")
                + f"; upload/reference {upload / reference:.2f}x; load {_load()}"
            )
        peak_rss = memory_mib(server.pid, "VmHWM")
        print(f"server RSS idle {idle_rss:.0f} MiB, peak {peak_rss:.0f} MiB; {rows} rows")
        median = statistics.median
        print(
            f"ratio upload/reference {median(u / r for u, r, *_ in runs):.2f}x "
            f"(upload {median(run[0] for run in runs):.1f} MB/s, "
            f"reference {median(run[1] for run in runs):.1f} MB/s; "
            f"server CPU / reference CPU {median(run[2] / run[3] for run in runs):.2f}; "
            f"CPU s: server {median(run[2] for run in runs):.1f}, client {median(run[4] for run in runs):.1f}"
            + (f", S3 server {median(run[5] for run in runs):.1f}" if store_pid else "")
            + "; "
            f"{'median of ' + str(len(runs)) + ' runs; ' if len(runs) > 1 else ''}goal >= 0.8x), "
            f"peak RSS {peak_rss:.0f} MiB (goal <= 256 MiB); load {_load()}"
        )
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        resources.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
