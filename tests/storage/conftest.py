"""Fixtures for the storage tests: the API and the worker shell on S3 storage (moto's server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import get_settings
from tests.conftest import _prepare_database, configure, make_key
from tests.s3server import S3Server


@pytest.fixture
def s3_env(
    s3_server: S3Server, s3_storage_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """SQLite, a fresh home, and S3 storage in a bucket of its own."""
    extra = {k.removeprefix("RNNLAB_").lower(): v for k, v in s3_storage_env.items() if k.startswith("RNNLAB_")}
    configure(monkeypatch, tmp_path / "home", **extra)
    _prepare_database(get_settings().database_url)
    yield {"RNNLAB_HOME": str(tmp_path / "home"), **s3_storage_env}
    get_settings.cache_clear()


@pytest.fixture
def s3_client(s3_env: dict[str, str]) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as client:
        yield client


@pytest.fixture
def s3_auth(s3_env: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key('alpha')}"}


def bucket_objects(server: S3Server, bucket: str) -> dict[str, int]:
    """Every object in the bucket: key → size."""
    client = server.boto_client()
    listing = client.list_objects_v2(Bucket=bucket)
    return {o["Key"]: o["Size"] for o in listing.get("Contents", [])}


def open_multipart_uploads(server: S3Server, bucket: str) -> list[str]:
    return [u["Key"] for u in server.boto_client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def bucket_of(env: dict[str, str]) -> str:
    return env["RNNLAB_STORAGE_URL"].removeprefix("s3://").split("/", 1)[0]
