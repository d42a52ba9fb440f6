"""16 small GPU jobs through the service: one GPU worker running 8 jobs at once against 1 at a time.

The embedded deployment (SQLite + the filesystem broker, no other servers) with the API and one
GPU worker (``rnnlab worker --queues gpu --concurrency N``, Celery's prefork pool); 16 ``device:
cuda`` jobs (the LSTM of bench/engine_vs_raw.py at batch 64: 100-step windows of 8 features, hidden
64) are submitted at once and timed from the first submit to the last job's end. Goal: concurrency 8
at least 5x faster than concurrency 1. Needs a CUDA GPU: without one it says so and exits 0.

    python bench/gpu_sweep.py [--jobs 16] [--concurrency 8] [--windows 4000] [--epochs 3]

Last line: ``gpu concurrency 8 vs 1: X.XXx faster``.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dataset(windows: int) -> bytes:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((windows, 100, 8)).astype(np.float32)
    y = (x[:, -5:, 0].mean(axis=1) + 0.1 * rng.standard_normal(windows)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, X=x, y=y)
    return buffer.getvalue()


def run(concurrency: int, args: argparse.Namespace, home: str) -> float:
    """Seconds from the first submit until all jobs ended, with one GPU worker of ``concurrency``."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")},
        "RNNLAB_HOME": home,
        "RNNLAB_PORT": str(port),
        "RNNLAB_TORCH_THREADS": "1",
    }
    py = [sys.executable, "-m", "app.cli"]
    subprocess.run([*py, "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
    key = subprocess.run(
        [*py, "keys", "create", "--project", "bench"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    quiet = {"cwd": ROOT, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [
        subprocess.Popen([*py, "api"], **quiet),  # type: ignore[call-overload]
        subprocess.Popen([*py, "worker", "--queues", "gpu", "--concurrency", str(concurrency)], **quiet),  # type: ignore[call-overload]
    ]
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            for _ in range(600):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            files = {"file": ("windows.npz", dataset(args.windows), "application/octet-stream")}
            ds = client.post("/api/v1/datasets", files=files).json()["id"]
            spec = {
                "dataset_id": ds,
                "task": "regression",
                "data": {"layout": "arrays", "target": "y"},
                "model": {"cell": "lstm", "hidden_size": 64},
                "training": {"epochs": args.epochs, "batch_size": 64, "early_stopping_patience": None},
                "evaluation": {"bootstrap_samples": 100, "attribution": False},
                "device": "cuda",
            }

            def wait(ids: list[str]) -> None:
                pending = set(ids)
                while pending:
                    for job_id in list(pending):
                        job = client.get(f"/api/v1/jobs/{job_id}").json()
                        if job["status"] in ("succeeded", "failed", "cancelled"):
                            assert job["status"] == "succeeded", job
                            pending.discard(job_id)
                    time.sleep(0.05)

            # Warm every pool process (imports, CUDA context) with one job each, untimed.
            wait(
                [
                    client.post("/api/v1/jobs", json={**spec, "name": f"warm{i}"}).json()["id"]
                    for i in range(concurrency)
                ]
            )
            started = time.perf_counter()
            wait([client.post("/api/v1/jobs", json={**spec, "name": f"job{i}"}).json()["id"] for i in range(args.jobs)])
            return time.perf_counter() - started
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--windows", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu_sweep.py needs a CUDA GPU: torch.cuda.is_available() is False here; nothing measured")
        return
    print(f"{args.jobs} jobs, {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, args, f"{tmp}/one")
        print(f"concurrency 1: {one:.1f} s ({args.jobs / one:.2f} jobs/s)", flush=True)
        many = run(args.concurrency, args, f"{tmp}/many")
        print(f"concurrency {args.concurrency}: {many:.1f} s ({args.jobs / many:.2f} jobs/s)")
    print(f"gpu concurrency {args.concurrency} vs 1: {one / many:.2f}x faster")


if __name__ == "__main__":
    main()
