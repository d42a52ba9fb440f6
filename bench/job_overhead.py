"""Dispatch + persist overhead of one small job, on the embedded default and on Redis + PostgreSQL.

For each deployment: start a real API (uvicorn) and a real worker, submit small jobs one after
another, and time submit → `succeeded` as a client sees it (polling every 10 ms). The engine's own
time (data preparation, training, evaluation — `summary.timings.engine_seconds`, measured inside
the worker) is subtracted; what is left is the service's overhead: HTTP, validation, SQL, broker,
claim, dataset load, per-epoch writes, artifact and result persistence.

    python bench/job_overhead.py [--jobs 7] [--postgres URL] [--redis URL]

Last line: `dispatch+persist overhead: X.XX s (embedded), Y.YY s (redis)` (medians).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sine_csv(n: int = 300) -> bytes:
    t = np.arange(n)
    return ("value\n" + "\n".join(f"{v:.6f}" for v in np.sin(2 * np.pi * t / 25))).encode()


def run_deployment(label: str, env: dict[str, str], jobs: int) -> float:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")},
        **env,
        "RNNLAB_PORT": str(port),
        "RNNLAB_TORCH_THREADS": "1",
    }
    py = [sys.executable, "-m", "app.cli"]
    subprocess.run([*py, "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
    key = subprocess.run(
        [*py, "keys", "create", "--project", "bench"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    procs = [
        subprocess.Popen([*py, "api"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(
            [*py, "worker", "--concurrency", "1"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for _ in range(300):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            ds = client.post("/api/v1/datasets", files={"file": ("sine.csv", sine_csv(), "text/csv")}).json()["id"]
            spec = {
                "dataset_id": ds,
                "task": "forecast",
                "data": {"layout": "series", "target": "value", "lookback": 12},
                "model": {"cell": "gru", "hidden_size": 8},
                "training": {"epochs": 2, "batch_size": 64},
                "evaluation": {"bootstrap_samples": 100, "attribution": False},
            }
            overheads = []
            for i in range(jobs + 1):  # the first job warms the worker (imports, first torch call)
                started = time.perf_counter()
                job = client.post("/api/v1/jobs", json=spec).json()
                while True:
                    job = client.get(f"/api/v1/jobs/{job['id']}").json()
                    if job["status"] in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(0.01)
                total = time.perf_counter() - started
                assert job["status"] == "succeeded", job
                engine = job["summary"]["timings"]["engine_seconds"]
                if i > 0:
                    overheads.append(total - engine)
                    print(
                        f"{label}: job {i}: total {total:.3f} s, engine {engine:.3f} s, overhead {total - engine:.3f} s"
                    )
            return statistics.median(overheads)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=7)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        embedded = run_deployment("embedded", {"RNNLAB_HOME": f"{tmp}/embedded"}, args.jobs)

        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.postgres)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        try:
            sep = "&" if "?" in args.postgres else "?"
            env = {
                "RNNLAB_HOME": f"{tmp}/redis",
                "RNNLAB_BROKER_URL": args.redis,
                "RNNLAB_DATABASE_URL": f"{args.postgres}{sep}options=-csearch_path%3D{schema}",
            }
            redis_overhead = run_deployment("redis", env, args.jobs)
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    print(f"dispatch+persist overhead: {embedded:.2f} s (embedded), {redis_overhead:.2f} s (redis)")


if __name__ == "__main__":
    main()
