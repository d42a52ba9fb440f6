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


def test_up_says_it_is_up_only_once_api_and_worker_are_ready_and_restarts_a_dead_child(tmp_path: Path) -> None:
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
        # The key command names the data directory the service was started with (keys live in it).
        assert f"RNNLAB_HOME={tmp_path / 'home'} rnnlab keys create --project demo" in text, text

        # Once up, a child that dies is started again: the API killed (its server processes, which
        # hold the port, are stopped with it) and then the worker.
        api_pids = _pids(f"app.cli api --host 127.0.0.1 --port {port}", proc.pid)
        assert len(api_pids) == 1
        os.kill(api_pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text(errors="replace")
            new = _pids(f"app.cli api --host 127.0.0.1 --port {port}", proc.pid)
            if new and new != api_pids and _ready(port):
                break
            time.sleep(0.2)
        assert "api exited (-9); starting it again" in log_path.read_text(errors="replace")
        ready_before = log_path.read_text(errors="replace").count(" ready.")
        [worker_pid] = _pids("celery -A worker.celery_app", proc.pid)  # the worker's main process: up's child
        os.kill(worker_pid, signal.SIGKILL)
        while log_path.read_text(errors="replace").count(" ready.") == ready_before:
            assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text(errors="replace")
            time.sleep(0.2)
        assert "worker exited (-9); starting it again" in log_path.read_text(errors="replace")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log_path.read_text(errors="replace")
    assert _pids(f"--port {port}") == [] and not _ready(port)  # nothing left serving the port


def _pids(pattern: str, parent: int | None = None) -> list[int]:
    """Processes whose command line holds ``pattern`` (only children of ``parent`` when given)."""
    parent_option = ["-P", str(parent)] if parent is not None else []
    out = subprocess.run(["pgrep", *parent_option, "-f", "--", pattern], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


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
