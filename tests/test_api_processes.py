"""The API process: several uvicorn workers by default when there are cores, and gc.freeze() after start-up."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from app.cli import default_api_workers
from app.serving import balanced_sockets_supported, listening_sockets
from tests.stack import ROOT, cli_key


def test_default_api_workers_follow_the_cpus(monkeypatch) -> None:
    for cpus, workers in ((1, 1), (2, 2), (3, 3), (16, 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert default_api_workers() == workers


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(tmp_path, args: list[str], extra_env: dict[str, str] | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
    port = _free_port()
    env.update({"RNNLAB_HOME": str(tmp_path / "home"), "RNNLAB_PORT": str(port), **(extra_env or {})})
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    # `up` imports the app in each API process and starts a worker: on a loaded 2-core machine (the
    # suite runs in parallel) that takes well over a minute.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"the API did not start (exit code {proc.poll()})")


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def _uvicorn_workers(pid: int) -> set[int]:
    """The children uvicorn spawned to serve (multiprocessing spawn), each a process of the API."""
    found = set()
    for child in _children(pid):
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                found.add(child)
    return found


def test_api_workers_option_runs_that_many_processes(tmp_path) -> None:
    proc, base = _serve(tmp_path, ["api", "--workers", "2"])
    try:
        assert len(_uvicorn_workers(proc.pid)) == 2
        assert all(httpx.get(f"{base}/healthz").status_code == 200 for _ in range(20))
    finally:
        _stop(proc)
    assert proc.returncode == 0


@pytest.mark.skipif(default_api_workers() < 2, reason="one CPU: the default is one API process")
def test_up_and_api_default_to_several_api_processes(tmp_path) -> None:
    proc, _ = _serve(tmp_path, ["up"], {"RNNLAB_TORCH_THREADS": "1"})
    try:
        apis = [p for p in _children(proc.pid) if _uvicorn_workers(p)]
        assert len(apis) == 1 and len(_uvicorn_workers(apis[0])) == default_api_workers() >= 2
    finally:
        _stop(proc)


def test_api_start_freezes_the_gc_with_higher_thresholds() -> None:
    code = (
        "import gc; from fastapi.testclient import TestClient; from app.main import create_app, GC_THRESHOLDS\n"
        "with TestClient(create_app()) as c:\n"
        "    assert c.get('/healthz').status_code == 200\n"
        "    assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()\n"
        "    assert gc.get_threshold() == GC_THRESHOLDS\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
    import tempfile

    with tempfile.TemporaryDirectory() as home:
        env["RNNLAB_HOME"] = home
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def test_access_log_follows_the_setting(monkeypatch, tmp_path) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from app.cli import app
    from app.config import get_settings

    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: seen.update(kwargs))
    monkeypatch.setenv("RNNLAB_HOME", str(tmp_path))
    try:
        for value, expected in (("false", False), ("true", True)):
            monkeypatch.setenv("RNNLAB_ACCESS_LOG", value)
            get_settings.cache_clear()
            result = CliRunner().invoke(app, ["api", "--workers", "1"])
            assert result.exit_code == 0, result.output
            assert seen["access_log"] is expected
    finally:
        get_settings.cache_clear()


def _listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on 127.0.0.1:port (from /proc/net/tcp)."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


@pytest.mark.skipif(not balanced_sockets_supported(), reason="SO_REUSEPORT balancing is Linux's")
def test_listening_sockets_share_the_port_and_spread_connections() -> None:
    sockets = listening_sockets("127.0.0.1", 0, 3, 128)
    try:
        port = sockets[0].getsockname()[1]
        assert {s.getsockname()[1] for s in sockets} == {port}
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
        accepted = []
        for listening in sockets:
            listening.setblocking(False)
            count = 0
            while True:
                try:
                    conn, _ = listening.accept()
                except BlockingIOError:
                    break
                conn.close()
                count += 1
            accepted.append(count)
        for client in clients:
            client.close()
        # The kernel hashes each connection to one socket: all 64 arrive, and every socket gets some
        # (all 64 on two of the three sockets has a probability of about 1e-11).
        assert sum(accepted) == 64 and min(accepted) > 0, accepted
    finally:
        for s in sockets:
            s.close()


@pytest.mark.skipif(not balanced_sockets_supported(), reason="SO_REUSEPORT balancing is Linux's")
def test_listening_sockets_refuse_a_port_another_server_listens_on() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(OSError) as raised:
            listening_sockets("127.0.0.1", other.getsockname()[1], 2, 16)
        assert raised.value.errno == errno.EADDRINUSE


@pytest.mark.skipif(not balanced_sockets_supported(), reason="SO_REUSEPORT balancing is Linux's")
def test_each_api_process_serves_its_own_socket_and_a_restart_keeps_it(tmp_path) -> None:
    proc, base = _serve(tmp_path, ["api", "--workers", "2"])
    port = int(base.rsplit(":", 1)[1])
    try:
        workers = _uvicorn_workers(proc.pid)
        listening = _listening_inodes(port)
        assert len(workers) == 2 and len(listening) == 2
        own = {pid: _socket_inodes(pid) & listening for pid in workers}
        assert sorted(len(s) for s in own.values()) == [1, 1] and set().union(*own.values()) == listening
        # A killed process is replaced by one serving the same socket; meanwhile its connections wait
        # in that socket's queue (the parent keeps it open) and are served by the replacement.
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)
        with httpx.Client(timeout=120) as client:
            assert all(client.get(f"{base}/healthz").status_code == 200 for _ in range(20))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            replaced = _uvicorn_workers(proc.pid) - {victim}
            if len(replaced) == 2 and all(_socket_inodes(p) & listening for p in replaced):
                break
            time.sleep(0.5)
        now = {pid: _socket_inodes(pid) & listening for pid in _uvicorn_workers(proc.pid)}
        assert victim not in now and sorted(now.values(), key=sorted) == sorted(own.values(), key=sorted)
    finally:
        _stop(proc)


def test_a_stop_does_not_wait_for_open_event_streams_past_the_grace(tmp_path) -> None:
    # An event stream stays open for as long as its job runs (here: queued, no worker); a SIGTERM used
    # to wait for it, so a restart hung while any job page or `rnnlab jobs follow` was open.
    proc, base = _serve(tmp_path, ["api", "--workers", "1"], {"RNNLAB_SHUTDOWN_GRACE_SECONDS": "1"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")} | {"RNNLAB_HOME": str(tmp_path / "home")}
    key = cli_key(env, "p")
    headers = {"Authorization": f"Bearer {key}"}
    rows = "t,value\n" + "\n".join(f"{i},{i % 7}" for i in range(120))
    dataset = httpx.post(f"{base}/api/v1/datasets", headers=headers, files={"file": ("s.csv", rows.encode())}).json()
    spec = {"dataset_id": dataset["id"], "task": "forecast", "data": {"layout": "series", "target": "value"}}
    job = httpx.post(f"{base}/api/v1/jobs", headers=headers, json=spec).json()
    try:
        with httpx.stream("GET", f"{base}/api/v1/jobs/{job['id']}/events", headers=headers, timeout=60) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("id:")  # the stream is open
            stopped = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)  # the grace is 1 s; before, this waited for the job to end
            assert time.monotonic() - stopped < 20
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
