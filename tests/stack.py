"""A running rnnlab for integration tests: real database, real broker, real worker processes.

The API runs in-process (TestClient) against the same database and broker as the worker
subprocesses, exactly as separate machines would share them.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.cli import worker_argv

ROOT = Path(__file__).resolve().parent.parent


def cli_key(env: dict[str, str], project: str) -> str:
    """A key made the way a user makes one (``rnnlab keys create``) for the server ``env`` points at."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--project", project],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


# Short leases and fast recovery so crash tests finish in seconds. A 3 s lease expired under CPU
# starvation (4 test processes and their workers on 2 slow cores) although heartbeats come every
# 0.5 s, and a job of the end-to-end test then ran twice; 6 s leaves room for that.
FAST_RECOVERY = {
    "RNNLAB_LEASE_SECONDS": "6",
    "RNNLAB_HEARTBEAT_SECONDS": "0.5",
    "RNNLAB_RECOVERY_INTERVAL_SECONDS": "0.5",
    "RNNLAB_REDISPATCH_AFTER_SECONDS": "2",
    "RNNLAB_EMBEDDED_BROKER_POLL_SECONDS": "0.05",
    "RNNLAB_TORCH_THREADS": "1",
    "RNNLAB_SSE_POLL_SECONDS": "0.1",
}


@dataclass
class Stack:
    env: dict[str, str]
    client: Any
    headers: dict[str, str]
    log_dir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(
        self,
        *,
        concurrency: int = 1,
        queues: str = "default",
        name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """A worker process; ``env`` overrides settings for it alone (e.g. its own RNNLAB_HOME)."""
        index = len(self.workers)
        log = open(self.log_dir / f"worker-{index}.log", "wb")  # noqa: SIM115 - closed with the process
        argv = worker_argv(queues, concurrency, None) + ["--hostname", name or f"w{index}-{os.getpid()}@%h"]
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 takes the pool children too
        )
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        # Tests end with no job in flight, so there is nothing to drain: a hard stop saves the
        # several seconds of Celery's warm shutdown (a clean Ctrl-C is tested with `rnnlab up`).
        for proc in self.workers:
            if proc.poll() is None:
                self.kill_worker(proc)
        self.workers.clear()

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("worker-*.log")))

    # --- API helpers -------------------------------------------------------------------------
    def upload_csv(self, name: str, text: str) -> str:
        r = self.client.post(
            "/api/v1/datasets", headers=self.headers, files={"file": (name, text.encode(), "text/csv")}
        )
        assert r.status_code in (200, 201), r.text
        return str(r.json()["id"])

    def upload_npz(self, name: str, **arrays: np.ndarray) -> str:
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        r = self.client.post(
            "/api/v1/datasets",
            headers=self.headers,
            files={"file": (name, buf.getvalue(), "application/octet-stream")},
        )
        assert r.status_code in (200, 201), r.text
        return str(r.json()["id"])

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        r = self.client.post("/api/v1/jobs", headers=self.headers, json=spec)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/api/v1/jobs/{job_id}", headers=self.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait(
        self,
        job_id: str,
        statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
        timeout: float = 120.0,
        predicate: Any = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in statuses and (predicate is None or predicate(job)):
                return job
            time.sleep(0.2)
        raise AssertionError(
            f"job {job_id} did not reach {statuses} in {timeout}s: {job}\n--- worker logs ---\n{self.worker_logs()}"
        )


def sine_csv(n: int = 400, period: int = 25, noise: float = 0.05, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    values = np.sin(2 * np.pi * t / period) + noise * rng.standard_normal(n)
    return "t,value\n" + "\n".join(f"{i},{v:.6f}" for i, v in zip(t, values, strict=True)) + "\n"


def forecast_spec(dataset_id: str, **training: Any) -> dict[str, Any]:
    return {
        "name": "sine",
        "dataset_id": dataset_id,
        "task": "forecast",
        "data": {"layout": "series", "target": "value", "features": ["value"], "lookback": 12},
        "model": {"cell": "gru", "hidden_size": 8},
        "training": {"epochs": 3, "batch_size": 32, "seed": 0, **training},
        "evaluation": {"bootstrap_samples": 50, "attribution": False},
    }


@contextmanager
def running_stack(env: dict[str, str], tmp: Path, monkeypatch: Any) -> Iterator[Stack]:
    """Point this process at ``env``, migrate, create a key; stop workers on exit."""
    from fastapi.testclient import TestClient

    from app.config import get_settings
    from app.db import reset_engine
    from app.main import create_app
    from tests.conftest import _prepare_database, make_key

    full_env = {**FAST_RECOVERY, **env}
    for key, value in full_env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    reset_engine()
    _prepare_database(get_settings().database_url)
    headers = {"Authorization": f"Bearer {make_key('integration')}"}
    log_dir = tmp / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with TestClient(create_app()) as client:
        stack = Stack(env=full_env, client=client, headers=headers, log_dir=log_dir)
        try:
            yield stack
        finally:
            stack.stop_all()
            reset_engine()
            get_settings.cache_clear()
