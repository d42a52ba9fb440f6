"""The main loop end to end with real worker processes: embedded default and PostgreSQL + Redis."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import torch
from sqlalchemy import update

from tests.stack import ROOT, Stack, cli_key, forecast_spec, sine_csv

pytestmark = pytest.mark.integration


def _check_full_result(stack: Stack, job_id: str) -> None:
    job = stack.job(job_id)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1 and job["progress"]["epoch"] == job["progress"]["epochs"] == 3
    assert job["summary"]["test"]["rmse"] > 0 and job["started_at"] and job["finished_at"]
    assert job["device"] == "cpu" and job["error"] is None

    series = stack.client.get(f"/api/v1/jobs/{job_id}/metrics", headers=stack.headers).json()["series"]
    train_loss = next(s for s in series if s["name"] == "loss" and s["split"] == "train")
    assert train_loss["epochs"] == [1, 2, 3] and all(v > 0 for v in train_loss["values"])

    evaluation = stack.client.get(f"/api/v1/jobs/{job_id}/evaluation", headers=stack.headers).json()
    assert evaluation["main_metric"] == "rmse"
    assert set(evaluation["metrics"]) == {"train", "val", "test"}
    low, high = evaluation["intervals"]["test"]["rmse"]
    assert low <= evaluation["metrics"]["test"]["rmse"] <= high
    assert "naive" in evaluation["baselines"]

    # Final metrics are queryable across jobs.
    listed = stack.client.get("/api/v1/jobs?where=test.rmse > 0&sort=test.rmse", headers=stack.headers).json()
    assert job_id in [j["id"] for j in listed["items"]]
    # …and so are the best and the last epoch's values the worker wrote with them.
    best = job["summary"]["best_epoch"]
    val_loss = next(s for s in series if s["name"] == "loss" and s["split"] == "val")
    at_best = val_loss["values"][val_loss["epochs"].index(best)]
    query = f"where=best.val.loss = {at_best!r} and last.val.loss = {val_loss['values'][-1]!r}&sort=-best.val.loss"
    listed = stack.client.get(f"/api/v1/jobs?{query}", headers=stack.headers).json()
    assert job_id in [j["id"] for j in listed["items"]], listed

    r = stack.client.get(f"/api/v1/jobs/{job_id}/model", headers=stack.headers)
    assert r.status_code == 200
    # A client holding this file (its ETag) is answered 304, without the bytes; another ETag gets them.
    again = {**stack.headers, "If-None-Match": r.headers["etag"]}
    not_modified = stack.client.get(f"/api/v1/jobs/{job_id}/model", headers=again)
    assert not_modified.status_code == 304 and not_modified.content == b""
    weak = {**stack.headers, "If-None-Match": f"W/{r.headers['etag']}"}  # as a proxy may pass it on
    assert stack.client.get(f"/api/v1/jobs/{job_id}/model", headers=weak).status_code == 304
    other = {**stack.headers, "If-None-Match": '"something-else"'}
    assert stack.client.get(f"/api/v1/jobs/{job_id}/model", headers=other).content == r.content
    artifact = torch.load(io.BytesIO(r.content), weights_only=True)
    assert artifact["spec"]["model"]["cell"] == "gru" and artifact["state_dict"]

    window = np.sin(2 * np.pi * np.arange(12) / 25).reshape(1, 12, 1).tolist()
    r = stack.client.post(f"/api/v1/jobs/{job_id}/predict", headers=stack.headers, json={"inputs": window})
    assert r.status_code == 200, r.text
    assert np.asarray(r.json()["predictions"], dtype=float).size == 1
    bad = stack.client.post(f"/api/v1/jobs/{job_id}/predict", headers=stack.headers, json={"inputs": [[[1, 2]]]})
    assert bad.status_code == 422
    # Strings and booleans are not numbers, and a misspelt field is not ignored.
    text = [[[str(v) for v in step] for step in window[0]]]
    flags = [[[True] for _ in window[0]]]
    for body in ({"inputs": text}, {"inputs": flags}, {"inputs": window, "input_units": "raw"}):
        r = stack.client.post(f"/api/v1/jobs/{job_id}/predict", headers=stack.headers, json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] in ("invalid_inputs", "validation_error"), r.text
    refused = stack.client.post(f"/api/v1/jobs/{job_id}/predict", headers=stack.headers, json={"inputs": text})
    assert "not strings or booleans" in refused.json()["error"]["message"]
    assert refused.json()["error"]["details"][0]["field"] == "inputs"
    # An integer beyond int64 is a number like any other (it used to be called "not a number").
    huge = [[[10**30] if i == 0 else step for i, step in enumerate(window[0])]]
    r = stack.client.post(f"/api/v1/jobs/{job_id}/predict", headers=stack.headers, json={"inputs": huge})
    assert r.status_code != 500 and "not strings or booleans" not in r.text, r.text


def _events(stack: Stack, job_id: str) -> list[tuple[str, dict]]:
    events = []
    with stack.client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=stack.headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                events.append((name, json.loads(line[6:])))
    return events


# --- embedded default ------------------------------------------------------------------------


def test_embedded_loop_end_to_end(embedded_stack: Stack) -> None:
    stack = embedded_stack
    stack.start_worker()
    ds = stack.upload_csv("sine.csv", sine_csv(300))
    job = stack.submit(forecast_spec(ds))
    events = _events(stack, job["id"])  # streams until the job ends
    kinds = [e[0] for e in events]
    assert kinds[0] == "status" and kinds[-1] == "end" and events[-1][1]["status"] == "succeeded"
    assert [e[1]["epoch"] for e in events if e[0] == "epoch"] == [1, 2, 3]
    statuses = [e[1]["status"] for e in events if e[0] == "status"]
    changes = [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]]
    lifecycle = ["queued", "running", "succeeded"]
    # Each status once, in lifecycle order (a fast job may go from queued to done between two polls).
    assert changes == sorted(set(changes), key=lifecycle.index) and changes[-1] == "succeeded", changes
    _check_full_result(stack, job["id"])


def test_cancel_running_job_within_an_epoch_and_worker_is_freed(embedded_stack: Stack) -> None:
    stack = embedded_stack
    if not stack.workers:
        stack.start_worker()
    ds = stack.upload_csv("long.csv", sine_csv(2000))
    spec = forecast_spec(ds, epochs=2000, early_stopping_patience=None)
    job = stack.submit(spec)
    stack.wait(job["id"], ("running",), predicate=lambda j: j["progress"]["epoch"] >= 1)
    r = stack.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=stack.headers)
    assert r.status_code == 202
    started = time.monotonic()
    done = stack.wait(job["id"], timeout=60)
    assert done["status"] == "cancelled" and done["progress"]["epoch"] < 2000
    assert time.monotonic() - started < 30
    follow = stack.submit(forecast_spec(ds))  # the worker took the next job
    assert stack.wait(follow["id"])["status"] == "succeeded"


def test_training_failure_is_reported_without_a_stack_trace(embedded_stack: Stack) -> None:
    stack = embedded_stack
    if not stack.workers:
        stack.start_worker()
    rng = np.random.default_rng(0)
    values = 1e30 * rng.standard_normal(300)
    ds = stack.upload_csv("huge.csv", "value\n" + "\n".join(f"{v:.6e}" for v in values) + "\n")
    spec = forecast_spec(ds, optimizer="sgd", learning_rate=10.0, gradient_clip=None)
    spec["data"]["scaling"] = "none"
    job = stack.wait(stack.submit(spec)["id"])
    assert job["status"] == "failed", job
    assert job["error"]["type"] == "diverged"
    assert "Traceback" not in job["error"]["message"] and "learning" in job["error"]["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UserSession:
    """`rnnlab up` in its own process group, stopped the way a terminal's Ctrl-C stops it."""

    def __init__(self, tmp_path, env: dict[str, str]) -> None:
        self.tmp_path, self.env, self.runs = tmp_path, env, 0
        self.base = f"http://127.0.0.1:{env['RNNLAB_PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp_path.glob("up-*.log")))

    def start(self) -> None:
        self.runs += 1
        out = open(self.tmp_path / f"up-{self.runs}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "up"],
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(self.log())

    def descendants(self) -> set[int]:
        assert self.proc is not None
        found: set[int] = set()
        frontier = [self.proc.pid]
        while frontier:
            out = subprocess.run(["pgrep", "-P", str(frontier.pop())], capture_output=True, text=True).stdout
            children = {int(pid) for pid in out.split()}
            frontier += list(children - found)
            found |= children
        return found

    def all_gone(self, pids: set[int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = set()
            for pid in pids:
                try:
                    os.kill(pid, 0)
                    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone for our purpose
                        if stat.read().split()[2] != "Z":
                            alive.add(pid)
                except (ProcessLookupError, FileNotFoundError):
                    pass
            if not alive:
                return True
            time.sleep(0.1)
        return False

    def ctrl_c(self) -> float:
        """SIGINT to the foreground process group, as a terminal sends it; seconds until all exited."""
        assert self.proc is not None
        children = self.descendants()
        started = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        assert code == 0, self.log()
        assert children and self.all_gone(children, 10), "the API or the worker outlived `rnnlab up`"
        return time.monotonic() - started

    def job(self, headers: dict[str, str], job_id: str) -> dict:
        return httpx.get(f"{self.base}/api/v1/jobs/{job_id}", headers=headers).json()

    def wait(self, headers: dict[str, str], job_id: str, predicate, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        job: dict = {}
        while time.monotonic() < deadline:
            job = self.job(headers, job_id)
            if predicate(job):
                return job
            time.sleep(0.3)
        raise AssertionError(f"{job}\n{self.log()}")


def test_embedded_default_as_a_user_starts_it(tmp_path) -> None:
    """`rnnlab up` (what `make up` runs): API + a real worker on SQLite and the embedded broker.

    Ctrl-C while a job trains hands it back to the queue with its attempt given back; the next
    `rnnlab up` runs it again.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
    env.update({"RNNLAB_HOME": str(tmp_path / "home"), "RNNLAB_PORT": str(_free_port()), "RNNLAB_TORCH_THREADS": "1"})
    user = UserSession(tmp_path, env)
    user.start()
    try:
        key = cli_key(env, "demo")
        headers = {"Authorization": f"Bearer {key}"}
        ds = httpx.post(
            f"{user.base}/api/v1/datasets",
            headers=headers,
            files={"file": ("sine.csv", sine_csv(1500).encode(), "text/csv")},
        ).json()
        job = httpx.post(f"{user.base}/api/v1/jobs", headers=headers, json=forecast_spec(ds["id"])).json()
        done = user.wait(headers, job["id"], lambda j: j["status"] in ("succeeded", "failed", "cancelled"))
        assert done["status"] == "succeeded", user.log()

        long = httpx.post(
            f"{user.base}/api/v1/jobs",
            headers=headers,
            json=forecast_spec(ds["id"], epochs=5000, early_stopping_patience=None),
        ).json()
        user.wait(headers, long["id"], lambda j: j["status"] == "running" and j["progress"]["epoch"] >= 1)
        assert user.ctrl_c() < 30  # does not wait for 5000 epochs
        user.start()
        rerun = user.wait(headers, long["id"], lambda j: j["status"] == "running" and j["progress"]["epoch"] >= 1)
        assert rerun["attempts"] == 1, rerun  # the interrupted attempt was given back
        httpx.post(f"{user.base}/api/v1/jobs/{long['id']}/cancel", headers=headers)
        assert user.wait(headers, long["id"], lambda j: j["status"] != "running")["status"] == "cancelled"
    finally:
        if user.proc is not None and user.proc.poll() is None:
            user.ctrl_c()


def test_killing_rnnlab_up_takes_its_api_and_worker_down(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
    env.update({"RNNLAB_HOME": str(tmp_path / "home"), "RNNLAB_PORT": str(_free_port()), "RNNLAB_TORCH_THREADS": "1"})
    user = UserSession(tmp_path, env)
    user.start()
    children = user.descendants()
    assert user.proc is not None and len(children) >= 2
    user.proc.kill()  # kill -9: no chance to stop its children itself
    user.proc.wait()
    assert user.all_gone(children, 40), user.log()


# --- distributed: PostgreSQL + Redis ---------------------------------------------------------


def test_distributed_loop_end_to_end(distributed_stack: Stack) -> None:
    stack = distributed_stack
    stack.start_worker(concurrency=2)
    ds = stack.upload_csv("sine.csv", sine_csv(300))
    jobs = [stack.submit(forecast_spec(ds)) for _ in range(2)]
    for job in jobs:
        assert stack.wait(job["id"])["status"] == "succeeded", stack.worker_logs()
    for job in jobs:
        _check_full_result(stack, job["id"])


def test_killed_worker_job_runs_again_on_a_live_worker(distributed_stack: Stack) -> None:
    stack = distributed_stack
    stack.stop_all()
    victim = stack.start_worker()
    ds = stack.upload_csv("long.csv", sine_csv(1500))
    job = stack.submit(forecast_spec(ds, epochs=12, early_stopping_patience=None))
    stack.wait(job["id"], ("running",), predicate=lambda j: j["progress"]["epoch"] >= 1)
    stack.kill_worker(victim)  # kill -9 the whole worker, pool children included
    survivor = stack.start_worker()
    done = stack.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    assert done["progress"]["epoch"] == 12
    series = stack.client.get(f"/api/v1/jobs/{job['id']}/metrics", headers=stack.headers).json()["series"]
    assert next(s for s in series if s["name"] == "loss")["epochs"] == list(range(1, 13))  # no mixed attempts
    assert survivor.poll() is None


def test_job_fails_as_worker_lost_after_max_attempts(distributed_stack: Stack) -> None:
    from app.db import new_session
    from app.models import Job

    stack = distributed_stack
    stack.stop_all()
    victim = stack.start_worker()
    ds = stack.upload_csv("long2.csv", sine_csv(1500))
    job = stack.submit(forecast_spec(ds, epochs=500, early_stopping_patience=None))
    with new_session() as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(max_attempts=1))
        session.commit()
    stack.wait(job["id"], ("running",))
    stack.kill_worker(victim)
    stack.start_worker()  # its recovery loop notices the dead lease
    done = stack.wait(job["id"], timeout=60)
    assert done["status"] == "failed" and done["error"]["type"] == "worker_lost" and done["attempts"] == 1


def test_jobs_lost_by_redis_are_redispatched_from_sql(distributed_stack: Stack) -> None:
    import redis

    stack = distributed_stack
    stack.stop_all()
    ds = stack.upload_csv("sine3.csv", sine_csv(300))
    jobs = [stack.submit(forecast_spec(ds)) for _ in range(2)]
    client = redis.Redis.from_url(stack.env["RNNLAB_BROKER_URL"])
    # One job is in flight (RNNLAB_DISPATCH_IN_FLIGHT); the other waits in SQL for its place.
    assert client.llen("default") >= 1
    # Redis restarted without persistence; FLUSHDB, not FLUSHALL: parallel test runs share the server.
    client.flushdb()
    assert client.llen("default") == 0
    stack.start_worker()
    for job in jobs:
        done = stack.wait(job["id"], timeout=120)
        assert done["status"] == "succeeded" and done["attempts"] == 1


def test_api_restart_does_not_touch_running_jobs(distributed_stack: Stack) -> None:
    stack = distributed_stack
    if not stack.workers:
        stack.start_worker()
    port = _free_port()
    env = {**os.environ, **stack.env, "RNNLAB_PORT": str(port)}
    base = f"http://127.0.0.1:{port}"

    def start_api() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: kill -9 takes its uvicorn workers too
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError("api did not start")

    api = start_api()
    ds = stack.upload_csv("sine4.csv", sine_csv(1200))
    job = httpx.post(
        f"{base}/api/v1/jobs", headers=stack.headers, json=forecast_spec(ds, epochs=8, early_stopping_patience=None)
    ).json()
    stack.wait(job["id"], ("running",))
    os.killpg(api.pid, signal.SIGKILL)  # the API's machine dies: its worker processes with it
    api.wait()
    api = start_api()
    try:
        done = stack.wait(job["id"], timeout=120)
        assert done["status"] == "succeeded" and done["attempts"] == 1
        assert httpx.get(f"{base}/api/v1/jobs/{job['id']}", headers=stack.headers).json()["status"] == "succeeded"
    finally:
        os.killpg(api.pid, signal.SIGKILL)
        api.wait()


def test_cuda_jobs_wait_on_the_gpu_queue_not_on_cpu_workers(distributed_stack: Stack) -> None:
    import redis

    stack = distributed_stack
    stack.stop_all()
    client = redis.Redis.from_url(stack.env["RNNLAB_BROKER_URL"])
    client.flushdb()
    ds = stack.upload_csv("sine5.csv", sine_csv(300))
    spec = forecast_spec(ds)
    spec["device"] = "cuda"
    job = stack.submit(spec)
    assert job["queue"] == "gpu"
    assert client.llen("gpu") == 1 and client.llen("default") == 0
    stack.start_worker(queues="default")  # a CPU worker must leave it alone
    cpu_job = stack.submit(forecast_spec(ds))
    assert stack.wait(cpu_job["id"])["status"] == "succeeded"
    assert stack.job(job["id"])["status"] == "queued" and client.llen("gpu") == 1
    assert stack.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=stack.headers).json()["status"] == "cancelled"


def test_warm_shutdown_hands_the_running_job_back_without_using_an_attempt(distributed_stack: Stack) -> None:
    stack = distributed_stack
    stack.stop_all()
    leaving = stack.start_worker()
    ds = stack.upload_csv("long3.csv", sine_csv(1500))
    job = stack.submit(forecast_spec(ds, epochs=2000, early_stopping_patience=None))
    stack.wait(job["id"], ("running",), predicate=lambda j: j["progress"]["epoch"] >= 1)
    started = time.monotonic()
    leaving.send_signal(signal.SIGTERM)  # warm shutdown, as Ctrl-C or `docker stop` does
    leaving.wait(timeout=60)
    assert time.monotonic() - started < 30  # did not wait for 2000 epochs
    back = stack.job(job["id"])
    assert back["status"] == "queued" and back["attempts"] == 0, back
    stack.start_worker()
    rerun = stack.wait(job["id"], ("running",), predicate=lambda j: j["progress"]["epoch"] >= 1)
    assert rerun["attempts"] == 1
    stack.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=stack.headers)
    assert stack.wait(job["id"])["status"] == "cancelled"
