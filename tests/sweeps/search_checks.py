"""End-to-end tpe search checks shared by the embedded and the distributed stack (real workers)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.db import new_session
from app.jobs.final_values import record_final_values
from app.main import create_app
from app.models import EpochMetric, Job, utcnow
from app.sweeps import search
from tests.stack import Stack, forecast_spec, sine_csv
from tests.sweeps.checks import create_sweep, get_sweep

SPACE = {
    "training.learning_rate": {"low": 3e-3, "high": 3e-2, "log": True},
    "model.hidden_size": {"choices": [4, 8]},
}


def wait_for_search(
    stack: Stack, sweep_id: str, timeout: float = 300.0, watch: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    sweep: dict[str, Any] = {}
    while time.monotonic() < deadline:
        sweep = get_sweep(stack, sweep_id)
        if watch is not None:
            watch(sweep)
        if sweep["report"]["search"]["done"]:
            return sweep
        time.sleep(0.3)
    raise AssertionError(f"search {sweep_id} not done in {timeout}s: {sweep.get('progress')}\n{stack.worker_logs()}")


def restart_api(stack: Stack) -> None:
    """A new API process in all but name: a fresh app and client on the same database and broker."""
    stack.client.__exit__(None, None, None)
    stack.client = TestClient(create_app())
    stack.client.__enter__()


def check_search_survives_restarts(stack: Stack, lose_broker: Callable[[], None] | None = None) -> None:
    """Ask-and-tell across real workers: the API restarts, the worker is killed and replaced, and
    (distributed) the broker loses its messages mid-search; the search still finishes with
    exactly max_jobs jobs, never more than parallelism in flight, every trial once, and its
    winner confirmed with the extra seeds."""
    ds = stack.upload_csv("sine.csv", sine_csv(300))
    base = forecast_spec(ds, epochs=3)
    base["evaluation"]["bootstrap_samples"] = 20
    body = {
        "name": "tpe",
        "base": base,
        "search": "tpe",
        "space": SPACE,
        "max_jobs": 4 + 2,  # 4 trials; 2 held back for confirming the best and runner-up with seed 1 (0 is theirs)
        "parallelism": 2,
        "pruner": "median",
        "confirm_seeds": [0, 1],
    }
    sweep = create_sweep(stack, body)
    assert len(sweep["jobs"]) == 2  # parallelism trials asked at once, no more
    worker = stack.start_worker(concurrency=2)
    in_flight: list[int] = []

    def watch(s: dict[str, Any]) -> None:
        in_flight.append(s["progress"]["queued"] + s["progress"]["running"])

    deadline = time.monotonic() + 120
    while get_sweep(stack, sweep["id"])["progress"]["finished"] < 1:
        assert time.monotonic() < deadline, stack.worker_logs()
        time.sleep(0.2)
    restart_api(stack)
    stack.kill_worker(worker)
    if lose_broker is not None:
        lose_broker()
    stack.start_worker(concurrency=2)
    done = wait_for_search(stack, sweep["id"], watch=watch)

    jobs = done["jobs"]
    trials = [j for j in jobs if j["trial_number"] is not None]
    confirms = [j for j in jobs if j["trial_number"] is None]
    assert sorted(j["trial_number"] for j in trials) == [0, 1, 2, 3], jobs
    assert len(jobs) <= body["max_jobs"] and max(in_flight) <= body["parallelism"], in_flight
    # Never run twice: each (setting, seed) is one job, and each job ended once.
    runs = [(j["setting_key"], j["seed"]) for j in jobs]
    assert len(runs) == len(set(runs)), runs
    assert {j["status"] for j in jobs} <= {"succeeded", "pruned"}, jobs
    report = done["report"]
    assert report["complete"] is True and report["split"] == "val" and report["main_metric"] == "rmse"
    confirmation = report["search"]["confirmation"]
    best = confirmation["best"]
    # The best trial by validation rmse, confirmed with seed 1 (seed 0 is the trial itself, which the
    # confirmation's statistics leave out: it won the selection, so its value is optimistic).
    completed = [j for j in trials if j["status"] == "succeeded"]
    winner = min(completed, key=lambda j: (j["objective_value"], j["trial_number"]))
    assert best["setting_key"] == winner["setting_key"] and best["seeds"] == [1]
    assert best["objective"]["n"] == 1 and best["objective"]["ci"] is None
    assert best["trial_objective"] == pytest.approx(winner["objective_value"])
    runner_up = confirmation["runner_up"]
    confirmed_keys = {best["setting_key"]} | ({runner_up["setting_key"]} if runner_up else set())
    assert {j["setting_key"] for j in confirms} == confirmed_keys
    assert all(j["seed"] == 1 for j in confirms)
    assert "validation" in report["search"]["selection"]
    with new_session() as session:
        attempts = list(session.scalars(select(Job.attempts).where(Job.sweep_id == sweep["id"])))
    assert all(a >= 1 for a in attempts)


def check_pruned_trial_stops_within_one_epoch(stack: Stack) -> None:
    """A trial worse than the median completed trial at epoch 3 ends 'pruned' at epoch 3 (of 200),
    with its curve up to there kept, counted in the sweep and found by the status filter."""
    ds = stack.upload_csv("sine.csv", sine_csv(300))
    base = forecast_spec(ds, epochs=200, early_stopping_patience=None)
    body = {
        "base": base,
        "search": "tpe",
        "space": SPACE,
        "max_jobs": 2,
        "parallelism": 1,
        "pruner": "median",
        "startup_trials": 1,
    }
    sweep = create_sweep(stack, body)
    (first,) = sweep["jobs"]
    # Trial 0 stands for a finished trial whose validation rmse was high for two epochs and then
    # near zero: the next trial beats it at epochs 1 and 2 and loses at epoch 3.
    reference = [10.0, 10.0] + [1e-6] * 198
    with new_session() as session:
        session.add_all(
            EpochMetric(job_id=first["id"], epoch=e, split="val", name="rmse", value=v)
            for e, v in enumerate(reference, start=1)
        )
        session.execute(update(Job).where(Job.id == first["id"]).values(status="succeeded", finished_at=utcnow()))
        record_final_values(session, first["id"], {"val": {"rmse": 1e-6}}, None)
        session.commit()
    (trial_id,) = search.advance_search(sweep["id"])
    stack.start_worker()
    job = stack.wait(trial_id, statuses=("succeeded", "failed", "cancelled", "pruned"))
    assert job["status"] == "pruned", (job, stack.worker_logs())
    assert job["progress"]["epoch"] == 3 and job["finished_at"] and job["summary"] is not None
    metrics = stack.client.get(f"/api/v1/jobs/{trial_id}/metrics", headers=stack.headers).json()["series"]
    val = next(s for s in metrics if s["split"] == "val" and s["name"] == "rmse")
    assert val["epochs"] == [1, 2, 3] and all(v < 10.0 for v in val["values"][:2]) and val["values"][2] > 1e-6
    listed = stack.client.get(f"/api/v1/jobs?status=pruned&sweep_id={sweep['id']}", headers=stack.headers).json()
    assert [j["id"] for j in listed["items"]] == [trial_id]
    done = wait_for_search(stack, sweep["id"])
    assert done["progress"]["pruned"] == 1 and done["report"]["pruned"] == 1
    assert json.loads(done["jobs"][1]["setting_key"]) == done["jobs"][1]["setting"]
