"""What a new user meets first: `rnnlab up` readiness and address, `keys` from the wrong directory, /docs auth."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.stack import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
    env["RNNLAB_TORCH_THREADS"] = "1"
    return env


def test_up_says_it_is_up_only_once_api_and_worker_are_ready(tmp_path: Path) -> None:
    port = _free_port()
    env = {**_clean_env(tmp_path), "RNNLAB_HOME": str(tmp_path / "home")}
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "up", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "rnnlab is up" not in log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text(errors="replace")
            time.sleep(0.1)
        # At the moment it says so, the API answers on the requested port and the worker is ready.
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        text = log_path.read_text(errors="replace")
        assert text.index(" ready.") < text.index("rnnlab is up"), text
        assert f"http://127.0.0.1:{port}/" in text
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log_path.read_text(errors="replace")


def test_keys_from_another_directory_leave_no_empty_database(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--project", "p"],
        cwd=elsewhere,
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and out.stdout == ""
    assert "RNNLAB_HOME" in out.stderr and "rnnlab up" in out.stderr
    assert list(elsewhere.iterdir()) == []  # no .rnnlab/rnnlab.db left behind


def test_a_worker_without_a_database_says_so_instead_of_starting(tmp_path: Path) -> None:
    """Started where there is no .rnnlab (or without RNNLAB_HOME), a worker used to create an empty
    database, report ready and log 'no such table' on every recovery pass."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = [sys.executable, "-m", "app.cli", "worker"]
    out = subprocess.run(run, cwd=elsewhere, env=_clean_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no rnnlab database" in out.stderr and "RNNLAB_HOME" in out.stderr
    assert list(elsewhere.iterdir()) == []
    # An empty database file (created by hand, never migrated): not initialised.
    (elsewhere / ".rnnlab").mkdir()
    (elsewhere / ".rnnlab" / "rnnlab.db").touch()
    out = subprocess.run(run, cwd=elsewhere, env=_clean_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "not initialised: run `rnnlab migrate`" in out.stderr


def test_docs_declare_the_api_key_so_swagger_can_send_it(client) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["apiKey"]["description"],
    }
    assert schema["paths"]["/api/v1/jobs"]["post"]["security"] == [{"apiKey": []}]
    assert schema["paths"]["/api/v1/jobs/{job_id}/model"]["get"]["security"] == [{"apiKey": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    formats = schema["paths"]["/api/v1/jobs/{job_id}/model"]["get"]["parameters"]
    assert any(p["name"] == "format" for p in formats)
