from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa

from app.config import Settings


def test_settings_defaults_to_embedded_sqlite(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RNNLAB_HOME", str(tmp_path))
    s = Settings()
    assert s.database_url == f"sqlite:///{tmp_path / 'rnnlab.db'}"
    assert s.embedded_broker
    assert s.max_upload_bytes == 1024**3
    assert s.port == 8000


def test_settings_read_postgres_url(monkeypatch) -> None:
    monkeypatch.setenv("RNNLAB_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("RNNLAB_BROKER_URL", "redis://h:6379/0")
    monkeypatch.setenv("RNNLAB_PORT", "9000")
    s = Settings()
    assert s.database_url.startswith("postgresql+psycopg://")
    assert not s.embedded_broker and s.port == 9000


def test_migrations_create_every_table(env) -> None:
    from app.db import get_engine
    from app.models import Base

    names = set(sa.inspect(get_engine()).get_table_names())
    assert {t.name for t in Base.metadata.sorted_tables} <= names
    assert "alembic_version" in names


def test_migrations_match_the_models(env) -> None:
    """What Alembic's autogenerate would write after the last migration: nothing. A column, index or
    type declared in app/models.py but missing from migrations/ (or the other way round) fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.db import get_engine
    from app.models import Base

    with get_engine().connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_healthz_and_readyz(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    body = client.get("/readyz").json()
    assert body["status"] == "ready" and body["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_readyz_503_when_database_unreachable(tmp_path, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import configure

    configure(monkeypatch, tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    with TestClient(create_app()) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "not_ready"
    assert "database" in r.json()["error"]["message"]


def test_readyz_503_when_broker_unreachable(sqlite_env, monkeypatch, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import configure

    configure(monkeypatch, tmp_path / "home", broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app()) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and "broker" in r.json()["error"]["message"]


def test_auth_required_everywhere_under_api(client, auth) -> None:
    for path in ("/api/v1/datasets", "/api/v1/jobs", "/api/v1/sweeps"):
        missing = client.get(path)
        assert missing.status_code == 401, path
        assert missing.json()["error"]["code"] == "unauthorized"
        wrong = client.get(path, headers={"Authorization": "Bearer rnl_wrong"})
        assert wrong.status_code == 401
        assert client.get(path, headers={"Authorization": "Basic abc"}).status_code == 401
        assert client.get(path, headers=auth).status_code == 200, path


def test_revoked_key_stops_working_within_the_auth_cache_time(client) -> None:
    import time

    from app.auth import create_key, revoke_key
    from app.config import get_settings
    from app.db import new_session

    cache_seconds = get_settings().auth_cache_seconds
    assert 0 < cache_seconds <= 5  # the default: cached briefly, revocation within a few seconds
    with new_session() as session:
        plain, row = create_key(session, "gamma")
        headers = {"Authorization": f"Bearer {plain}"}
        assert client.get("/api/v1/datasets", headers=headers).status_code == 200  # now cached
        assert revoke_key(session, row.prefix) == 1
    revoked_at = time.monotonic()
    while (r := client.get("/api/v1/datasets", headers=headers)).status_code == 200:
        assert time.monotonic() - revoked_at < cache_seconds + 0.5, "a revoked key outlived the auth cache"
        time.sleep(0.05)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    # A key never seen is checked at once (only valid keys are cached).
    assert client.get("/api/v1/datasets", headers={"Authorization": "Bearer rnl_unknown"}).status_code == 401


def test_keys_are_stored_hashed(env) -> None:
    from app.auth import create_key
    from app.db import new_session
    from app.models import ApiKey

    with new_session() as session:
        plain, _ = create_key(session, "delta")
        stored = session.scalars(sa.select(ApiKey.key_hash)).all()
    assert plain not in stored and all(len(h) == 64 for h in stored)


def test_cli_keys_create_prints_key_alone(env) -> None:
    import os

    run_env = {**os.environ, **env}
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--project", "cli-proj"],
        capture_output=True,
        text=True,
        env=run_env,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnl_")
    listed = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "list"], capture_output=True, text=True, env=run_env, check=True
    )
    assert "cli-proj" in listed.stdout and lines[0] not in listed.stdout
    prefix = lines[0][:12]
    subprocess.run([sys.executable, "-m", "app.cli", "keys", "revoke", prefix], env=run_env, check=True)
    listed = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "list"], capture_output=True, text=True, env=run_env, check=True
    )
    assert "revoked=-" not in listed.stdout
    # A project name that would display as something it is not, or none at all, is refused.
    for bad in ("", "  ", "a\x01b", "evil\u202eppa", "x" * 201):
        out = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", "--project", bad],
            capture_output=True,
            text=True,
            env=run_env,
        )
        assert out.returncode == 64 and out.stdout == "" and "project name" in out.stderr, (bad, out.stderr)


def test_a_key_is_revoked_by_its_id_its_prefix_as_listed_or_the_whole_key(env) -> None:
    from app.auth import create_key, revoke_key
    from app.db import new_session

    with new_session() as session:
        whole, _ = create_key(session, "epsilon")
        listed, row = create_key(session, "epsilon")
        assert revoke_key(session, whole) == 1  # someone who holds a leaked key has the key
        assert revoke_key(session, row.prefix + "…") == 1  # copied from 'keys list'
        assert revoke_key(session, whole) == 0 and revoke_key(session, listed) == 0  # already revoked
        assert revoke_key(session, "rnl_unknown") == 0


def test_framework_422_uses_the_error_body(client, auth) -> None:
    r = client.get("/api/v1/datasets?limit=100000", headers=auth)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "validation_error" and err["details"][0]["field"] == "limit"


def test_api_start_removes_temp_files_left_by_a_crash(sqlite_env) -> None:
    import os
    import time

    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.storage import get_storage

    storage = get_storage()
    stale, fresh = storage.temp_path(".csv"), storage.temp_path(".csv")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    with TestClient(create_app()):
        pass
    assert not stale.exists() and fresh.exists()


def test_openapi_documents_the_job_spec(client) -> None:
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/JobSpec"}
    job_spec = doc["components"]["schemas"]["JobSpec"]
    assert {"dataset_id", "task", "data", "model", "training"} <= set(job_spec["properties"])
    assert "ModelSpec" in doc["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_migrations_downgrade_and_upgrade_again(env) -> None:
    from alembic import command

    from app.db import get_engine, reset_engine
    from app.migrate import alembic_config, upgrade_database

    reset_engine()
    command.downgrade(alembic_config(), "base")
    assert set(sa.inspect(get_engine()).get_table_names()) <= {"alembic_version"}
    upgrade_database()
    reset_engine()
    columns = {c["name"] for c in sa.inspect(get_engine()).get_columns("jobs")}
    assert {"status", "attempts", "lease_expires_at", "cancel_requested"} <= columns


def test_api_process_does_not_import_torch_until_it_predicts() -> None:
    # Validation needs only NumPy and pyarrow; torch (≈200 MB) loads on the first /predict.
    code = "import sys, app.main; app.main.create_app(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_invalid_json_and_validator_messages_read_well(client, auth) -> None:
    r = client.post(
        "/api/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=b'{"task": "forecast",,}'
    )
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["details"][0]["field"] == "body" and "not valid JSON" in err["message"]
    r = client.post(
        "/api/v1/jobs",
        headers=auth,
        json={"dataset_id": "x", "task": "regression", "data": {"layout": "series", "target": "v"}},
    )
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "Value error" not in message and "series" in message and "forecast" in message


def test_cli_on_an_uninitialised_database_says_what_to_do(tmp_path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
    env["RNNLAB_HOME"] = str(tmp_path / "empty")
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--project", "p"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 1 and out.stdout == ""
    assert "rnnlab migrate" in out.stderr and "Traceback" not in out.stderr
