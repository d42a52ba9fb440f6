"""Workers on other machines: they share only the database, the broker and the object store.

Two worker processes, each with its own RNNLAB_HOME (so its own blob cache and no disk in common
with the API or each other), run the jobs of one sweep on PostgreSQL + Redis + S3 (moto's server).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3server import S3Server
from tests.stack import Stack, forecast_spec, running_stack, sine_csv
from tests.storage.conftest import bucket_objects, bucket_of
from tests.sweeps.checks import create_sweep, wait_for_sweep

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def s3_distributed_stack(
    tmp_path: Path, postgres_schema_url: str, redis_db_url: str, s3_storage_env: dict[str, str]
) -> Iterator[Stack]:
    env = {
        "RNNLAB_HOME": str(tmp_path / "api-home"),
        "RNNLAB_DATABASE_URL": postgres_schema_url,
        "RNNLAB_BROKER_URL": redis_db_url,
        **s3_storage_env,
    }
    with pytest.MonkeyPatch.context() as mp, running_stack(env, tmp_path, mp) as stack:
        yield stack


def _wait_ready(stack: Stack, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = [p.read_text(errors="replace") for p in sorted(stack.log_dir.glob("worker-*.log"))]
        if len(logs) == count and all(" ready." in log for log in logs):
            return
        time.sleep(0.3)
    raise AssertionError(f"workers not ready in {timeout}s:\n{stack.worker_logs()}")


def test_two_workers_without_shared_disk_run_one_sweep(
    s3_server: S3Server, s3_distributed_stack: Stack, tmp_path: Path
) -> None:
    stack = s3_distributed_stack
    homes = [tmp_path / "worker-a", tmp_path / "worker-b"]
    for i, home in enumerate(homes):
        stack.start_worker(env={"RNNLAB_HOME": str(home)}, name=f"storage{i}-{time.time_ns()}@%h")
    _wait_ready(stack, 2)

    dataset = stack.upload_csv("sine.csv", sine_csv(240))
    base = forecast_spec(dataset, epochs=2)
    base["evaluation"]["bootstrap_samples"] = 10
    sweep = create_sweep(
        stack, {"name": "remote", "base": base, "grid": {"model.hidden_size": [4, 6]}, "seeds": [0, 1]}
    )
    done = wait_for_sweep(stack, sweep["id"], timeout=240)
    assert done["progress"]["succeeded"] == 4, (done["progress"], stack.worker_logs())

    jobs = [stack.job(j["id"]) for j in done["jobs"]]
    # Each worker fetched the dataset once into its own cache (by content hash), reused it for its
    # later jobs of the sweep, and wrote its models to the store.
    cached = [list((home / "cache" / "blobs" / "datasets").rglob("*.parquet")) for home in homes]
    ran = [len(c) == 1 for c in cached]
    stored = bucket_objects(s3_server, bucket_of(stack.env))
    for job in jobs:
        assert any(key.endswith(f"models/{job['id']}-{job['attempts']}.pt") for key in stored), job
        model = stack.client.get(f"/api/v1/jobs/{job['id']}/model", headers=stack.headers)
        assert model.status_code == 200 and len(model.content) > 0
    assert all(ran), f"both workers should have run jobs: {[job['worker'] for job in jobs]}"
    # Nothing was written to a shared directory: the API's home holds no models.
    assert not list((Path(stack.env["RNNLAB_HOME"])).rglob("*.pt"))
