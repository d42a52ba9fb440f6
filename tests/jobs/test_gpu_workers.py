"""Several jobs per GPU: a prefork gpu worker whose main process never touches CUDA."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import delete

from app.cli import worker_command
from app.config import get_settings
from app.db import new_session
from app.models import WorkerHeartbeat
from tests.stack import Stack, forecast_spec, sine_csv

# Installed into every Python process of the worker through PYTHONPATH: each call of a torch.cuda
# entry point is logged with the calling process's id, before it runs.
TRIPWIRE = textwrap.dedent(
    """
    import os

    def _install():
        import torch
        import torch.cuda as cuda

        log = os.environ["CUDA_TRIPWIRE_LOG"]

        def wrap(owner, name):
            original = getattr(owner, name, None)
            if original is None:
                return

            def logged(*args, **kwargs):
                with open(log, "a") as f:
                    f.write(f"{os.getpid()} {name}\\n")
                return original(*args, **kwargs)

            setattr(owner, name, logged)

        for name in ("is_available", "device_count", "init", "_lazy_init", "current_device", "set_device",
                     "get_rng_state", "manual_seed", "synchronize", "mem_get_info"):
            wrap(cuda, name)
        for name in ("_cuda_getDeviceCount", "_cuda_init"):
            wrap(torch._C, name)

    if os.environ.get("CUDA_TRIPWIRE_LOG"):
        _install()
    """
)


def test_a_gpu_only_worker_runs_jobs_per_gpu_in_prefork(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNLAB_JOBS_PER_GPU", "6")
    get_settings.cache_clear()
    try:
        argv = worker_command("gpu", None, None)
        assert argv[argv.index("--concurrency") + 1] == "6"
        assert "--pool" not in argv  # Celery's prefork: one process per job
        argv = worker_command("gpu", 3, None)
        assert argv[argv.index("--concurrency") + 1] == "3"
        assert "--concurrency" not in worker_command("default,gpu", None, None)  # worker_concurrency applies
        assert worker_command("gpu", None, "solo")[-2:] == ["--pool", "solo"]
    finally:
        get_settings.cache_clear()


@pytest.mark.integration
def test_the_worker_process_never_touches_cuda_its_pool_processes_do(embedded_stack: Stack, tmp_path: Path) -> None:
    """A cuda job on a prefork gpu worker (concurrency 2): every torch.cuda call comes from a pool
    process, none from the main process that forks them (CUDA does not survive a fork). Without a GPU
    the job fails with device_unavailable; on a GPU machine it succeeds."""
    import torch

    stack = embedded_stack
    stack.stop_all()
    (tmp_path / "sitecustomize.py").write_text(TRIPWIRE)
    log = tmp_path / "cuda-calls.log"
    saved = dict(stack.env)
    stack.env.update({"PYTHONPATH": str(tmp_path), "CUDA_TRIPWIRE_LOG": str(log)})
    try:
        worker = stack.start_worker(queues="gpu", concurrency=2)
    finally:
        stack.env.clear()
        stack.env.update(saved)
    try:
        ds = stack.upload_csv("sine-gpu.csv", sine_csv(300))
        spec = forecast_spec(ds)
        spec["device"] = "cuda"
        job = stack.wait(stack.submit(spec)["id"], timeout=180)
        if torch.cuda.is_available():
            assert job["status"] == "succeeded" and job["device"] == "cuda", job
        else:
            assert job["status"] == "failed" and job["error"]["type"] == "device_unavailable", job
        time.sleep(0.5)
        callers = {int(line.split()[0]) for line in log.read_text().splitlines()}
        assert callers, "the job's pool process should have asked torch.cuda for a GPU"
        assert worker.pid not in callers, f"the worker's main process called torch.cuda: {log.read_text()}"
    finally:
        stack.stop_all()


@pytest.mark.integration
def test_a_cuda_job_says_it_waits_for_a_gpu_worker_until_one_is_live(embedded_stack: Stack) -> None:
    from app.jobs import workers

    stack = embedded_stack
    stack.stop_all()  # killed: their heartbeats would count for another heartbeat_ttl
    with new_session() as session:
        session.execute(delete(WorkerHeartbeat))
        session.commit()
    ds = stack.upload_csv("sine-wait.csv", sine_csv(300))
    spec = forecast_spec(ds)
    spec["device"] = "cuda"
    stack.start_worker(queues="default")  # a CPU worker: it neither takes the job nor clears the note
    deadline = time.monotonic() + 60
    while "default" not in (workers.live_queues() or set()) and time.monotonic() < deadline:
        workers.clear_cache()
        time.sleep(0.2)
    assert workers.live_queues() == {"default"}
    job = stack.submit(spec)
    assert job["status"] == "queued" and job["queue"] == "gpu"
    assert "'gpu' queue" in job["waiting_for"] and "rnnlab worker --queues gpu" in job["waiting_for"]
    cpu_job = stack.submit(forecast_spec(ds))
    assert stack.wait(cpu_job["id"])["waiting_for"] is None
    assert stack.job(job["id"])["waiting_for"] is not None
    stack.start_worker(queues="gpu")
    done = stack.wait(job["id"], timeout=180)  # taken: it ran (or, without a GPU, failed at once)
    assert done["waiting_for"] is None and done["status"] in ("succeeded", "failed")
    workers.clear_cache()
    assert workers.live_queues() == {"default", "gpu"}
    stack.stop_all()
