"""docker-compose.yml and the Dockerfile describe the distributed deployment the suite tests."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_runs_postgres_redis_api_migrations_and_two_workers_on_shared_storage() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    env = services["api"]["environment"]
    assert env["RNNLAB_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["RNNLAB_BROKER_URL"].startswith("redis://")
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["command"][:2] == ["rnnlab", "worker"]
    assert services["migrate"]["command"] == ["rnnlab", "migrate"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("api", "worker", "migrate"):  # one storage volume shared by api and workers
        assert services[name]["volumes"] == ["storage:/data"]
        assert services[name]["environment"] == env


def test_dockerfile_builds_a_cpu_image_with_pinned_torch() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text and "torch==2.13.0" in text
    assert text.index("torch==2.13.0") < text.index("pip install -e .")  # torch first: no CUDA wheel
    assert 'CMD ["rnnlab", "api"]' in text
