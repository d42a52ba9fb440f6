"""docker-compose.yml and the Dockerfile describe the distributed deployment the suite tests."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_runs_postgres_redis_minio_api_migrations_and_two_workers_sharing_no_disk() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker"} <= set(services)
    env = services["api"]["environment"]
    assert env["RNNLAB_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["RNNLAB_BROKER_URL"].startswith("redis://")
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["command"][:2] == ["rnnlab", "worker"]
    assert services["migrate"]["command"] == ["rnnlab", "migrate"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"

    # Storage is the MinIO bucket, reached with the standard AWS variables; no volume is shared.
    assert env["RNNLAB_STORAGE_URL"].startswith("s3://rnnlab")
    assert env["RNNLAB_S3_ENDPOINT_URL"] == "http://minio:9000"
    minio = services["minio"]
    assert env["AWS_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
    assert "healthcheck" in minio
    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb" in " ".join(init["command"]) and "local/rnnlab" in " ".join(init["command"])
    for name in ("api", "worker", "migrate"):
        assert "volumes" not in services[name], f"{name} mounts a volume: workers must not need shared disk"
        assert services[name]["environment"] == env
    # The migration waits for the bucket; the api and the workers wait for the migration.
    assert services["migrate"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "storage" not in compose.get("volumes", {})


def test_dockerfile_builds_a_cpu_image_with_pinned_torch() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text and "torch==2.13.0" in text
    assert text.index("torch==2.13.0") < text.index("pip install -e .")  # torch first: no CUDA wheel
    assert 'CMD ["rnnlab", "api"]' in text


def test_compose_gpu_profile_runs_a_cuda_worker_with_a_gpu_reservation() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gpu = compose["services"]["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]  # `docker compose up` alone starts no GPU worker
    assert gpu["build"] == {"context": ".", "target": "cuda"}
    assert gpu["command"][:4] == ["rnnlab", "worker", "--queues", "gpu"]
    assert "--pool" not in gpu["command"]  # prefork: several jobs share the GPU
    assert gpu["command"][gpu["command"].index("--concurrency") + 1] == "${RNNLAB_JOBS_PER_GPU:-1}"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["device_ids"] == ["0"]
    assert "volumes" not in gpu  # like every worker, it shares no disk: the bucket holds the blobs
    assert gpu["environment"] == compose["services"]["api"]["environment"]
    assert gpu["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_dockerfile_has_a_cuda_target_and_builds_the_cpu_image_by_default() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line.split() for line in text.splitlines() if line.startswith("FROM ")]
    assert [stage[-1] for stage in stages] == ["cuda", "cpu"]  # the last stage is what a plain build makes
    cuda = text[text.index("AS cuda") : text.index("AS cpu")]
    assert "download.pytorch.org/whl/cu" in cuda and '"torch==2.13.0"' in cuda
    assert cuda.index("torch==2.13.0") < cuda.index("pip install -e .")
    assert 'CMD ["rnnlab", "worker", "--queues", "gpu"]' in cuda
