"""Shared fixtures: an isolated rnnlab home per test, on SQLite and on the real PostgreSQL.

Each PostgreSQL test session gets its own schema (so concurrent runs never collide), migrated
with Alembic exactly as in production; tables are emptied between tests.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.config import get_settings
from app.db import reset_engine

POSTGRES_URL = os.environ.get("RNNLAB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RNNLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_ENV_KEYS = [k for k in os.environ if k.startswith("RNNLAB_") and not k.startswith("RNNLAB_TEST_")]
for _k in _ENV_KEYS:  # a developer's own settings must not leak into the tests
    del os.environ[_k]


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: CI must never go green by skipping the real servers."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: real services are required)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_schema_url() -> Iterator[str]:
    schema = f"rnnlab_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        admin.dispose()
        unavailable(f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        unavailable(f"Redis not reachable at {REDIS_URL}: {type(exc).__name__}")
    return REDIS_URL


_migrated_urls: set[str] = set()


def _prepare_database(url: str) -> None:
    from app.migrate import upgrade_database
    from app.models import Base

    if url not in _migrated_urls:
        upgrade_database()
        _migrated_urls.add(url)
        return
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
        if url.startswith("postgresql"):
            conn.execute(sa.text("TRUNCATE " + ", ".join(tables) + " CASCADE"))
        else:
            for name in tables:
                conn.execute(sa.text(f"DELETE FROM {name}"))
    engine.dispose()


def configure(monkeypatch: pytest.MonkeyPatch, home: Path, **env: str) -> None:
    """Point this process's Settings at ``home`` (plus extra RNNLAB_* values) and forget cached state."""
    monkeypatch.setenv("RNNLAB_HOME", str(home))
    # gc.freeze() in the test process would keep every earlier test's garbage alive; the API
    # processes the tests start keep the default (tests/test_api_processes.py checks it).
    monkeypatch.setenv("RNNLAB_GC_FREEZE", "false")
    # Tests send bursts from one key (e.g. walking every page of every sort); the rate limit has
    # tests of its own, which set it.
    monkeypatch.setenv("RNNLAB_RATE_LIMIT", "")
    for key, value in env.items():
        monkeypatch.setenv(f"RNNLAB_{key.upper()}", value)
    get_settings.cache_clear()
    reset_engine()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def env(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[dict[str, str]]:
    """A migrated, empty database (SQLite or PostgreSQL) and a fresh home; returns the RNNLAB_* env."""
    values = {"HOME": str(tmp_path / "home")}
    if backend == "postgres":
        # This test session's own schema; _prepare_database empties it for each test.
        values["DATABASE_URL"] = request.getfixturevalue("postgres_schema_url")
    configure(monkeypatch, tmp_path / "home", **{k: v for k, v in values.items() if k != "HOME"})
    _prepare_database(get_settings().database_url)
    yield {f"RNNLAB_{k}": v for k, v in values.items()}
    reset_engine()
    get_settings.cache_clear()


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    configure(monkeypatch, tmp_path / "home")
    _prepare_database(get_settings().database_url)
    yield {"RNNLAB_HOME": str(tmp_path / "home")}
    reset_engine()
    get_settings.cache_clear()


@pytest.fixture
def client(env: dict[str, str]) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as test_client:
        yield test_client


def make_key(project: str) -> str:
    from app.auth import create_key
    from app.db import new_session

    with new_session() as session:
        plain, _ = create_key(session, project)
    return plain


@pytest.fixture
def auth(env: dict[str, str]) -> dict[str, str]:
    """Headers with a key of project 'alpha'."""
    return {"Authorization": f"Bearer {make_key('alpha')}"}


@pytest.fixture
def other_auth(env: dict[str, str]) -> dict[str, str]:
    """Headers with a key of another project, 'beta'."""
    return {"Authorization": f"Bearer {make_key('beta')}"}


# Redis database leases: every test process that runs workers on Redis needs a database that no
# other process uses at the same time (its queues; FLUSHDB in the broker-loss tests). A database
# number derived from the pid collides between xdist workers and between checkouts sharing the
# server, so numbers are leased instead: a key per number in the base URL's database, set with NX
# and an expiry (a process killed with -9 frees its number after the expiry, or as soon as another
# process on this host sees that the owner's pid is gone).
REDIS_LEASE_SECONDS = 3600
REDIS_LEASE_WAIT_SECONDS = 240.0
_REDIS_LEASE_KEY = "rnnlab-test:redis-db-lease:{db}"
# Delete the key only while it still holds the given owner (a lease that expired and was taken by
# another process is not ours to remove).
_DELETE_IF_OWNER = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def _redis_database_count(admin: Any) -> int:
    try:
        return int(admin.config_get("databases")["databases"])
    except Exception:  # CONFIG can be disabled (managed Redis); 16 is Redis's default
        return 16


def _lease_owner_gone(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's process: only the expiry frees it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextmanager
def leased_redis_db(base_url: str) -> Iterator[str]:
    """The URL of a Redis database that is this process's alone while the block runs; emptied before and after."""
    import redis

    admin = redis.Redis.from_url(base_url, decode_responses=True)
    base_db = int(admin.connection_pool.connection_kwargs.get("db", 0))
    candidates = [db for db in range(_redis_database_count(admin)) if db != base_db]
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    delete_if_owner = admin.register_script(_DELETE_IF_OWNER)
    deadline = time.monotonic() + REDIS_LEASE_WAIT_SECONDS
    leased: int | None = None
    while leased is None:
        for db in candidates:
            key = _REDIS_LEASE_KEY.format(db=db)
            taken = admin.set(key, owner, nx=True, ex=REDIS_LEASE_SECONDS)
            if not taken:
                holder = admin.get(key)
                if holder and _lease_owner_gone(holder) and delete_if_owner(keys=[key], args=[holder]):
                    taken = admin.set(key, owner, nx=True, ex=REDIS_LEASE_SECONDS)
            if taken:
                leased = db
                break
        if leased is None:
            if time.monotonic() > deadline:
                pytest.fail(f"no free Redis database on {base_url} in {REDIS_LEASE_WAIT_SECONDS:.0f} s")
            time.sleep(0.5)
    url = base_url.rsplit("/", 1)[0] + f"/{leased}"
    database = redis.Redis.from_url(url)
    database.flushdb()  # whatever a killed holder left behind
    try:
        yield url
    finally:
        database.flushdb()
        database.close()
        delete_if_owner(keys=[_REDIS_LEASE_KEY.format(db=leased)], args=[owner])
        admin.close()


@pytest.fixture(scope="module")
def redis_db_url(redis_url: str) -> Iterator[str]:
    """A Redis database of this module's own (workers' queues, rate-limit counts), leased for the module."""
    with leased_redis_db(redis_url) as url:
        yield url


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """SQLite + the embedded broker + real worker processes (started by each test as needed)."""
    from tests.stack import running_stack

    tmp = tmp_path_factory.mktemp("embedded")
    with pytest.MonkeyPatch.context() as mp, running_stack({"RNNLAB_HOME": str(tmp / "home")}, tmp, mp) as stack:
        yield stack


@pytest.fixture(scope="module")
def distributed_stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_schema_url: str, redis_db_url: str
) -> Iterator[object]:
    """PostgreSQL + Redis + real worker processes, as in docker-compose.yml."""
    from tests.stack import running_stack

    tmp = tmp_path_factory.mktemp("distributed")
    env = {
        "RNNLAB_HOME": str(tmp / "home"),
        "RNNLAB_DATABASE_URL": postgres_schema_url,
        "RNNLAB_BROKER_URL": redis_db_url,
    }
    with pytest.MonkeyPatch.context() as mp, running_stack(env, tmp, mp) as stack:
        yield stack


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3-API server (moto's standalone server) on 127.0.0.1, for the whole test session."""
    from tests.s3server import moto_server

    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def s3_storage_env(s3_server: object, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh bucket of its own; returns the RNNLAB_* and AWS_* settings that select it (also set here)."""
    from tests.s3server import S3Server

    assert isinstance(s3_server, S3Server)
    bucket = f"rnnlab-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    values = s3_server.env(bucket)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    return values


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each test process gets its share of the cores for torch's intra-op threads
    (as the worker does for its pool: cores // processes). With torch's default of one thread per
    core in every process, N processes on C cores run N x C OpenMP threads that wait on each other
    (two engine tests that take 20 s serially ran past the 300 s timeout with 4 processes on 2 cores)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.cuda`` tests skip, naming the reason, where torch sees no GPU (CI has none either:
    they are the GPU machine's checks, run with ``pytest -m cuda``)."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    reason = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in marked:
        item.add_marker(reason)
